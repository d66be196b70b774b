"""End to end: a worker node type whose template the platform cannot provision, on the YellowDog
emulator (the real SDK, real Ray); Ray falls back to another node type (issue 20).

Two worker types: ``preferred`` (2 CPUs: the best fit for the job's one 2-CPU task by Ray's own
scorer) from a template the emulated platform cannot provision (``fail_provisioning``: the pool's
compute source is ERRORED with the reason, as the SDK models it; docs/emulator.md), and
``fallback`` (3 CPUs) from one it can. Ray launches ``preferred``; RayDog ends the waiting node
with the platform's reason and refuses the type's next launch with ``NodeLaunchException``; Ray's
availability tracker and RayDog's scorer then send the demand to ``fallback``, where the task runs.

    flock /work/ray-e2e.lock .venv/bin/python -m pytest -m e2e \\
        tests/e2e/test_yellowdog_emulator_fallback.py -s
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from raydog_core.testing.lifecycle import ran_on
from tests.e2e.emulated import EmulatedCluster, emulator_running_tasks
from tests.yellowdog_fixtures import EmulatorProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="local task processes"),
]

JOB = Path(__file__).with_name("node_type_job.py")
UNPROVISIONABLE = "emulated/unprovisionable-worker"
REASON = "vCPU quota exceeded in eu-west-2"
# Ray's own status, from the head, against the head's GCS (other clusters run on this machine);
# -v adds each failure's description: the platform's reason.
RAY_STATUS = 'ray status -v --address "$RAYDOG_NODE_IP:$RAYDOG_GCS_PORT"'


@dataclass
class TwoWorkerTypes(EmulatedCluster):
    """examples/yellowdog/emulator with its worker type split in two: ``preferred`` from a
    template the platform cannot provision, ``fallback`` from the example's."""

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        config["max_workers"] = 2
        # Waiting nodes' pools are checked every 2 s (not 30): the failure is found sooner.
        config["provider"]["node_recheck_seconds"] = 2
        types = config["available_node_types"]
        worker = types.pop("cpu_worker")
        types["preferred"] = {
            **worker,
            "resources": {"CPU": 2},
            "max_workers": 1,
            "node_config": {"compute_requirement_template": UNPROVISIONABLE},
        }
        types["fallback"] = {**worker, "resources": {"CPU": 3}, "max_workers": 1}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def node_types_by_ip(self) -> dict[str, str]:
        """Every emulated node that ran a task of the cluster: its address -> the node type."""
        state = self.emulator.state()
        addresses = {node["id"]: node.get("private_ip") for node in state["nodes"]}
        return {
            addresses[task["node_id"]]: task["environment"]["RAYDOG_NODE_TYPE"]
            for task in state["tasks"]
            if task["node_id"] in addresses
        }

    def tasks_of(self, node_type: str) -> list[dict[str, str]]:
        return [
            task
            for task in self.emulator.state()["tasks"]
            if task["environment"].get("RAYDOG_NODE_TYPE") == node_type
        ]


@dataclass
class FallbackRun:
    cluster: TwoWorkerTypes
    job: str
    ray_status: str
    why: str


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with emulator_running_tasks(tmp_path_factory.mktemp("e2e-fallback-emulator")) as process:
        yield process


@pytest.fixture(scope="module")
def run(
    emulator: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FallbackRun]:
    cluster = TwoWorkerTypes(
        tmp_path_factory.mktemp("e2e-fallback"),
        f"e2e-fb-{uuid.uuid4().hex[:6]}",
        emulator_url=emulator.url,
    )
    cluster.emulator.fail_provisioning(REASON, UNPROVISIONABLE)
    config = str(cluster.config)
    try:
        with cluster.phase("head up (ray up)"):
            cluster.ray("up", "-y", "--no-config-cache", config, timeout=300)
        with cluster.phase("job (ray submit)"):
            job = cluster.ray("submit", "--no-config-cache", config, str(JOB), timeout=600)
        with cluster.phase("ray status on the head"):
            ray_status = cluster.probe("exec", config, RAY_STATUS)
        with cluster.phase("raydog status --why"):
            why = cluster.raydog("status", config, "--why")
        explained = why.stdout + why.stderr
        print(f"\nraydog status --why:\n{explained}")
        yield FallbackRun(cluster, job, ray_status, explained)
    finally:
        cluster.destroy()
        print(f"\nfallback e2e phases ({cluster.cluster_name}):\n{cluster.report()}")


def test_ray_tried_the_preferred_type_and_the_platform_never_started_it(run: FallbackRun) -> None:
    tried = run.cluster.tasks_of("preferred")
    assert tried, "Ray never launched the preferred type: the test proves no fallback"
    assert all(task["node_id"] is None for task in tried), tried


def test_the_jobs_task_ran_on_a_node_of_the_other_type(run: FallbackRun) -> None:
    (task,) = ran_on(run.job)["tasks"]
    assert task["node_type"] == "fallback", task
    assert run.cluster.node_types_by_ip().get(task["ip"]) == "fallback", (
        task,
        run.cluster.node_types_by_ip(),
    )


def test_ray_status_on_the_head_lists_the_failure_with_the_platforms_reason(
    run: FallbackRun,
) -> None:
    failures = run.ray_status.split("Recent failures:")[-1].split("Resources")[0]
    (line,) = [x for x in failures.splitlines() if x.strip().startswith("preferred:")]
    assert "LaunchFailedLater" in line and REASON in line, run.ray_status[-3000:]


def test_raydog_status_why_shows_how_far_the_failed_node_got_and_why(run: FallbackRun) -> None:
    """The failed node is gone (the head's autoscaler ended it); the head keeps its chain."""
    assert "the head's Ray did not answer" not in run.why, run.why
    chain = run.why.split("why: node type preferred\n")[1].split("why: ")[0].splitlines()
    (line,) = [x for x in chain if x.startswith("  recent failure, ")]
    (tried,) = [task["id"] for task in run.cluster.tasks_of("preferred")]
    assert line.startswith(f"  recent failure, {tried}: requested by Ray "), line
    assert "-> created on the platform (time not known); stopped before booted at " in line
    assert "YellowDog could not provision worker pool" in line and REASON in line, line
    # The fallback node runs and its Ray joined the head's: not a node Ray waits for.
    assert "why: node type fallback" not in run.why, run.why
