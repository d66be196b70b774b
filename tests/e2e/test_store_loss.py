"""End to end: a cluster survives the loss of its tag store, through Ray's own CLI.

`ray up` a local cluster whose head's autoscaler keeps two workers (min_workers), lose the head's
tag store, and run `ray up` again with the same YAML, as a user whose first `ray up` looked slow
would: Ray must find the head up to date (its launch config hash comes from the compute backend's
record), so the same head and workers keep running. Two ways to lose the store, in this order on
one cluster (each test asks for its scenario; the first scenario runs first whichever asks):

- empty: the server (kept without persistence) is killed, and its supervisor restarts it empty;
  the providers (the client's and the head's autoscaler's) fill it again from what they know;
- unreachable: the supervisor and its valkey-server are killed (nothing restarts them).

    .venv/bin/python -m pytest -m e2e tests/e2e/test_store_loss.py -s
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from ray.autoscaler.tags import TAG_RAY_LAUNCH_CONFIG

from raydog_backends.keyvalue import ValkeyTagStore
from raydog_backends.local.testing import LocalCluster
from raydog_core.interfaces import Endpoint, NodeInfo, NodeState
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux"),
]
WORKERS = 2


@dataclass
class KeptWorkersCluster(LocalCluster):
    """examples/local with ``min_workers: 2``; ``appendonly`` false: no data kept on restart."""

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        config["available_node_types"]["cpu_worker"]["min_workers"] = WORKERS
        config["provider"]["tag_store"]["appendonly"] = False
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    @property
    def tag_port(self) -> int:
        config = yaml.safe_load(self.config.read_text())
        return int(config["provider"]["tag_store"]["port"])

    def up_with_workers(self) -> dict[str, NodeInfo]:
        self.ray("up", "-y", "--no-config-cache", str(self.config), timeout=300)
        return self.wait_for(
            lambda nodes: len(self.running_workers(nodes)) == WORKERS,
            f"the head's autoscaler to start {WORKERS} workers",
            timeout=300,
        )

    def running_workers(self, nodes: dict[str, NodeInfo]) -> dict[str, NodeInfo]:
        return {n: i for n, i in self.workers(nodes).items() if i.state is NodeState.RUNNING}

    def tag_server_pids(self, head_id: str) -> tuple[int, int]:
        """(supervisor, valkey-server) on the head: the server's pid file and its parent."""
        pid_file = (
            self.observer.folder.home(head_id)
            / ".raydog"
            / "clusters"
            / self.cluster_name
            / "tag-store"
            / "server.pid"
        )
        server = int(pid_file.read_text())
        stat = (Path("/proc") / str(server) / "stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1]), server

    def alive(self, node_ids: list[str]) -> list[str]:
        """The nodes among ``node_ids`` whose task script still runs."""
        found = []
        for node_id in node_ids:
            record = self.observer.folder.record(node_id)
            process = record.process() if record is not None else None
            if process is not None and process.running():
                found.append(node_id)
        return found


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclass
class Scenario:
    """What a lost store left: the second `ray up`'s output and the nodes a few ticks later."""

    ray_up: str
    nodes: list[str]
    alive: list[str]
    stored: dict[str, dict[str, str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeptWorkersCluster]:
    """One cluster for both ways to lose the store: its server comes back empty first (its
    supervisor is alive then), and then the supervisor and server go for good."""
    cluster = KeptWorkersCluster(
        tmp_path_factory.mktemp("e2e-store-loss"), f"e2e-store-{uuid.uuid4().hex[:6]}"
    )
    try:
        yield cluster
    finally:
        cluster.probe("down", "-y", str(cluster.config), timeout=300)
        cluster.destroy()


@pytest.fixture(scope="module")
def nodes(cluster: KeptWorkersCluster) -> dict[str, NodeInfo]:
    return cluster.up_with_workers()


@pytest.fixture(scope="module")
def head(nodes: dict[str, NodeInfo]) -> str:
    (head,) = [n for n, info in nodes.items() if info.is_head]
    return head


def after_ray_up_again(cluster: KeptWorkersCluster) -> Scenario:
    again = cluster.ray("up", "-y", "--no-config-cache", str(cluster.config), timeout=300)
    # A few of the head's autoscaler ticks (1 s each here) with the store as it was left.
    time.sleep(15)
    ids = sorted(cluster.nodes())
    return Scenario(again, ids, cluster.alive(ids))


@pytest.fixture(scope="module")
def emptied(cluster: KeptWorkersCluster, nodes: dict[str, NodeInfo], head: str) -> Scenario:
    """The server (kept without persistence) is killed; its supervisor restarts it empty."""
    supervisor, server = cluster.tag_server_pids(head)
    os.kill(server, signal.SIGKILL)

    def restarted() -> bool:
        try:
            return cluster.tag_server_pids(head) not in [(supervisor, server)]
        except (OSError, ValueError):  # the dead server's pid file, or none yet
            return False

    wait_until(restarted, "the supervisor to restart the tag server", timeout=60)
    wait_until(lambda: accepts(cluster.tag_port), "the restarted server to listen", timeout=60)
    assert cluster.tag_server_pids(head)[0] == supervisor
    scenario = after_ray_up_again(cluster)
    # The providers send back what they know, and the backend's record what none remembered:
    # within a few ticks of a loaded head. Read here (the next scenario takes the store away);
    # the test judges what was stored.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYDOG_HOME", str(cluster.home))  # the cluster's password
        store = ValkeyTagStore(cluster.cluster_name, port=cluster.tag_port)
        store.connect(Endpoint("127.0.0.1", cluster.tag_port))

        def refilled() -> bool:
            scenario.stored = store.load_all()
            return every_launch_config_stored(scenario.stored, sorted(nodes))

        try:
            with contextlib.suppress(pytest.fail.Exception):
                wait_until(refilled, "every node's launch config in the store", timeout=60)
        finally:
            store.close()
    return scenario


def every_launch_config_stored(stored: dict[str, dict[str, str]], ids: list[str]) -> bool:
    return sorted(stored) == ids and all(t.get(TAG_RAY_LAUNCH_CONFIG) for t in stored.values())


@pytest.fixture(scope="module")
def unreachable(cluster: KeptWorkersCluster, head: str, emptied: Scenario) -> Scenario:
    """The supervisor and its server are killed: nothing restarts them. After ``emptied``,
    whose store must still answer, whichever test asks first."""
    supervisor, server = cluster.tag_server_pids(head)
    os.kill(supervisor, signal.SIGKILL)  # first, so that nothing restarts the server
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: not accepts(cluster.tag_port), "the tag store to go", timeout=30)
    return after_ray_up_again(cluster)


def test_a_store_that_comes_back_empty_replaces_no_node(
    nodes: dict[str, NodeInfo], emptied: Scenario
) -> None:
    ids = sorted(nodes)
    assert "out-of-date" not in emptied.ray_up, emptied.ray_up[-3000:]
    assert "Terminated head node" not in emptied.ray_up
    assert emptied.nodes == ids
    assert emptied.alive == ids
    # The providers sent back what they knew, and the backend's record what none remembered:
    # every node's launch config is in the store again.
    assert every_launch_config_stored(emptied.stored, ids), f"the store holds {emptied.stored}"


def test_ray_up_while_the_store_is_unreachable_keeps_the_whole_cluster(
    cluster: KeptWorkersCluster, nodes: dict[str, NodeInfo], unreachable: Scenario
) -> None:
    ids = sorted(nodes)
    assert "out-of-date" not in unreachable.ray_up, unreachable.ray_up[-3000:]
    assert "Terminated head node" not in unreachable.ray_up
    assert "is unreachable" in unreachable.ray_up, "the store was expected to be down"
    assert unreachable.nodes == ids
    assert unreachable.alive == ids
    assert not accepts(cluster.tag_port)
