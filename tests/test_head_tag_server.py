"""A head whose own scripts start a tag server on the store's port (yellowdog-ray's example head
task script runs ``valkey-server --port 16667 &``; github yellowdog/raydog,
examples/autoscaler/raydog.yaml): RayDog uses that server, or refuses the config before anything
is created. Without this, RayDog's server and the head's fight over the port and the client's
password meets a server that has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from raydog_backends.keyvalue.store import KeyValueTagStore
from raydog_core import cluster_plugins, config_parsing, ray_defaults, task_scripts
from raydog_core import config as raydog_config
from raydog_core.errors import ConfigError
from raydog_core.interfaces import Endpoint
from tests.conftest import memory_cluster_config
from tests.servers import key_value_server, valkey_server_binary

HEAD_SCRIPT = (
    "#!/bin/bash -x\n"
    "source $HOME/.bashrc\n"
    "$HOME/valkey*/bin/valkey-server --port 16667 &\n"
    "ray start --head --port=6379 --num-cpus=0 --block\n"
)


def yellowdog_ray_like(**provider: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "compute": {"type": "yellowdog", "cluster_namespace": "raydog-test"},
        "tag_store": "valkey",
        "head_node_tag_server_port": 16667,
        "ray_head_node_task_script": HEAD_SCRIPT,
        **provider,
    }
    config = memory_cluster_config(**settings)
    for spec in config["available_node_types"].values():
        spec["node_config"] = {"compute_requirement_template": "yd-demo/template"}
    return config


def built(config: dict[str, Any]) -> tuple[Any, Any]:
    parsed = config_parsing.parse(config)
    store, _, compute = cluster_plugins.build_plugins(parsed)
    return store, compute


def test_the_heads_own_server_is_used_and_raydog_starts_none() -> None:
    store, compute = built(yellowdog_ray_like())
    assert isinstance(store, KeyValueTagStore) and store.start_server is False
    assert store.head_port == 16667
    assert "raydog_backends.keyvalue.server" not in compute.spec.head_script
    assert compute.spec.head_setup == ""  # nothing installed for it either


def test_a_server_in_the_heads_userdata_counts_too() -> None:
    config = yellowdog_ray_like()
    del config["provider"]["ray_head_node_task_script"]
    node_config = config["available_node_types"]["head"]["node_config"]
    node_config["extra_userdata"] = "nohup valkey-server --port=16667 >/dev/null 2>&1 &\n"
    store, _ = built(config)
    assert store.start_server is False


def test_a_server_on_another_port_changes_nothing() -> None:
    store, compute = built(yellowdog_ray_like(head_node_tag_server_port=16668))
    assert store.start_server is True
    assert "raydog_backends.keyvalue.server" in compute.spec.head_script


def test_asking_raydog_to_start_its_own_on_that_port_is_refused_before_anything_exists() -> None:
    config = yellowdog_ray_like()
    del config["provider"]["head_node_tag_server_port"]
    config["provider"]["tag_store"] = {"type": "valkey", "port": 16667, "start_server": True}
    with pytest.raises(ConfigError) as raised:
        raydog_config.check(ray_defaults.fill_defaults(config))
    assert "provider.tag_store.start_server: is true, but provider.ray_head_node_task_script" in (
        str(raised.value)
    )


@pytest.mark.parametrize(
    ("line", "port", "starts"),
    [
        ("$HOME/valkey*/bin/valkey-server --port 16667 &", 16667, True),
        ("redis-server --port=7000 --save ''", 7000, True),
        ("valkey-server --port 16667 &", 16668, False),
        ("redis-server &", 6379, True),
        ("# valkey-server --port 16667", 16667, False),
        ("echo my-valkey-server-notes --port 16667", 16667, False),
        ("python3 -m raydog_backends.keyvalue.server --port 16667", 16667, False),
    ],
)
def test_what_counts_as_starting_a_server(line: str, port: int, starts: bool) -> None:
    assert task_scripts.starts_server_on(f"#!/bin/bash\n{line}\n", port) is starts


def test_the_store_talks_to_a_server_without_a_password(tmp_path: Path) -> None:
    """What the head's own server is: no password (protected mode keeps it to loopback)."""
    with key_value_server(valkey_server_binary(), tmp_path / "server") as server:
        store = type(built(yellowdog_ray_like())[0])("adopted", start_server=False)
        store.connect(Endpoint("127.0.0.1", server.port))
        try:
            store.update({"node-1": {"ray-node-kind": "head"}})
            assert store.load_all() == {"node-1": {"ray-node-kind": "head"}}
        finally:
            store.close()
