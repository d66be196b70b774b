"""End to end under Ray's autoscaler v2: `RAY_enable_autoscaler_v2=1` where `ray up` runs turns
it on for the cluster, and the local example scales a job's workers up and down as under v1.

v2 wraps RayDog in Ray's ``NodeProviderAdapter`` and waits for each node it launched to report
itself by id (``RAY_CLOUD_INSTANCE_ID``), which RayDog exports on every node.

    .venv/bin/python -m pytest -m e2e tests/e2e/test_local_cluster_autoscaler_v2.py -s
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest

from raydog_backends.local.testing import LocalCluster
from raydog_core.testing.lifecycle import LifecycleResult, check_tasks_ran_on_workers, run_lifecycle

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("e2e-v2"), f"e2e-v2-{uuid.uuid4().hex[:6]}")
    cluster.env["RAY_enable_autoscaler_v2"] = "1"
    try:
        yield cluster
    finally:
        cluster.destroy()
        print(
            f"\nlocal cluster phases, autoscaler v2 ({cluster.cluster_name}):\n{cluster.report()}"
        )


@pytest.fixture(scope="module")
def lifecycle(cluster: LocalCluster) -> LifecycleResult:
    return run_lifecycle(cluster, status_after_idle=True)


def test_the_jobs_tasks_ran_on_workers_v2_launched(lifecycle: LifecycleResult) -> None:
    check_tasks_ran_on_workers(lifecycle)


def test_idle_workers_went_away_and_the_head_stayed(lifecycle: LifecycleResult) -> None:
    assert lifecycle.workers_during_job, "the autoscaler never launched a worker"
    assert list(lifecycle.nodes_after_idle) == [lifecycle.head.node_id]


def test_v2_ran_the_cluster_and_knew_each_worker_by_its_node_id(
    lifecycle: LifecycleResult,
) -> None:
    """v2's status lists the nodes it stopped by their cloud instance id (v1's has no ids)."""
    stopped = [
        w
        for w in lifecycle.workers_during_job
        if f"instance_id: {w})" in lifecycle.status_after_idle
    ]
    assert stopped, lifecycle.status_after_idle[-3000:]
