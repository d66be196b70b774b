"""Unit-test what a cluster config will do, before paying for it.

``raydog_core.simulation`` runs Ray's own autoscaler against RayDog's in-memory backends in
simulated time: a day of scaling takes a second. Run: ``pytest examples/testing``.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from raydog_core.simulation import Demand, Simulation

CONFIG = Path(__file__).with_name("cluster.yaml")


@pytest.fixture
def simulation() -> Iterator[Simulation]:
    sim = Simulation(yaml.safe_load(CONFIG.read_text()), launch_delay_s=90)
    yield sim
    sim.close()


def test_a_16_cpu_job_gets_four_workers(simulation: Simulation) -> None:
    timeline = simulation.run([Demand(cpus=16, start_s=0, end_s=20 * 60)], duration_s=15 * 60)
    # The head's 2 CPUs and the 4-CPU workers: 4 workers cover 16 one-CPU tasks.
    assert timeline.workers_at(10 * 60)["cpu_worker"] == 4


def test_idle_workers_go_but_min_workers_stay(simulation: Simulation) -> None:
    timeline = simulation.run([Demand(cpus=16, start_s=0, end_s=10 * 60)], duration_s=30 * 60)
    assert timeline.peak_workers("cpu_worker") == 4
    assert timeline.workers_at(30 * 60)["cpu_worker"] == 1
    # Busy until the 10th minute, idle_timeout_minutes 5: none goes before minute 14:55.
    assert all(e.t >= 14 * 60 + 55 for e in timeline.terminations("cpu_worker"))


def test_never_more_than_max_workers(simulation: Simulation) -> None:
    timeline = simulation.run([Demand(cpus=100, start_s=0)], duration_s=30 * 60)
    assert timeline.peak_workers() == 6


def test_an_hour_with_a_20_minute_job_costs_under_3_worker_hours(simulation: Simulation) -> None:
    timeline = simulation.run([Demand(cpus=16, start_s=0, end_s=20 * 60)], duration_s=60 * 60)
    # Node-hours run from launch to termination, as a cloud bills them; the head counts too.
    hours = timeline.node_hours()
    assert hours["head"] == 1.0
    assert hours["cpu_worker"] < 3.0
    assert timeline.summary()["node_types"]["cpu_worker"]["peak"] == 4
