#!/usr/bin/env bash
# Userdata for the Docker variant's workers, on a stock Ubuntu or Debian image: Docker, then the
# YellowDog agent. Ray comes from the image scripts/worker-docker.sh runs, so no Python here.
# Runs as root at boot; the worker's task runs `docker` as the agent's user, yd-agent, with the
# groups the agent started with, so yd-agent is in the docker group before the agent starts.
# An image that already has the agent needs yd-agent in its docker group already (see README.md).
set -euo pipefail

# RayDog's task scripts wait for this marker: written once this whole userdata (extra_userdata
# included) has succeeded, as `raydog node-setup` does.
rm -f /opt/raydog/setup-finished
trap '[ $? -ne 0 ] || { mkdir -p /opt/raydog && date > /opt/raydog/setup-finished.tmp &&
  mv -f /opt/raydog/setup-finished.tmp /opt/raydog/setup-finished; }' EXIT

if ! command -v docker >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi

if [ ! -d /opt/yellowdog/agent ]; then
  # The agent's user as its installer would make it (home /opt/yellowdog/agent), in the docker
  # group; then the installer, which starts the agent at once. (YellowDog's earlier installer made
  # the user only if missing; the current one installs a package, untested with a user made first.)
  id yd-agent >/dev/null 2>&1 || useradd --system --user-group --create-home \
    --home-dir /opt/yellowdog/agent --shell /bin/bash yd-agent
  usermod -aG docker yd-agent
  curl -LsSf https://raw.githubusercontent.com/yellowdog/resources/refs/heads/main/agent-install/linux/yd-agent-installer.sh | bash
elif ! id -nG yd-agent | grep -qw docker; then
  echo "This image's YellowDog agent runs as yd-agent without the docker group, and adding it" \
    "now would not reach the running agent: use a stock image, or one whose yd-agent is in" \
    "the docker group" >&2
  exit 1
fi
