"""Ray's own StandardAutoscaler driving RayDog on the memory backends (raydog_core.simulation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from raydog_core.simulation import Demand, Simulation

ConfigFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def simulation(cluster_config: ConfigFactory) -> Iterator[Callable[..., Simulation]]:
    made: list[Simulation] = []

    def make(**overrides: Any) -> Simulation:
        config = cluster_config()
        config.update(overrides)
        sim = Simulation(config, tick_s=5, launch_delay_s=20)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.close()


def test_demand_launches_workers_and_idleness_removes_them(
    simulation: Callable[..., Simulation],
) -> None:
    sim = simulation(idle_timeout_minutes=2)
    timeline = sim.run([Demand(cpus=8, start_s=0, end_s=300)], duration_s=900)
    # 8 CPUs of 1-CPU tasks; the head has 1 CPU, workers 2 each: 4 workers (max_workers 4).
    assert len(timeline.launches("cpu")) == 4
    assert timeline.peak_workers("cpu") == 4
    assert timeline.workers_at(200)["cpu"] == 4
    # Last busy tick at 295 s, idle timeout 2 minutes: gone from 415 s, within a few ticks.
    terminations = timeline.terminations("cpu")
    assert len(terminations) == 4
    assert all(410 <= e.t <= 480 for e in terminations), terminations
    assert timeline.workers_at(900)["cpu"] == 0


def test_a_node_lost_in_the_backend_is_replaced(simulation: Callable[..., Simulation]) -> None:
    sim = simulation()
    demand = [Demand(cpus=4, start_s=0)]
    first = sim.run(demand, duration_s=60)
    workers = [e.node_id for e in first.launches("cpu")]
    assert len(workers) == 2
    sim.lose_node(workers[0])
    after = sim.run(demand, duration_s=180)
    replacement = [e for e in after.launches("cpu") if e.node_id not in workers]
    assert [e.node_id for e in after.terminations("cpu")] == [workers[0]]
    assert len(replacement) == 1
    assert after.workers_at(180)["cpu"] == 2


def test_min_workers_are_kept_without_demand(
    simulation: Callable[..., Simulation], cluster_config: ConfigFactory
) -> None:
    types = cluster_config()["available_node_types"]
    types["cpu"]["min_workers"] = 2
    sim = simulation(available_node_types=types)
    timeline = sim.run([], duration_s=600)
    assert timeline.workers_at(600)["cpu"] == 2
    assert timeline.terminations() == []


def test_upscaling_speed_limits_each_step(
    simulation: Callable[..., Simulation], cluster_config: ConfigFactory
) -> None:
    types = cluster_config()["available_node_types"]
    types["cpu"]["max_workers"] = 10
    sim = simulation(available_node_types=types, max_workers=10, upscaling_speed=0.5)
    timeline = sim.run([Demand(cpus=20, start_s=0)], duration_s=300)
    first_wave = [e for e in timeline.launches("cpu") if e.t == timeline.launches("cpu")[0].t]
    assert len(first_wave) < 10
    assert timeline.workers_at(300)["cpu"] == 10


def test_a_store_that_comes_back_empty_replaces_no_worker(
    simulation: Callable[..., Simulation], cluster_config: ConfigFactory
) -> None:
    """Ray replaces a worker whose launch config hash it cannot find; the compute backend's
    record keeps it, so emptying the tag store (a restart without persistence) changes nothing."""
    from raydog_backends.memory.tag_store import MemoryTagStore

    types = cluster_config()["available_node_types"]
    types["cpu"]["min_workers"] = 2
    sim = simulation(available_node_types=types)
    before = sim.run([], duration_s=120)
    workers = sorted(e.node_id for e in before.launches("cpu"))
    assert len(workers) == 2
    MemoryTagStore.forget(sim.cluster_name)
    after = sim.run([], duration_s=600)
    assert after.terminations() == []
    assert after.launches() == []
    assert sorted(sim.provider.non_terminated_nodes({"ray-node-type": "worker"})) == workers
    # And the provider sent back what the store lost: every node's tags are there again.
    reader = MemoryTagStore(sim.cluster_name)
    reader.connect(None)
    stored = reader.load_all()
    assert set(workers) <= set(stored)
    assert all(stored[worker].get("ray-launch-config") for worker in workers)


@pytest.mark.parametrize(("worker_liveness_check", "replaced"), [(None, False), (True, True)])
def test_a_worker_is_not_replaced_for_joining_ray_after_its_task_started(
    simulation: Callable[..., Simulation],
    cluster_config: ConfigFactory,
    monkeypatch: pytest.MonkeyPatch,
    worker_liveness_check: bool | None,
    replaced: bool,
) -> None:
    """A worker is up to date for Ray once its task runs, and its Ray starts after its setup:
    on YellowDog, minutes after the task starts. Ray's liveness check replaces a worker whose
    raylet has not reported within 30 s of the first tick that saw it up to date. Here that
    window is shut: a worker the check judges is replaced at once. RayDog leaves a worker's
    health to its task (which ends with its Ray) unless the config turns the check on."""
    from ray.autoscaler._private import autoscaler

    monkeypatch.setattr(autoscaler, "AUTOSCALER_HEARTBEAT_TIMEOUT_S", 0)
    config = cluster_config()
    config["available_node_types"]["cpu"]["min_workers"] = 2
    if worker_liveness_check is not None:
        config["provider"]["worker_liveness_check"] = worker_liveness_check
    sim = simulation(**config)
    timeline = sim.run([], duration_s=300)
    if replaced:
        assert timeline.terminations("cpu"), timeline.events
    else:
        assert timeline.terminations() == [], timeline.events
        assert len(timeline.launches("cpu")) == timeline.workers_at(300)["cpu"] == 2


class _Monitor:
    """Like Ray's Monitor on the head (``ray/autoscaler/_private/monitor.py``): it holds the
    load metrics (the GCS's reports) and the figures' registry, then builds Ray's autoscaler,
    which builds the provider."""

    def __init__(self, config: dict[str, Any]) -> None:
        from ray.autoscaler._private.autoscaler import StandardAutoscaler
        from ray.autoscaler._private.load_metrics import LoadMetrics
        from ray.autoscaler._private.prom_metrics import AutoscalerPrometheusMetrics

        from raydog_core.simulation import _NoGcs

        self.load_metrics = LoadMetrics()
        self.prom_metrics = AutoscalerPrometheusMetrics(session_name="test")
        self.autoscaler = StandardAutoscaler(
            lambda: config,
            self.load_metrics,
            _NoGcs(),
            update_interval_s=0,
            prom_metrics=self.prom_metrics,
        )


def test_on_the_head_ray_status_lists_a_worker_whose_ray_has_not_joined_as_setting_up(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> None:
    """Ray's own autoscaler builds the head's provider, as Ray's monitor has it do. A worker
    that runs but whose Ray has not joined (its setup, then `ray start`) is "setting-up", under
    "Pending" in `ray status`, instead of missing from it; once Ray's monitor reports its
    address it is up to date, and active."""
    from ray.autoscaler._private.util import prepare_config
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    from raydog_core import config as raydog_config
    from raydog_core.progress import quiet_ray_logs
    from raydog_core.ray_defaults import fill_defaults

    config = cluster_config(foreground_node_launch=True)
    config["available_node_types"]["cpu"]["min_workers"] = 1
    forget_memory_clusters(config["cluster_name"])
    with quiet_ray_logs():
        config = raydog_config.bootstrap(fill_defaults(prepare_config(config)))
    config["provider"] = raydog_config.for_head(config["provider"], {})
    with quiet_ray_logs():
        monitor = _Monitor(config)
        autoscaler = monitor.autoscaler
        provider = autoscaler.provider
        assert provider is not None
        provider.create_node(
            {}, {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: "head"}, 1
        )
        autoscaler.update()  # launches the worker
        autoscaler.update()  # sees it run
        (worker,) = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"})
        setting_up = autoscaler.summary()
        ip = provider.internal_ip(worker)
        assert ip is not None
        monitor.load_metrics.update(ip, b"worker", {"CPU": 2.0}, {"CPU": 2.0}, 0)
        autoscaler.update()
        joined = autoscaler.summary()
    assert setting_up is not None and joined is not None
    assert provider.is_running(worker)
    assert setting_up.pending_nodes == [(ip, "cpu", "setting-up")], setting_up
    assert dict(setting_up.active_nodes) == {}
    assert provider.node_tags(worker)["ray-node-status"] == "up-to-date"
    assert joined.pending_nodes == [], joined
    assert dict(joined.active_nodes) == {"cpu": 1}, joined
