"""A config says only what differs: what Ray itself needs from the user is proven with Ray's own
`ray up` code, everything else RayDog fills in, and `file:` scripts are read fresh each time."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.providers import _get_node_provider

from raydog_backends.memory.compute import MemoryComputeBackend
from raydog_core import (
    RayDogNodeProvider,
    cluster_plugins,
    config_parsing,
    file_references,
    ray_defaults,
    task_scripts,
    validation,
)
from raydog_core import config as raydog_config
from raydog_core.errors import ConfigError
from tests.commands import ray_up, raydog, write_config
from tests.conftest import memory_cluster_config
from tests.ray_helpers import head_tags


def minimal_config(name: str) -> dict[str, Any]:
    """Ray's required keys, the provider and node types; nothing else but the SSH user (the
    memory backend's head is reached with Ray's SSH runner, which reads it)."""
    return {
        "auth": {"ssh_user": "ubuntu"},
        "cluster_name": name,
        "max_workers": 4,
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "provider": {
            "type": "external",
            "module": "raydog_core.RayDogNodeProvider",
            "compute": "memory",
            "tag_store": "memory",
            "transport": "direct",
        },
        "available_node_types": {
            "head": {"resources": {"CPU": 1}},
            "cpu": {"resources": {"CPU": 2}},
        },
        "head_node_type": "head",
    }


@pytest.fixture
def name(forget_memory_clusters: Any) -> str:
    config = memory_cluster_config()
    forget_memory_clusters(config["cluster_name"])
    return str(config["cluster_name"])


def test_the_minimal_config_passes_rays_own_bootstrap(tmp_path: Path, name: str) -> None:
    config = minimal_config(name)
    assert not set(config) & (set(ray_defaults.TOP_LEVEL_DEFAULTS) - {"auth"})
    bootstrapped = _bootstrap_config(copy.deepcopy(config), no_config_cache=True)
    for key in ray_defaults.TOP_LEVEL_DEFAULTS:
        assert key in bootstrapped, key
    assert bootstrapped["available_node_types"]["cpu"]["node_config"] == {}
    assert bootstrapped["upscaling_speed"] == 1.0 and bootstrapped["idle_timeout_minutes"] == 5
    (head,) = load(bootstrapped).create_node({}, head_tags(), 1)
    assert MemoryComputeBackend.cluster(name).nodes.keys() == {head}
    config_file = write_config(tmp_path, config)
    result = raydog("validate", str(config_file))
    assert result.returncode == 0, result.stderr


def test_a_backend_reached_over_ssh_needs_the_ssh_user(tmp_path: Path, name: str) -> None:
    """Ray's SSH runner reads auth.ssh_user once the head exists: validate says so first."""
    config = minimal_config(name)
    del config["auth"]
    with pytest.raises(ConfigError) as raised:
        _bootstrap_config(copy.deepcopy(config), no_config_cache=True)
    assert raised.value.key_path == "auth.ssh_user"
    local = minimal_config(name)
    del local["auth"]
    local["provider"]["compute"] = "local"
    validation.validate(local)  # its own command runner: no SSH


@pytest.mark.parametrize("key", list(ray_defaults.RAY_REQUIRED))
def test_the_required_keys_are_the_ones_ray_reads_first(
    tmp_path: Path, name: str, key: str
) -> None:
    """Without each, Ray's own `ray up` fails before any RayDog code runs, and `raydog validate`
    says so, with the line to add."""
    config = minimal_config(name)
    del config[key]
    config_file = write_config(tmp_path, config)
    with pytest.raises((KeyError, AssertionError)):
        if key == "cluster_name":
            ray_up(config_file)  # printed before the bootstrap
        else:
            _bootstrap_config(copy.deepcopy(config), no_config_cache=True)
    assert MemoryComputeBackend.cluster(name).launches == 0
    result = raydog("validate", str(config_file))
    assert result.returncode == 2
    assert f"error: {key}: missing; Ray reads it before RayDog can fill it in" in result.stderr
    assert f"`{ray_defaults.RAY_REQUIRED[key]}`" in result.stderr


