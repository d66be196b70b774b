"""End to end: ``raydog_core.Cluster`` and the ``raydog_cluster`` pytest fixture on the local
backend. A job's tasks run on workers the cluster scaled up for Ray's resource request; after the
test, and after an error inside ``with Cluster(...)``, nothing of the cluster is left.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from raydog_backends.local import LocalComputeBackend
from raydog_backends.local.nodes import NodeRecord
from raydog_core.cluster import Cluster
from raydog_core.interfaces import ClusterSpec, NodeState, NodeTypeSpec
from raydog_core.pytest_plugin import local_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux"),
]

INNER_TEST = """
import json, time
from pathlib import Path

import pytest
import ray

pytest_plugins = ["raydog_core.pytest_plugin"]


def test_a_job(raydog_cluster):
    ray.init(raydog_cluster.address)
    raydog_cluster.request(CPU=5)  # the head's 1 and two 2-CPU workers
    workers = raydog_cluster.wait_for_workers(2, timeout=300)

    @ray.remote(num_cpus=2)
    def where():
        time.sleep(1)
        return ray.util.get_node_ip_address()

    ran = ray.get([where.remote() for _ in range(2)], timeout=300)
    Path("ran.json").write_text(
        json.dumps({"cluster": raydog_cluster.name, "workers": workers, "tasks": ran})
    )
"""


@pytest.fixture(autouse=True)
def short_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inherited by the head's autoscaler: ticks of a second; no usage report."""
    monkeypatch.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


class Watcher:
    """The cluster's nodes as the local backend records them (the files `ray up` writes)."""

    def __init__(self, home: Path, cluster_name: str) -> None:
        spec = ClusterSpec(
            cluster_name=cluster_name,
            head_node_type="head",
            node_types={"head": NodeTypeSpec("head"), "cpu_worker": NodeTypeSpec("cpu_worker")},
            head_script="",
            worker_script="",
        )
        self.backend = LocalComputeBackend(spec, base_dir=str(home / "local"))
        self.seen: dict[str, NodeRecord] = {}

    def live(self) -> list[str]:
        for record in self.backend.folder.records():
            self.seen.setdefault(record.node_id, record)
        return [n.node_id for n in self.backend.describe() if n.state is not NodeState.TERMINATED]

    def leftovers(self) -> list[str]:
        found = [f"node {node}" for node in self.live()]
        for record in self.seen.values():
            process = record.process()
            if process is not None and (members := process.members()):
                found.append(f"processes of {record.node_id}: {members}")
        if self.backend.folder.root.exists():
            found.append(f"cluster folder {self.backend.folder.root}")
        return found


def test_the_fixture_gives_a_job_workers_and_leaves_nothing(
    pytester: pytest.Pytester, raydog_home: Path
) -> None:
    pytester.makepyfile(test_inner=INNER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n0", timeout=900)
    result.assert_outcomes(passed=1)
    ran = json.loads((pytester.path / "ran.json").read_text())
    assert len(ran["tasks"]) == 2
    assert set(ran["tasks"]) <= set(ran["workers"]), "a 2-CPU task ran somewhere else"
    watcher = Watcher(raydog_home, ran["cluster"])
    assert watcher.leftovers() == []


def test_an_error_inside_the_with_still_brings_everything_down(raydog_home: Path) -> None:
    config = local_config()
    watcher = Watcher(raydog_home, config["cluster_name"])
    with pytest.raises(ZeroDivisionError), Cluster(config, workers={"cpu_worker": 1}) as cluster:
        cluster.wait_for_workers(1, timeout=300)
        assert len(watcher.live()) == 2, "the head and the worker asked for"
        assert cluster.address.startswith("127.")
        1 / 0  # noqa: B018
    assert watcher.leftovers() == []


def test_a_node_type_that_does_not_exist_is_a_config_error_before_anything_starts(
    raydog_home: Path,
) -> None:
    from raydog_core.errors import ConfigError

    config = local_config()
    with pytest.raises(ConfigError, match="gpu_worker: no such node type"):
        Cluster(config, workers={"gpu_worker": 1})
    assert Watcher(raydog_home, config["cluster_name"]).leftovers() == []
