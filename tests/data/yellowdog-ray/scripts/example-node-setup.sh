#!/usr/bin/bash
# yellowdog-ray's example node setup, in short (see ../README.md): the YellowDog agent, the
# agent user's SSH key, uv, Python and Ray in that user's venv, activated by its .bashrc.
set -euo pipefail
curl -LsSf https://raw.githubusercontent.com/yellowdog/resources/refs/heads/main/agent-install/linux/yd-agent-installer.sh | bash
YD_AGENT_HOME="/opt/yellowdog/agent"
mkdir -p $YD_AGENT_HOME/.ssh
echo "ssh-ed25519 AAAA... user@example" >> $YD_AGENT_HOME/.ssh/authorized_keys
export HOME=$YD_AGENT_HOME
curl -LsSf https://astral.sh/uv/install.sh | sh
source $HOME/.local/bin/env
uv venv --python 3.12.11 $YD_AGENT_HOME/venv
source $YD_AGENT_HOME/venv/bin/activate
uv pip install "ray[client]==2.49.2" "ray[default]==2.49.2" yellowdog-ray
echo "source $YD_AGENT_HOME/venv/bin/activate" >> $YD_AGENT_HOME/.bashrc
chown -R yd-agent:yd-agent $YD_AGENT_HOME
