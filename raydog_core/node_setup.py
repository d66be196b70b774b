"""What a node needs before it can join the cluster, pinned to the client's versions.

Ray refuses to mix versions of Python and Ray between the client and the nodes, so the script
``raydog node-setup`` prints installs exactly the client's: Python, ``ray[default]`` and raydog
itself (with valkey-server on the head). Once raydog is installed as a package, Ray's launcher
needs no edit and no PYTHONPATH: ``module: raydog_core.RayDogNodeProvider`` imports normally.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from raydog_core.config import RayDogConfig
from raydog_core.errors import ConfigError

VENV = "/opt/raydog/venv"
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
