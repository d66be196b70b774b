"""The commands a user types, run as the user runs them: ``raydog ...`` in a process of its own,
Ray's ``ray up`` through Ray's own code in this process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from ray.autoscaler._private.commands import create_or_update_cluster


def raydog(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``raydog ARGS`` as a user runs it: its output and exit code."""
    return subprocess.run(
        [sys.executable, "-m", "raydog_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    """The config as ``tmp_path/cluster.yaml``."""
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ray_up(config_file: Path, no_config_cache: bool = True) -> dict[str, Any]:
    """Ray's own ``ray up -y``, in this process."""
    result: dict[str, Any] = create_or_update_cluster(
        str(config_file),
        override_min_workers=None,
        override_max_workers=None,
        no_restart=False,
        restart_only=False,
        yes=True,
        no_config_cache=no_config_cache,
    )
    return result
