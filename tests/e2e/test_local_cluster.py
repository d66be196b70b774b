"""End to end: a whole autoscaling Ray cluster on this machine, through Ray's own CLI.

`ray up` -> `ray get-head-ip`, `ray exec 'ray status'`, `ray attach` -> `ray submit` of a job that
needs more CPUs than the head offers, so the head's autoscaler launches workers -> the idle
workers are removed -> `ray down` -> nothing of the cluster is left on the machine.

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
from raydog_core.testing.lifecycle import LifecycleResult, check_tasks_ran_on_workers, run_lifecycle

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path_factory.mktemp("e2e-local"), f"e2e-local-{uuid.uuid4().hex[:6]}"
    )
    try:
        yield cluster
    finally:
        cluster.destroy()
        print(f"\nlocal cluster phases ({cluster.cluster_name}):\n{cluster.report()}")


@pytest.fixture(scope="module")
def lifecycle(cluster: LocalCluster) -> LifecycleResult:
    return run_lifecycle(cluster)


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
    """Only `ray up` may find the store not there yet (its server starts with the head)."""
    unreached = [
        command
        for command, output in cluster.transcript
        if not command.startswith("ray up") and "is unreachable" in output
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


def test_raydog_metrics_prints_the_providers_figures_after_the_job(
    lifecycle: LifecycleResult,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(lifecycle.metrics)
        for sample in family.samples
        if sample.value > 0
    }
    for name in (
        "raydog_tick_seconds_count",
        "raydog_tag_store_round_trips_total",
        "raydog_tag_store_written_bytes_total",
        "raydog_launch_to_running_seconds_count",
        "raydog_nodes",
        "raydog_node_hours_total",
    ):
        assert name in samples, lifecycle.metrics[-3000:]
