"""What a node needs before it can join the cluster, pinned to the client's versions.

Ray refuses to mix versions of Python and Ray between the client and the nodes, so the script
``raydog node-setup`` prints installs exactly the client's: Python, ``ray[default]`` and raydog
itself (with valkey-server on the head). Once raydog is installed as a package, Ray's launcher
needs no edit and no PYTHONPATH: ``module: raydog_core.RayDogNodeProvider`` imports normally.

On some platforms (YellowDog) a node's agent starts taking tasks before the setup has finished,
so the setup ends by writing a marker file, and the core puts a wait for that marker in front
of every task script it hands a backend whose nodes run this setup (``runs_node_setup``).
"""

from __future__ import annotations

import math
import platform
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raydog_core import plugins
from raydog_core.errors import ConfigError

if TYPE_CHECKING:
    from raydog_core.config import PluginChoice, RayDogConfig

VENV = "/opt/raydog/venv"
SETUP_FINISHED = "/opt/raydog/setup-finished"
"""The marker the node setup writes last (atomically); tasks wait for it."""
SETUP_FINISHED_ENV = "RAYDOG_SETUP_FINISHED"
"""Moves the marker, for machines that run several nodes (an emulator); unset on real nodes."""
MARKER = f'"${{{SETUP_FINISHED_ENV}:-{SETUP_FINISHED}}}"'
DEFAULT_SETUP_TIMEOUT_MINUTES = 20.0
PROVIDER_KEYS = frozenset({"node_setup_timeout_minutes"})
"""The provider section's keys read here (not compute backend options)."""
VERSIONS_TAG = "raydog-versions"
"""Tag the head-side provider sets on the head node: the versions it runs with."""


@dataclass(frozen=True)
class Versions:
    python: str
    ray: str
    raydog: str

    @classmethod
    def of_this_client(cls) -> Versions:
        return cls(
            python=platform.python_version(),
            ray=metadata.version("ray"),
            raydog=metadata.version("raydog"),
        )

    def __str__(self) -> str:
        return f"python={self.python} ray={self.ray} raydog={self.raydog}"

    @classmethod
    def parse(cls, text: str) -> Versions:
        fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
        return cls(fields.get("python", "?"), fields.get("ray", "?"), fields.get("raydog", "?"))


@dataclass(frozen=True)
class NodeSetupOptions:
    """The provider section's node setup keys, checked."""

    timeout_minutes: float = DEFAULT_SETUP_TIMEOUT_MINUTES


def parse_options(provider: Mapping[str, Any]) -> NodeSetupOptions:
    key = "node_setup_timeout_minutes"
    minutes = provider.get(key, DEFAULT_SETUP_TIMEOUT_MINUTES)
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
        raise ConfigError(f"provider.{key}", f"expected a number of minutes > 0, got {minutes!r}")
    return NodeSetupOptions(timeout_minutes=float(minutes))


def runs_node_setup(compute: PluginChoice) -> bool:
    """Whether the compute backend's nodes run this setup (``ComputeBackend.runs_node_setup``)."""
    plugin = plugins.load("compute", compute.name, compute.paths[""])
    return bool(getattr(plugin, "runs_node_setup", False))


def setup_wait(timeout_minutes: float) -> str:
    """Bash that holds a task until its node's setup has finished, for at most the limit; then
    it says why in the task's output and exits 1, so the node fails instead of running a task
    without Python or Ray."""
    seconds = max(1, math.ceil(timeout_minutes * 60))
    return (
        "# Started by RayDog: wait for this node's setup (raydog node-setup) to finish\n"
        f"if [ ! -e {MARKER} ]; then\n"
        f"  echo \"RayDog: waiting up to {timeout_minutes:g} minutes for this node's setup to "
        f'finish ({MARKER[1:-1]})"\n'
        f"  raydog_setup_deadline=$(( $(date +%s) + {seconds} ))\n"
        f"  until [ -e {MARKER} ]; do\n"
        '    if [ "$(date +%s)" -ge "$raydog_setup_deadline" ]; then\n'
        f"      echo \"RayDog: this node's setup did not finish within {timeout_minutes:g} "
        f"minutes (no {MARKER[1:-1]}; provider.node_setup_timeout_minutes): not starting "
        "this task. See the node's setup (userdata) log.\" >&2\n"
        "      exit 1\n"
        "    fi\n"
        "    sleep 1\n"
        "  done\n"
        '  echo "RayDog: node setup finished; starting the task"\n'
        "fi\n"
    )


