"""What Ray finds in a node's environment, whatever task script starts it, when ``ray up`` ran
under ``RAY_enable_autoscaler_v2=1``: v2 itself on the head, and on every node the ids v2 matches
Ray nodes to launched nodes by. Under v1 (the default) nodes get none of it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from raydog_core import RayDogNodeProvider
from tests.conftest import memory_cluster_config
from tests.ray_helpers import head_tags, load_provider, worker_tags

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the local backend runs on Linux only"
)

# A custom task script, as a user writes one: it records what it was started with.
REPORT_ENV = (
    "#!/bin/bash\n"
    'python3 -c "import json, os; print(json.dumps(dict(os.environ)))" > ~/env.json\n'
    "exec sleep infinity\n"
)


def node_environments(provider: RayDogNodeProvider, raydog_home: Path) -> dict[str, dict]:
    """Launch a head and a worker; each one's environment, by node id."""
    (head,) = provider.create_node({}, head_tags(), 1)
    (worker,) = provider.create_node({}, worker_tags(), 1)
    found = {}
    deadline = time.monotonic() + 30
    for node_id in (head, worker):
        (path,) = (raydog_home / "local").glob(f"*/nodes/{node_id}/home")
        while not (path / "env.json").is_file() or not (path / "env.json").read_text():
            assert time.monotonic() < deadline, f"{node_id} never wrote its environment"
            time.sleep(0.1)
        found[node_id] = json.loads((path / "env.json").read_text())
    return found


@pytest.mark.parametrize("v2", [False, True])
def test_nodes_are_known_to_ray_by_their_node_id_and_v2_is_on_when_asked(
    v2: bool, raydog_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if v2:
        monkeypatch.setenv("RAY_enable_autoscaler_v2", "1")
    else:
        monkeypatch.delenv("RAY_enable_autoscaler_v2", raising=False)
    config = memory_cluster_config(
        compute="local",
        ray_head_node_task_script=REPORT_ENV,
        ray_worker_node_task_script=REPORT_ENV,
    )
    provider = load_provider(config)
    try:
        environments = node_environments(provider, raydog_home)
    finally:
        provider.compute.shutdown()
    for node_id, env in environments.items():
        if v2:
            assert env["RAY_CLOUD_INSTANCE_ID"] == node_id
            assert env["RAY_NODE_TYPE_NAME"] == provider.node_tags(node_id)["ray-user-node-type"]
        else:
            assert "RAY_CLOUD_INSTANCE_ID" not in env and "RAY_NODE_TYPE_NAME" not in env
    head, worker = environments.values()
    assert head.get("RAY_enable_autoscaler_v2") == ("1" if v2 else None)
    assert "RAY_enable_autoscaler_v2" not in worker, "Ray runs the autoscaler on the head only"
