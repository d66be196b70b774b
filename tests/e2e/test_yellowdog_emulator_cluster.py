"""End to end: the autoscaling lifecycle of test_local_cluster.py with ``compute: yellowdog``.

The YellowDog emulator (a process of its own) runs each node's task as a local process session
with its own loopback address (``--run-tasks --loopback-ips``); the backend drives it through the
real YellowDog SDK. There is no SSH server on an emulated node, so Ray's commands for the head go
through the local command runner of the emulator's compute plugin (``compute: yellowdog-emulated``,
examples/yellowdog/emulator).

`ray up` -> `ray get-head-ip`, `ray exec 'ray status'`, `ray attach` -> `ray submit` of a job that
needs more CPUs than the head offers -> the head's autoscaler launches workers as YellowDog tasks
-> the idle workers are removed -> `ray down` -> no live work requirement, pool, node, process,
temp folder or listening socket of the cluster is left.

    .venv/bin/python -m pytest -m e2e tests/e2e/test_yellowdog_emulator_cluster.py -s
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest
from yellowdog_client.model import TaskStatus

from raydog_core.testing.lifecycle import (
    LifecycleResult,
    check_tasks_ran_on_workers,
    run_lifecycle,
)
from tests.e2e.emulated import EmulatedCluster, emulator_running_tasks
from tests.yellowdog_fixtures import EmulatorProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="local task processes"),
]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with emulator_running_tasks(tmp_path_factory.mktemp("e2e-yellowdog-emulator")) as process:
        yield process


@pytest.fixture(scope="module")
def cluster(
    emulator: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatedCluster]:
    cluster = EmulatedCluster(
        tmp_path_factory.mktemp("e2e-yellowdog"),
        f"e2e-yd-{uuid.uuid4().hex[:6]}",
        emulator_url=emulator.url,
    )
    try:
        yield cluster
    finally:
        cluster.destroy()
        print(f"\nyellowdog emulator cluster phases ({cluster.cluster_name}):\n{cluster.report()}")


@pytest.fixture(scope="module")
def lifecycle(cluster: EmulatedCluster) -> LifecycleResult:
    return run_lifecycle(cluster)


def test_ray_up_starts_a_head_task_that_ray_exec_and_attach_reach(
    lifecycle: LifecycleResult,
) -> None:
    head = lifecycle.head
    assert head.is_head and head.internal_ip and head.internal_ip.startswith("127.")
    assert "Autoscaler status" in lifecycle.status, lifecycle.status[-2000:]
    assert f"ATTACHED to {head.node_id} at " in lifecycle.attach, lifecycle.attach[-2000:]


def test_ray_get_head_ip_prints_the_heads_address(lifecycle: LifecycleResult) -> None:
    assert lifecycle.get_head_ip.strip().splitlines()[-1] == lifecycle.head.external_ip, (
        lifecycle.get_head_ip[-2000:]
    )


def test_a_job_needing_more_cpus_than_the_head_gets_worker_tasks(
    lifecycle: LifecycleResult,
) -> None:
    """The head's node type has ``resources: {CPU: 0}`` and RayDog's default task script: its
    Ray offers no CPU (not this machine's), so every task runs on a worker."""
    check_tasks_ran_on_workers(lifecycle)


def test_idle_workers_are_removed_and_the_head_stays(lifecycle: LifecycleResult) -> None:
    assert lifecycle.workers_during_job, "the autoscaler never launched a worker"
    assert list(lifecycle.nodes_after_idle) == [lifecycle.head.node_id]


def test_ray_down_leaves_nothing_on_the_platform_or_the_machine(
    lifecycle: LifecycleResult,
) -> None:
    assert lifecycle.leftovers == []


def test_ray_down_cancels_every_task_of_the_cluster(
    cluster: EmulatedCluster, lifecycle: LifecycleResult
) -> None:
    tasks = cluster.emulator.state()["tasks"]
    assert tasks, "the emulator ran no task"
    assert [t["id"] for t in tasks if not TaskStatus[t["status"]].finished] == []
