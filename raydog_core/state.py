"""A cluster's private files: generated secrets and credentials, kept 0600.

On the client they live in ``$RAYDOG_HOME/clusters/<cluster>/`` (default ``~/.raydog``); the
provider uploads that folder to the same place on the head with the bootstrap config (over Ray's
file sync, never through the compute backend), so code on either side finds them by the same call.
"""

from __future__ import annotations

import os
import secrets as _random
import shutil
from pathlib import Path

REMOTE_HOME = "~/.raydog"
KEEP_VARIABLE = "RAYDOG_KEEP_CLUSTER_SECRETS"
"""Set to 1 where ``ray down`` runs to keep the cluster's folder (credentials and secrets)."""


def raydog_home() -> Path:
    return Path(os.environ.get("RAYDOG_HOME", "~/.raydog")).expanduser()


def cluster_dir(cluster_name: str) -> Path:
    return raydog_home() / "clusters" / cluster_name


def remote_cluster_dir(cluster_name: str) -> str:
    """Where the head keeps the same folder (a path for Ray's ``file_mounts``)."""
    return f"{REMOTE_HOME}/clusters/{cluster_name}"


def secret_path(cluster_name: str, name: str) -> Path:
    return cluster_dir(cluster_name) / name


def read_secret(cluster_name: str, name: str) -> str | None:
    path = secret_path(cluster_name, name)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def write_secret(cluster_name: str, name: str, value: str) -> Path:
    """Write a secret file readable by its owner only (created 0600, never world-readable)."""
    path = secret_path(cluster_name, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    os.chmod(path, 0o600)
    return path


def cluster_secret(cluster_name: str, name: str) -> str:
    """The cluster's secret ``name``, generated on first use and kept for the cluster's life."""
    existing = read_secret(cluster_name, name)
    if existing:
        return existing
    value = _random.token_urlsafe(32)
    write_secret(cluster_name, name, value)
    return value


def forget_cluster(cluster_name: str) -> list[str]:
    """Once the whole cluster is down: its folder on this machine (the saved credentials, the
    tag store's password, known host keys, staged wheels) goes too, unless ``KEEP_VARIABLE`` is
    1. Returns the names of what it held: a secret a cluster no longer needs is one less to
    leak, and the next ``ray up`` makes them afresh."""
    folder = cluster_dir(cluster_name)
    if os.environ.get(KEEP_VARIABLE) == "1" or not folder.is_dir():
        return []
    held = sorted(path.name for path in folder.iterdir())
    shutil.rmtree(folder)
    return held
