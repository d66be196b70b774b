"""`raydog validate` reports every problem in one run, each with its key path and what to write,
and never a traceback, however broken the file."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from raydog_core import cli, validation
from raydog_core.errors import ConfigError, ConfigErrors
from tests.commands import raydog, write_config
from tests.conftest import memory_cluster_config


def test_every_problem_in_one_run(tmp_path: Path) -> None:
    config = memory_cluster_config()
    del config["setup_commands"]
    config["idle_timeout_minutes"] = "soon"
    config["provider"]["tag_store"] = "nosuch"
    config["provider"]["compute"] = {"type": "memory", "launch_delay": -1}
    config["provider"]["ray_worker_node_task_script"] = ["ray", "start"]
    config["provider"]["files_to_upload"] = ["missing.bin"]
    config["available_node_types"]["cpu"]["min_workers"] = 9
    config["available_node_types"]["gpu"] = {"resources": {"GPU": 1}, "max_workers": -1}
    config_file = write_config(tmp_path, config)
    result = raydog("validate", str(config_file))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    expected = [
        "error: setup_commands: missing; Ray reads it before RayDog can fill it in: "
        "`setup_commands: []`",
        "error: idle_timeout_minutes: expected a number, got str 'soon'",
        "error: provider.tag_store: no tag_store plugin named 'nosuch' (choices: ",
        "error: provider.compute.launch_delay: ",
        "error: provider.ray_worker_node_task_script: expected a script as text",
        "error: provider.files_to_upload[0]: file not found: ",
        "error: available_node_types.cpu.min_workers: is greater than max_workers (4)",
        "error: available_node_types.gpu.max_workers: ",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), f"{start!r} not in {lines}"
    assert lines[-1] == f"{len(lines) - 1} problems found"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty: expected a cluster config"),
        (b"- a\n- b\n", "expected a mapping of keys at the top level, got a list"),
        (b"just text", "expected a mapping of keys at the top level, got a str"),
        (bytes(range(256)) * 4, "not a text file"),
        (b"key: [unclosed\n", "not valid YAML"),
        (b"a: 1\n\x00b: 2\n", "not valid YAML"),
        (b"provider: 5\n", "provider: expected a mapping"),
    ],
    ids=["empty", "list", "scalar", "binary", "bad-yaml", "nul", "provider-number"],
)
def test_no_traceback_for_any_file(tmp_path: Path, content: bytes, words: str) -> None:
    config_file = tmp_path / "cluster.yaml"
    config_file.write_bytes(content)
    result = raydog("validate", str(config_file))
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


JUNK: list[Any] = [
    None,
    0,
    -1,
    1.5,
    math.nan,
    math.inf,
    True,
    "",
    "x",
    "file:nope.sh",
    "../../x",
    [],
    [1, "a"],
    [None],
    {},
    {"a": 1},
    {"type": 3},
    {1: 2},
    "\udcff",
    "a\nb",
    int("9" * 400),
    1.0e308,
    -1.0e308,
    2**63,
    _nested(200),
    {"\ud800": 1},
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _broken(rng: random.Random) -> Any:
    """The memory config with a few keys replaced by junk, deleted or added."""
    config: Any = memory_cluster_config()
    config["provider"]["ray_head_node_task_script"] = "echo head"
    config["provider"]["files_to_upload"] = []
    for _ in range(rng.randint(1, 4)):
        paths = _paths(config)
        if not paths:
            break
        path = rng.choice(paths)
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        action = rng.random()
        if action < 0.6:
            parent[path[-1]] = copy.deepcopy(rng.choice(JUNK))
        elif action < 0.8 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(["bogus", "type", "compute", "resources", 7])] = rng.choice(JUNK)
    return config


def test_fuzz_every_broken_config_is_a_config_error() -> None:
    """Hundreds of configs broken at random: each ends in ConfigError(s) naming key paths, or
    is valid; nothing else escapes."""
    rng = random.Random(1101)
    outcomes = {"valid": 0, "errors": 0}
    for case in range(400):
        config = _broken(rng)
        try:
            validation.validate(config)
            outcomes["valid"] += 1
        except ConfigErrors as errors:
            assert len(errors.errors) > 1
            assert all(error.key_path for error in errors.errors)
            outcomes["errors"] += 1
        except ConfigError as error:
            assert error.key_path, case
            outcomes["errors"] += 1
    assert outcomes["errors"] > 300, outcomes


def test_fuzz_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same through `raydog validate` (its ``main``, in this process; the other tests here run
    the command itself), YAML round trip included: exit 0 or 2, nothing escapes it."""
    rng = random.Random(7)
    for case in range(25):
        config_file = tmp_path / f"case{case}.yaml"
        try:
            config_file.write_text(yaml.safe_dump(_broken(rng)))
        except yaml.YAMLError:
            continue
        assert cli.main(["validate", str(config_file)]) in (0, 2), capsys.readouterr().err


@pytest.mark.parametrize(
    ("script", "noted"),
    [
        ("#!/bin/bash\nray start --address=$RAY_HEAD_IP:6379\nsleep infinity\n", True),
        ("#!/bin/bash\nray  start --address=$RAY_HEAD_IP:6379\n", True),
        ("#!/bin/bash\nexec ray start --block --address=$RAY_HEAD_IP:6379\n", False),
        ("#!/bin/bash\npython -m my_worker\n", False),
    ],
)
def test_a_worker_script_whose_task_does_not_last_as_long_as_its_ray_gets_a_note(
    tmp_path: Path, script: str, noted: bool
) -> None:
    """Ray's liveness check is off, so a worker is replaced only once its task ends: a task
    that ends before its Ray, or outlives it, is worth a line."""
    config = memory_cluster_config()
    config["provider"]["ray_worker_node_task_script"] = script
    result = raydog("validate", str(write_config(tmp_path, config)))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert any("without --block" in note for note in notes) is noted, notes


def test_a_worker_type_without_resources_is_valid_with_a_note(tmp_path: Path) -> None:
    config = memory_cluster_config()
    del config["available_node_types"]["cpu"]["resources"]
    del config["available_node_types"]["head"]["resources"]
    config_file = write_config(tmp_path, config)
    result = raydog("validate", str(config_file))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: available_node_types.cpu: no resources, so Ray's autoscaler cannot plan with "
        "this type (it launches only its min_workers); e.g. `resources: {CPU: 4}`"
    ]
