"""The figures `raydog simulate` prints, through the pytest API: node-hours and peaks per node
type, consistent with the launches and terminations the simulation saw."""

from __future__ import annotations

import pytest

from raydog_core.simulation import Demand, Simulation
from tests.conftest import memory_cluster_config


@pytest.fixture
def simulation() -> Simulation:
    config = memory_cluster_config()
    config["available_node_types"]["big"] = {"resources": {"CPU": 8}, "max_workers": 1}
    return Simulation(config, launch_delay_s=60)


def test_node_hours_are_the_time_from_launch_to_termination(simulation: Simulation) -> None:
    try:
        demand = [
            Demand(cpus=6, start_s=0, end_s=10 * 60),
            Demand(resources={"CPU": 8}, start_s=2 * 60, end_s=6 * 60),
        ]
        timeline = simulation.run(demand, duration_s=30 * 60)
    finally:
        simulation.close()
    summary = timeline.summary()
    for node_type in ("cpu", "big"):
        launched = {e.node_id: e.t for e in timeline.launches(node_type)}
        ended = {e.node_id: e.t for e in timeline.terminations(node_type)}
        end = summary["duration_s"]
        expected = sum(ended.get(node, end) - t for node, t in launched.items()) / 3600
        assert summary["node_types"][node_type]["node_hours"] == pytest.approx(expected, abs=1e-3)
        assert summary["node_types"][node_type]["peak"] == timeline.peak_workers(node_type)
        assert launched, f"no {node_type} worker launched: the demand does not exercise it"
    assert summary["node_types"]["head"] == {
        "peak": 1,
        "node_hours": pytest.approx(summary["duration_s"] / 3600, abs=1e-3),
        "launches": 0,
        "terminations": 0,
        "failed_launches": 0,
    }
    assert summary["peak_workers"] == timeline.peak_workers() > 0
    assert summary["node_hours"] == pytest.approx(
        sum(figures["node_hours"] for figures in summary["node_types"].values()), abs=1e-3
    )


def test_the_chart_draws_each_worker_type(simulation: Simulation) -> None:
    try:
        timeline = simulation.run([Demand(cpus=6, start_s=0, end_s=5 * 60)], duration_s=10 * 60)
    finally:
        simulation.close()
    chart = timeline.chart(width=70, height=14)
    rows = chart.splitlines()
    assert len(rows) == 14 and all(len(row) <= 70 for row in rows)
    assert " cpu " in chart and " big " in chart  # the legend: every worker type, used or not
    assert " head " not in chart
    assert "\x1b[" not in chart  # colorless unless asked


def test_ray_status_lists_a_late_launch_failure_and_the_workers_of_another_type() -> None:
    """Ray's own `ray status` text, from the autoscaler that saw the provider's exception."""
    from ray.autoscaler._private.util import format_info_string

    config = memory_cluster_config()
    config["available_node_types"]["big"] = {"resources": {"CPU": 4}, "max_workers": 2}
    simulation = Simulation(config, launch_delay_s=60, unavailable={"cpu": "quota exceeded"})
    try:
        simulation.run([Demand(cpus=4, start_s=0, end_s=10 * 60)], duration_s=3 * 60)
        status = format_info_string(
            simulation.load_metrics.summary(), simulation.autoscaler.summary(), verbose=True
        )
    finally:
        simulation.close()
    failures = status.split("Recent failures:")[1].split("\n\n")[0]
    assert "cpu: LaunchFailedLater" in failures and "quota exceeded" in failures
    active = status.split("Active:")[1].split("Pending:")[0]
    assert " big" in active and " cpu" not in active
