"""End to end: a whole autoscaling Ray cluster on this machine, through Ray's own CLI.

`ray up` -> `ray get-head-ip`, `ray exec 'ray status'`, `ray attach` -> `ray submit` of a job that
needs more CPUs than the head offers, so the head's autoscaler launches workers -> the idle
workers are removed while the head's tag store does not answer -> `raydog metrics` -> `ray down`
-> nothing of the cluster is left on the machine.

The cluster is the local quick start (examples/local/cluster.yaml) plus one worker type a user
can meet: ``no_ray_worker`` (``min_workers: 1``), whose nodes' image has no Ray, so each one's
task ends with exit code 127 before its Ray starts, as the platform reports a task that failed.

    .venv/bin/python -m pytest -m e2e tests/e2e -s      # -s shows the phase timings
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.providers import MINIMAL_EXTERNAL_CONFIG

from raydog_backends.local.testing import LocalCluster
from raydog_core.task_scripts import DEFAULT_WORKER_SCRIPT
from raydog_core.testing.lifecycle import LifecycleResult, check_tasks_ran_on_workers, run_lifecycle

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux"),
]


NO_RAY_TYPE = "no_ray_worker"
NO_RAY = (
    f'if [ "$RAYDOG_NODE_TYPE" = {NO_RAY_TYPE} ]; then\n'
    "    sleep 2  # the node's own setup, before it starts Ray\n"
    '    echo "ray: command not found (this node type\'s image has no Ray)" >&2; exit 127\n'
    "fi\n"
)


class QuickStartWithATypeWithoutRay(LocalCluster):
    """examples/local plus ``no_ray_worker``. Ray's autoscaler keeps launching it (its
    ``min_workers``) until the provider counts one as a failed launch; the failure then holds
    for the whole run (``launch_failure_memory``), so no more are launched."""

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        config["available_node_types"][NO_RAY_TYPE] = {
            "resources": {"CPU": 1},
            "min_workers": 1,
            "max_workers": 1,
        }
        shebang, _, body = DEFAULT_WORKER_SCRIPT.partition("\n")
        config["provider"]["ray_worker_node_task_script"] = f"{shebang}\n{NO_RAY}{body}"
        config["provider"]["launch_failure_memory"] = 3600
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = QuickStartWithATypeWithoutRay(
        tmp_path_factory.mktemp("e2e-local"), f"e2e-local-{uuid.uuid4().hex[:6]}"
    )
    try:
        yield cluster
    finally:
        cluster.destroy()
        print(f"\nlocal cluster phases ({cluster.cluster_name}):\n{cluster.report()}")


@pytest.fixture(scope="module")
def lifecycle(cluster: LocalCluster) -> LifecycleResult:
    return run_lifecycle(cluster, hold_writes=True)


def test_ray_up_starts_a_head_that_ray_exec_and_attach_reach(lifecycle: LifecycleResult) -> None:
    head = lifecycle.head
    assert head.is_head and head.internal_ip and head.internal_ip.startswith("127.")
    assert "Autoscaler status" in lifecycle.status
    assert f"ATTACHED to {head.node_id} at " in lifecycle.attach


def test_ray_get_head_ip_prints_the_heads_address(lifecycle: LifecycleResult) -> None:
    assert lifecycle.get_head_ip.strip().splitlines()[-1] == lifecycle.head.external_ip, (
        lifecycle.get_head_ip[-2000:]
    )


def test_a_job_needing_more_cpus_than_the_head_gets_workers(lifecycle: LifecycleResult) -> None:
    check_tasks_ran_on_workers(lifecycle)
    assert "FIRST_WORKER_JOINED" in lifecycle.job


def test_idle_workers_are_removed_and_the_head_stays(lifecycle: LifecycleResult) -> None:
    assert lifecycle.workers_during_job, "the autoscaler never launched a worker"
    assert list(lifecycle.nodes_after_idle) == [lifecycle.head.node_id]


def test_ray_down_leaves_no_process_port_or_folder(lifecycle: LifecycleResult) -> None:
    assert lifecycle.leftovers == []


def test_ray_down_finds_the_head_ended_by_its_ray_stop(
    cluster: LocalCluster, lifecycle: LifecycleResult
) -> None:
    """`ray down` runs `ray stop` on the head, then lists the nodes: the head's task (`exec ray
    start --block`) has ended with its Ray, so Ray has no node to terminate and waits for none."""
    down = next(output for command, output in cluster.transcript if command.startswith("ray down"))
    assert "No nodes remaining" in down, down[-3000:]
    assert "nodes to shut down" not in down, down[-3000:]


def test_the_client_reaches_the_tag_store_on_the_head(
    cluster: LocalCluster, lifecycle: LifecycleResult
) -> None:
    """Only `ray up` may find the store not there yet (its server starts with the head), and
    `raydog metrics`, run while the store is stopped on purpose."""
    unreached = [
        command
        for command, output in cluster.transcript
        if not command.startswith(("ray up", "raydog metrics")) and "is unreachable" in output
    ]
    assert unreached == []


def warnings_about_unwritten_keys(transcript: list[tuple[str, str]], config: Path) -> list[str]:
    """Warning lines that name a key Ray knows (its cluster schema's, and the legacy ones of its
    defaults for external providers) that the YAML does not have: Ray's "Dropping the empty
    legacy field head_node", say. Each with its command."""
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    known = set(schema["properties"]) | set(MINIMAL_EXTERNAL_CONFIG)
    unwritten = known - set(yaml.safe_load(config.read_text()))
    names = re.compile(r"\b(" + "|".join(map(re.escape, sorted(unwritten))) + r")\b")
    return [
        f"{command}: {line}"
        for command, output in transcript
        for line in output.splitlines()
        if re.search("WARN|Dropping", line) and names.search(line)
    ]


def test_the_quick_starts_commands_warn_about_no_key_the_config_lacks(
    cluster: LocalCluster, lifecycle: LifecycleResult
) -> None:
    """Every `ray` command above, `raydog metrics` (through Ray's command runner) and
    `raydog status` (RayDog's own fill-in; the cluster is down by now, the config is read all
    the same)."""
    cluster.raydog("status", str(cluster.config))  # its output joins the transcript
    assert warnings_about_unwritten_keys(cluster.transcript, cluster.config) == [], (
        "(a venv installed before raydog-startup.pth existed: run `pip install -e .` again)"
    )


def test_raydog_metrics_prints_every_figure_after_the_job(lifecycle: LifecycleResult) -> None:
    """Prometheus' own parser reads `raydog metrics`; every figure is there, not zero: the
    job's workers timed to running and to Ray joined, the launch that failed with the task's
    reason, the head's calls to the backend, and its deletes held while the store was stopped."""
    from prometheus_client.parser import text_string_to_metric_families

    assert not lifecycle.metrics.startswith("FAILED"), lifecycle.metrics
    samples = [
        sample
        for family in text_string_to_metric_families(lifecycle.metrics)
        for sample in family.samples
    ]

    def value(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    worker = {"node_type": "cpu_worker"}
    figures = {
        "tick": value("raydog_tick_seconds_count"),
        "store round trips": value("raydog_tag_store_round_trips_total"),
        "store bytes": value("raydog_tag_store_written_bytes_total"),
        "held writes": value("raydog_tag_store_held_writes"),
        "launch API calls": value("raydog_compute_api_calls_total", kind="launch", outcome="ok"),
        "describe API calls": value(
            "raydog_compute_api_calls_total", kind="describe", outcome="ok"
        ),
        "launch to running": value("raydog_launch_to_running_seconds_count", **worker),
        "launch to Ray joined": value("raydog_launch_to_ray_joined_seconds_count", **worker),
        "nodes": value("raydog_nodes", node_type="head", state="running"),
        "launch failures": value("raydog_launch_failures_total", node_type=NO_RAY_TYPE),
        "node-hours": value("raydog_node_hours_total", **worker),
    }
    assert all(figures.values()), (figures, lifecycle.metrics)
    (reason,) = {
        s.labels["reason"]
        for s in samples
        if s.name == "raydog_launch_failures_total" and s.labels["node_type"] == NO_RAY_TYPE
    }
    # The backend's reason, or (when a client's `ray` command, whose provider also cleans up
    # ended nodes, removed it first) that the backend no longer reports it.
    assert reason in (
        "task script ended with exit code 127",
        "no longer reported by the compute backend",
    )
    assert value("raydog_launch_to_ray_joined_seconds_count", node_type=NO_RAY_TYPE) == 0
    print(f"\nraydog metrics after the job:\n{lifecycle.metrics}")