def test_default_task_scripts_start_ray_and_block(name: str) -> None:
    provider = load(_bootstrap_config(minimal_config(name), no_config_cache=True))
    spec = provider.compute.spec
    assert "exec ray start --head --block" in spec.head_script
    assert '--autoscaling-config="$HOME/ray_bootstrap_config.yaml"' in spec.head_script
    assert "--include-dashboard=true" in spec.head_script
    assert '--address="${RAY_ADDRESS:-$RAY_HEAD_IP:6379}"' in spec.worker_script
    assert "exec ray start --block" in spec.worker_script
    for script in (spec.head_script, spec.worker_script):
        checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr


def test_default_scripts_pass_only_the_settings_a_node_has(tmp_path: Path) -> None:
    """`ray start`'s arguments, as bash expands them with and without the local backend's."""
    shim = tmp_path / "ray"
    shim.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    shim.chmod(0o755)
    (tmp_path / "ray_bootstrap_config.yaml").write_text("x: 1\n")
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def args(script: str, env: dict[str, str]) -> list[str]:
        ran = subprocess.run(
            ["bash", "-c", script], env={**base, **env}, capture_output=True, text=True, timeout=30
        )
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.splitlines()

    worker = args(task_scripts.DEFAULT_WORKER_SCRIPT, {"RAY_HEAD_IP": "10.0.0.5"})
    assert worker == ["start", "--block", "--address=10.0.0.5:6379", "--disable-usage-stats"]
    local = args(
        task_scripts.DEFAULT_WORKER_SCRIPT,
        {
            "RAY_ADDRESS": "127.0.0.2:7000",
            "RAYDOG_NODE_IP": "127.0.0.3",
            "RAY_TMPDIR": "/tmp/x y",
        },
    )
    assert "--address=127.0.0.2:7000" in local
    assert "--node-ip-address=127.0.0.3" in local and "--temp-dir=/tmp/x y/ray" in local
    head = args(task_scripts.DEFAULT_HEAD_SCRIPT, {})
    assert "--port=6379" in head and "--dashboard-host=0.0.0.0" in head
    assert f"--autoscaling-config={tmp_path}/ray_bootstrap_config.yaml" in head


def test_default_scripts_start_ray_with_exactly_the_node_types_resources(tmp_path: Path) -> None:
    """What Ray's autoscaler plans with (``available_node_types.<type>.resources``) is what
    each node's ``ray start`` offers: ``{CPU: 0}`` keeps work off the head."""
    shim = tmp_path / "ray"
    shim.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    shim.chmod(0o755)
    (tmp_path / "ray_bootstrap_config.yaml").write_text("x: 1\n")
    config = memory_cluster_config()
    types = config["available_node_types"]
    types["head"]["resources"] = {"CPU": 0}
    types["gpu"] = {
        "resources": {"CPU": 8.0, "GPU": 1, "memory": 2**33, "accel": 0.5, 'say "hi"': 2},
        "max_workers": 1,
    }
    parsed = config_parsing.parse(config)
    spec = cluster_plugins.cluster_spec(parsed, None)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path), "RAY_HEAD_IP": "10.0.0.5"}

    def args(script: str) -> list[str]:
        ran = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.splitlines()

    head = args(spec.script("head", is_head=True))
    assert "--num-cpus=0" in head and not any(a.startswith("--resources") for a in head)
    gpu = args(spec.script("gpu", is_head=False))
    assert {"--num-cpus=8", "--num-gpus=1", f"--memory={2**33}"} <= set(gpu)
    (custom,) = [a.removeprefix("--resources=") for a in gpu if a.startswith("--resources=")]
    assert json.loads(custom) == {"accel": 0.5, 'say "hi"': 2}
    assert "--num-cpus=2" in args(spec.script("cpu", is_head=False))


