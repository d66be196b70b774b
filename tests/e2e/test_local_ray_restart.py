"""End to end: a local cluster whose head_start_ray_commands stop Ray and start it again.

Ray's own configs do this (`ray stop`, then `ray start --head ...`), with a head task that only
keeps the node alive. On a local node `ray stop` ends the node's `ray start --block` (so that
`ray down` finds the head gone); a task that is not one must keep its node through `ray up`'s
`ray stop`, and `ray down` must still leave nothing.

    .venv/bin/python -m pytest -m e2e tests/e2e/test_local_ray_restart.py -s
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from raydog_backends.local.testing import LocalCluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux"),
]

RESTART_RAY = [
    "ray stop",
    "ray start --head --port=$RAYDOG_GCS_PORT --node-ip-address=$RAYDOG_NODE_IP"
    " --ray-client-server-port=$RAYDOG_CLIENT_PORT"
    " --dashboard-agent-listen-port=$RAYDOG_DASHBOARD_AGENT_PORT --temp-dir=$RAY_TMPDIR/ray"
    " --autoscaling-config=~/ray_bootstrap_config.yaml --num-cpus=1 --include-dashboard=false"
    " --disable-usage-stats",
]


class RestartingCluster(LocalCluster):
    """examples/local with a head task that waits and Ray started by head_start_ray_commands."""

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        config["head_start_ray_commands"] = RESTART_RAY
        config["provider"]["ray_head_node_task_script"] = "#!/bin/bash\nexec sleep infinity\n"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartingCluster]:
    name = f"e2e-restart-{uuid.uuid4().hex[:6]}"
    cluster = RestartingCluster(tmp_path_factory.mktemp(name), name)
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_head_start_ray_commands_that_stop_and_start_ray_keep_the_head(
    cluster: RestartingCluster,
) -> None:
    config = str(cluster.config)
    cluster.ray("up", "-y", "--no-config-cache", config, timeout=300)
    (head,) = cluster.nodes().values()

    status = cluster.ray("exec", config, "ray status")
    down = cluster.ray("down", "-y", config)

    assert "Autoscaler status" in status and "1 head" in status, status[-2000:]
    assert head.is_head
    assert "No nodes remaining" in down, down[-2000:]
    assert cluster.leftovers() == []
