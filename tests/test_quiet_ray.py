"""Ray warns about the empty legacy fields ``head_node``/``worker_nodes`` of every external
provider's config, written or not (its defaults hold them); RayDog's users see the warning only
for a field their config has. The quick start's commands are checked in tests/e2e."""

from __future__ import annotations

import copy
import logging
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler._private.util import prepare_config

import _raydog_startup
from raydog_core import validation

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "local" / "cluster.yaml"
DROPPING = "Dropping the empty legacy field"
REINSTALL = "raydog-startup.pth is not in site-packages: run `pip install -e .` once more"


def startup_hook_installed() -> bool:
    return any(Path(folder, "raydog-startup.pth").is_file() for folder in site.getsitepackages())


# A fresh interpreter that never imports raydog_core: only raydog-startup.pth can quiet it.
FRESH_PROCESS = """
import copy, sys, yaml
from ray.autoscaler._private.util import prepare_config
config = yaml.safe_load(open(sys.argv[1]))
prepare_config(copy.deepcopy(config))
print("--- with head_node: {}", file=sys.stderr, flush=True)
prepare_config({**config, "head_node": {}})
"""


def dropped_fields(caplog: pytest.LogCaptureFixture, config: dict[str, Any]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=_raydog_startup.RAY_UTIL):
        prepare_config(copy.deepcopy(config))
    return [
        record.getMessage().split()[5].rstrip(".")
        for record in caplog.records
        if record.getMessage().startswith(DROPPING)
    ]


@pytest.fixture
def example() -> dict[str, Any]:
    return validation.load_file(EXAMPLE)


def test_a_raydog_config_without_the_fields_gets_no_warning(
    caplog: pytest.LogCaptureFixture, example: dict[str, Any]
) -> None:
    assert "head_node" not in example and "worker_nodes" not in example
    assert dropped_fields(caplog, example) == []


def test_an_empty_head_node_the_user_wrote_still_gets_rays_warning(
    caplog: pytest.LogCaptureFixture, example: dict[str, Any]
) -> None:
    assert dropped_fields(caplog, {**example, "head_node": {}}) == ["head_node"]
    both = {**example, "head_node": {}, "worker_nodes": {}}
    assert dropped_fields(caplog, both) == ["head_node", "worker_nodes"]


def test_another_providers_config_keeps_rays_warnings(
    caplog: pytest.LogCaptureFixture, example: dict[str, Any]
) -> None:
    other = copy.deepcopy(example)
    other["provider"]["module"] = "someone_else.NodeProvider"
    assert dropped_fields(caplog, other) == ["head_node", "worker_nodes"]


def test_the_startup_hook_names_raydogs_provider_module() -> None:
    assert _raydog_startup.RAYDOG_MODULE == validation.MODULE


def test_a_fresh_interpreter_is_quiet_before_raydog_is_imported() -> None:
    """What `ray up` does first, in a process where no RayDog code has run: the installed
    raydog-startup.pth alone keeps the warnings about unwritten fields away."""
    assert startup_hook_installed(), REINSTALL
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    before, _, written = result.stderr.partition("--- with head_node: {}")
    assert DROPPING not in before, before
    assert f"{DROPPING} head_node." in written and "worker_nodes" not in written, written