@pytest.mark.parametrize("value", [["echo", "hi"], 42, {"run": "x"}, "  "])
def test_a_script_of_the_wrong_type_names_the_key(value: Any) -> None:
    config = memory_cluster_config(ray_head_node_task_script=value)
    with pytest.raises(ConfigError) as raised:
        raydog_config.bootstrap(config)
    assert raised.value.key_path == "provider.ray_head_node_task_script"
    assert "leave the key out for RayDog's default" in str(raised.value)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def ray_cache() -> Iterator[list[str]]:
    """Ray's config cache files a test makes (/tmp/ray-config-<hash>), removed afterwards."""
    made: list[str] = []
    yield made
    for path in made:
        Path(path).unlink(missing_ok=True)


def test_an_edited_script_takes_effect_on_the_next_bootstrap_despite_rays_cache(
    in_tmp: Path, name: str, ray_cache: list[str]
) -> None:
    script = in_tmp / "worker.sh"
    script.write_text("#!/bin/bash\necho first version\n")
    config = minimal_config(name)
    config["provider"]["ray_worker_node_task_script"] = "file:worker.sh"
    first = _bootstrap_config(copy.deepcopy(config), no_config_cache=False)
    cache_file = first["provider"]["_config_cache_path"]
    ray_cache.append(cache_file)
    assert "first version" not in Path(cache_file).read_text()
    assert "echo first version" in load(first).compute.spec.worker_script

    script.write_text("#!/bin/bash\necho second version\n")
    second = _bootstrap_config(copy.deepcopy(config), no_config_cache=False)
    assert second["provider"]["_config_cache_path"] == cache_file  # Ray used its cache
    worker_script = load(second).compute.spec.worker_script
    assert "echo second version" in worker_script and "first version" not in worker_script
    # And the edited file reaches the head with the cluster's files: Ray hashes file mounts'
    # contents, so `ray up` syncs it again.
    remote = file_references.remote_file(name, "file:worker.sh")
    assert second["file_mounts"][remote] == "worker.sh"
    assert json.loads(Path(cache_file).read_text())["config"]["file_mounts"][remote] == "worker.sh"


def load(bootstrapped: dict[str, Any]) -> RayDogNodeProvider:
    provider = _get_node_provider(
        bootstrapped["provider"], bootstrapped["cluster_name"], use_cache=False
    )
    assert isinstance(provider, RayDogNodeProvider)
    return provider


def test_the_local_example_says_only_what_differs() -> None:
    """The quick start's config: Ray's required keys and what is particular to this cluster;
    tests/e2e/test_local_cluster.py runs it through `ray up`, a job and `ray down`."""
    example = Path(__file__).resolve().parents[1] / "examples" / "local" / "cluster.yaml"
    config = yaml.safe_load(example.read_text())
    particular = {"provider", "available_node_types", "head_node_type", "idle_timeout_minutes"}
    assert set(config) == set(ray_defaults.RAY_REQUIRED) | particular
    assert not set(config["provider"]) & set(config_parsing.SCRIPT_KEYS)
    validation.validate(config)


def test_a_missing_file_stops_a_launch_but_not_other_commands(
    in_tmp: Path, name: str, ray_cache: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's cached config names the file: `ray down` from another folder still builds the
    provider; a launch from there refuses, naming the key and where it looked."""
    (in_tmp / "head.sh").write_text("#!/bin/bash\necho head\n")
    config = minimal_config(name)
    config["provider"]["ray_head_node_task_script"] = "file:head.sh"
    bootstrapped = _bootstrap_config(copy.deepcopy(config), no_config_cache=False)
    ray_cache.append(bootstrapped["provider"]["_config_cache_path"])
    elsewhere = in_tmp / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cached = _bootstrap_config(copy.deepcopy(config), no_config_cache=False)
    provider = load(cached)
    assert provider.non_terminated_nodes({}) == []
    with pytest.raises(ConfigError) as raised:
        provider.create_node({}, head_tags(), 1)
    assert raised.value.key_path == "provider.ray_head_node_task_script"
    assert f"file not found: {elsewhere / 'head.sh'}" in str(raised.value)
    assert MemoryComputeBackend.cluster(name).launches == 0
