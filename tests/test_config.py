"""Bad configs: one ConfigError naming the key, from Ray's own `ray up` path and from
`raydog validate`, and no node is ever created."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from raydog_backends.memory.compute import MemoryComputeBackend
from raydog_core import ConfigError
from tests.commands import ray_up, raydog, write_config
from tests.conftest import memory_cluster_config


def _set(config: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    target = config
    *parents, last = dotted.split(".")
    for part in parents:
        target = target[part]
    target[last] = value
    return config


# (what is wrong, key, value, key path named by the error, words in the message)
BAD = [
    ("unknown compute plugin", "provider.compute", "nosuch", "provider.compute", "memory"),
    (
        "unknown tag store option",
        "provider.tag_store",
        {"type": "memory", "bogus": 1},
        "provider.tag_store.bogus",
        "unknown option",
    ),
    (
        "mistyped option",
        "provider.compute",
        {"type": "memory", "launch_delay": "fast"},
        "provider.compute.launch_delay",
        "expected a number",
    ),
    (
        "out-of-range option",
        "provider.compute",
        {"type": "memory", "launch_delay": -1},
        "provider.compute.launch_delay",
        ">= 0",
    ),
    (
        "misspelt flat key",
        "provider.cluster_namespce",
        "ns",
        "provider.cluster_namespce",
        "unknown option",
    ),
    (
        "missing file: target",
        "provider.ray_head_node_task_script",
        "file:scripts/nope.sh",
        "provider.ray_head_node_task_script",
        "file not found",
    ),
    (
        "files_to_upload not a list",
        "provider.files_to_upload",
        "a.txt",
        "provider.files_to_upload",
        "expected a list",
    ),
    (
        "missing upload",
        "provider.files_to_upload",
        ["missing.bin"],
        "provider.files_to_upload[0]",
        "file not found",
    ),
    (
        "transport of the wrong type",
        "provider.transport",
        5,
        "provider.transport",
        "plugin name or a mapping",
    ),
    (
        "plugin type not a name",
        "provider.compute",
        {"type": 3},
        "provider.compute.type",
        "plugin name",
    ),
    (
        "script not text",
        "provider.ray_worker_node_task_script",
        42,
        "provider.ray_worker_node_task_script",
        "expected a script as text",
    ),
    (
        "negative resource",
        "available_node_types.cpu.resources",
        {"CPU": -2},
        "available_node_types.cpu.resources.CPU",
        "minimum of 0",
    ),
    ("option given twice", "provider.launch_delay", 2, "provider.launch_delay", "also given"),
]


def bad_config(key: str, value: Any) -> dict[str, Any]:
    config = memory_cluster_config()
    if key == "provider.launch_delay":
        config["provider"]["compute"] = {"type": "memory", "launch_delay": 1}
    return _set(config, key, copy.deepcopy(value))


@pytest.mark.parametrize(("case", "key", "value", "path", "words"), BAD, ids=[b[0] for b in BAD])
def test_ray_up_refuses_before_creating_anything(
    tmp_path: Path, case: str, key: str, value: Any, path: str, words: str
) -> None:
    config = bad_config(key, value)
    config_file = write_config(tmp_path, config)
    with pytest.raises((ConfigError, jsonschema.ValidationError)) as raised:
        ray_up(config_file)
    if isinstance(raised.value, ConfigError):
        assert raised.value.key_path == path
        assert words in str(raised.value)
    else:  # Ray's own schema check runs first and names the key its way
        assert ".".join(str(p) for p in raised.value.absolute_path) == path
    cluster = MemoryComputeBackend.cluster(config["cluster_name"])
    assert cluster.launches == 0 and cluster.nodes == {}


@pytest.mark.parametrize(("case", "key", "value", "path", "words"), BAD, ids=[b[0] for b in BAD])
def test_raydog_validate_names_the_key(
    tmp_path: Path, case: str, key: str, value: Any, path: str, words: str
) -> None:
    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(bad_config(key, value)))
    result = raydog("validate", str(config_file))
    assert result.returncode == 2
    assert f"{path}:" in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_plugin_lists_the_installed_ones(tmp_path: Path) -> None:
    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(bad_config("provider.tag_store", "nosuch")))
    result = raydog("validate", str(config_file))
    assert "choices: memory, redis, valkey" in result.stderr


def test_validate_reports_keys_ray_needs_for_external_providers(tmp_path: Path) -> None:
    config = memory_cluster_config()
    del config["setup_commands"]
    config_file = write_config(tmp_path, config)
    result = raydog("validate", str(config_file))
    assert result.returncode == 2
    assert "setup_commands: missing" in result.stderr and "setup_commands: []" in result.stderr


def test_file_paths_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    """As Ray takes file_mounts and auth.ssh_private_key: not relative to the YAML's folder."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "head.sh").write_text("echo head\n")
    (tmp_path / "configs").mkdir()
    config_file = tmp_path / "configs" / "cluster.yaml"
    config = memory_cluster_config(ray_head_node_task_script="file:scripts/head.sh")
    config_file.write_text(yaml.safe_dump(config))
    result = raydog("validate", str(config_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    elsewhere = raydog("validate", "cluster.yaml", cwd=tmp_path / "configs")
    assert elsewhere.returncode == 2
    missing = tmp_path / "configs" / "scripts" / "head.sh"
    assert f"provider.ray_head_node_task_script: file not found: {missing}" in elsewhere.stderr
    assert "relative to the folder you run `ray`/`raydog` in" in elsewhere.stderr


def test_validate_leaves_no_secret_files_behind(tmp_path: Path, raydog_home: Path) -> None:
    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(memory_cluster_config()))
    assert raydog("validate", str(config_file)).returncode == 0
    assert not (raydog_home / "clusters").exists()


def test_plugins_lists_every_group_with_its_distribution() -> None:
    result = raydog("plugins")
    assert result.returncode == 0
    for kind, names in {
        "compute": ["memory", "local", "yellowdog"],
        "tag_store": ["memory", "valkey", "redis"],
        "transport": ["direct", "sshtunnel"],
    }.items():
        section = result.stdout.split(f"{kind} (")[1].split("\n\n")[0]
        for name in names:
            assert any(line.split()[:2] == [name, "raydog"] for line in section.splitlines()), (
                f"{name} missing from {kind}"
            )


def test_core_imports_no_plugin_dependency() -> None:
    code = (
        "import sys, raydog_core, raydog_core.cli, raydog_core.testing, raydog_core.simulation;"
        "print(sorted(m for m in ('yellowdog_client', 'redis', 'valkey', 'sshtunnel', 'paramiko')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "[]", result.stderr


ConfigFactory = Callable[..., dict[str, Any]]