def public_key(auth: dict[str, object] | object) -> str | None:
    """The public half of ``auth.ssh_private_key``: its ``.pub`` file, or derived by ssh-keygen."""
    if not isinstance(auth, dict) or not auth.get("ssh_private_key"):
        return None
    private = Path(str(auth["ssh_private_key"])).expanduser()
    if not private.exists():
        raise ConfigError("auth.ssh_private_key", f"file not found: {private}")
    pub = private.with_name(private.name + ".pub")
    if pub.exists():
        return pub.read_text().strip()
    try:
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(private)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        raise ConfigError(
            "auth.ssh_private_key",
            f"cannot derive its public key (no {pub.name}, and ssh-keygen failed)",
        ) from None
    return derived.stdout.strip()


def common_setup(
    config: RayDogConfig, node_type: str, versions: Versions, user: str | None = None
) -> str:
    """Bash that installs uv, the client's Python, Ray and raydog into ``/opt/raydog/venv``."""
    if node_type not in config.node_types:
        raise ConfigError("--node-type", f"no node type {node_type!r}", config.node_types)
    is_head = node_type == config.head_node_type
    raydog = f"raydog[head]=={versions.raydog}" if is_head else f"raydog=={versions.raydog}"
    packages = " ".join(shlex.quote(p) for p in (f"ray[default]=={versions.ray}", raydog))
    account = user or str(config.auth.get("ssh_user", "root"))
    key = public_key(dict(config.auth))
    lines = [
        "#!/usr/bin/env bash",
        f"# RayDog node setup: cluster {config.cluster_name}, node type {node_type}"
        f" ({'head' if is_head else 'worker'}); pinned to the client's {versions}",
        "set -euo pipefail",
        "",
        end_marker(f"{versions}"),
        "# uv, which installs Python and the packages below",
        "if ! command -v uv >/dev/null; then",
        "  curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=/usr/local/bin sh",
        "fi",
        "",
        f"# Python {versions.python}, Ray {versions.ray} and raydog {versions.raydog}:"
        " Ray needs the same versions on the client and every node",
        f"uv venv --python {versions.python} {VENV}",
        f"uv pip install --python {VENV}/bin/python {packages}",
        f"ln -sf {VENV}/bin/ray {VENV}/bin/raydog /usr/local/bin/",
        f"echo 'export PATH={VENV}/bin:$PATH' > /etc/profile.d/raydog.sh",
    ]
    if key:
        lines += [
            "",
            "# SSH access for Ray's CLI (ray up, ray exec): the key of auth.ssh_private_key",
            f"RAYDOG_USER={shlex.quote(account)}",
            'RAYDOG_HOME_DIR=$(getent passwd "$RAYDOG_USER" | cut -d: -f6)',
            'install -d -m 700 -o "$RAYDOG_USER" "$RAYDOG_HOME_DIR/.ssh"',
            f'grep -qxF {shlex.quote(key)} "$RAYDOG_HOME_DIR/.ssh/authorized_keys" 2>/dev/null'
            f' || echo {shlex.quote(key)} >> "$RAYDOG_HOME_DIR/.ssh/authorized_keys"',
            'chown "$RAYDOG_USER" "$RAYDOG_HOME_DIR/.ssh/authorized_keys"',
            'chmod 600 "$RAYDOG_HOME_DIR/.ssh/authorized_keys"',
        ]
    return "\n".join(lines) + "\n"


def end_marker(note: str) -> str:
    """Bash that marks the end of the script it starts: the marker goes away now and is written
    (atomically) when the whole script has succeeded, so whatever a backend appends to the
    setup (``extra_userdata``, the tag store's install) finishes before any task starts."""
    return (
        "# Tasks wait for this marker: removed now, written when this whole script succeeds\n"
        f"raydog_marker={MARKER}\n"
        'rm -f "$raydog_marker"\n'
        "raydog_setup_finished() {\n"
        "  raydog_status=$?\n"
        '  if [ "$raydog_status" -ne 0 ]; then\n'
        '    echo "RayDog: node setup failed (exit $raydog_status); no task will start here" >&2\n'
        "    return\n"
        "  fi\n"
        '  mkdir -p "$(dirname "$raydog_marker")"\n'
        f'  echo {shlex.quote(note)} "finished $(date -u +%Y-%m-%dT%H:%M:%SZ)"'
        ' > "$raydog_marker.tmp"\n'
        '  mv -f "$raydog_marker.tmp" "$raydog_marker"\n'
        '  echo "RayDog: node setup finished ($raydog_marker)"\n'
        "}\n"
        "trap raydog_setup_finished EXIT\n"
    )
