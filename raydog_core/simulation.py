"""Run Ray's own autoscaler against the in-memory backends, in simulated time.

What ``raydog simulate`` prints, and what users import to unit-test a cluster config::

    from raydog_core.simulation import Demand, Simulation

    sim = Simulation(yaml.safe_load(open("cluster.yaml")), launch_delay_s=60)
    timeline = sim.run([Demand(cpus=8, start_s=0, end_s=600)], duration_s=1800)
    assert timeline.peak_workers("cpu_worker") == 4
    sim.close()

The user's node types, ``min_workers``/``max_workers``, ``upscaling_speed`` and
``idle_timeout_minutes`` are kept; the compute backend, tag store and transport are replaced by
the ``memory`` plugins. Each tick every running node reports its resources to Ray's
``LoadMetrics`` as its raylet would, with the demand placed on the nodes and the rest waiting.
"""

from __future__ import annotations

import copy
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.autoscaler._private.autoscaler import StandardAutoscaler
from ray.autoscaler._private.load_metrics import LoadMetrics
from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_USER_NODE_TYPE,
)

from raydog_core import config as raydog_config
from raydog_core import state
from raydog_core.errors import ConfigError
from raydog_core.interfaces import NodeState
from raydog_core.progress import quiet_ray_logs
from raydog_core.provider import RayDogNodeProvider


@dataclass(frozen=True)
class Demand:
    """``count`` tasks each needing ``resources`` (or ``cpus`` CPUs) from ``start_s`` to ``end_s``.

    ``cpus`` alone is spread as 1-CPU tasks, as a Ray job's tasks would be.
    """

    start_s: float = 0.0
    end_s: float = float("inf")
    cpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    count: int = 1

    def bundles(self) -> list[dict[str, float]]:
        bundle = dict(self.resources)
        if self.cpus:
            bundle["CPU"] = bundle.get("CPU", 0.0) + self.cpus
        if not bundle:
            return []
        # Large CPU asks are spread as 1-CPU tasks, as a Ray job's tasks would be.
        if set(bundle) == {"CPU"} and self.count == 1 and bundle["CPU"] > 1:
            return [{"CPU": 1.0}] * int(bundle["CPU"])
        return [bundle] * self.count

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class Event:
    t: float
    action: str
    node_type: str
    node_id: str


@dataclass
class Timeline:
    events: list[Event] = field(default_factory=list)
    workers: list[tuple[float, Counter[str]]] = field(default_factory=list)

    def launches(self, node_type: str | None = None) -> list[Event]:
        return self._of("launch", node_type)

    def terminations(self, node_type: str | None = None) -> list[Event]:
        return self._of("terminate", node_type)

    def peak_workers(self, node_type: str | None = None) -> int:
        return max(
            (sum(c.values()) if node_type is None else c[node_type] for _, c in self.workers),
            default=0,
        )

    def workers_at(self, t: float) -> Counter[str]:
        current: Counter[str] = Counter()
        for when, counts in self.workers:
            if when > t:
                break
            current = counts
        return current

    def _of(self, action: str, node_type: str | None) -> list[Event]:
        return [e for e in self.events if e.action == action and node_type in (None, e.node_type)]

    def format(self) -> str:
        lines = []
        for event in self.events:
            lines.append(
                f"{_clock(event.t)}  {event.action:<9}  {event.node_type:<20}  {event.node_id}"
            )
        final = self.workers[-1][1] if self.workers else Counter()
        summary = ", ".join(f"{t}: {n}" for t, n in sorted(final.items())) or "none"
        lines.append(f"workers at the end: {summary}")
        return "\n".join(lines)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:>4}m{secs:02d}s"


class _SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _NoGcs:
    """The simulation has no Ray GCS: draining a node always succeeds."""

    def drain_nodes(self, node_ids: Iterable[bytes], timeout: int = 5) -> list[bytes]:
        return list(node_ids)


class Simulation:
    def __init__(
        self,
        cluster_config: Mapping[str, Any],
        *,
        tick_s: float = 5.0,
        launch_delay_s: float = 30.0,
        config_dir: Path | None = None,
    ) -> None:
        from raydog_backends.memory.compute import MemoryComputeBackend, SimulatedCluster

        self.tick_s = tick_s
        self.clock = _SimulatedClock()
        name = f"{cluster_config.get('cluster_name', 'default')}-sim-{uuid.uuid4().hex[:6]}"
        config = _memory_config(cluster_config, name, launch_delay_s)
        try:
            with quiet_ray_logs():
                config = prepare_config(config)
            validate_config(config)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError("cluster config", str(exc)) from None
        self.config = raydog_config.bootstrap(config, config_dir or Path.cwd())
        self.cluster: SimulatedCluster = MemoryComputeBackend.cluster(name)
        self.cluster.clock = self.clock
        self.cluster.sleep = self.clock.sleep
        # Through Ray's provider cache, as the autoscaler's own lookup: one provider per process,
        # the one its node launcher writes through and the one each tick reads.
        provider = _get_node_provider(self.config["provider"], name)
        assert isinstance(provider, RayDogNodeProvider)
        self.provider = provider
        self._busy_until: dict[str, float] = {}
        head_type = self.config["head_node_type"]
        self.provider.create_node(
            self.config["available_node_types"][head_type].get("node_config", {}),
            {
                TAG_RAY_NODE_KIND: NODE_KIND_HEAD,
                TAG_RAY_USER_NODE_TYPE: head_type,
                TAG_RAY_NODE_NAME: f"ray-{name}-head",
            },
            1,
        )
        # Time zero is when the head is up, as it is for a user after `ray up`.
        self._start = self.clock.now
        self.load_metrics = LoadMetrics()
        with quiet_ray_logs():
            self.autoscaler = StandardAutoscaler(
                lambda: copy.deepcopy(self.config),
                self.load_metrics,
                _NoGcs(),
                update_interval_s=0,
            )
        self.autoscaler.provider = self.provider  # type: ignore[assignment]
        self._known: dict[str, str] = {}
        self._running: set[str] = set()

    def run(self, demand: Sequence[Demand], duration_s: float) -> Timeline:
        """Tick until ``duration_s`` simulated seconds have passed since the start."""
        timeline = Timeline()
        self._observe(timeline)
        with quiet_ray_logs():
            while self.elapsed < duration_s:
                self.clock.now += self.tick_s
                self._report_load(demand)
                self.autoscaler.update()
                self._observe(timeline)
        return timeline

    @property
    def elapsed(self) -> float:
        """Simulated seconds since the head came up."""
        return self.clock.now - self._start

    def lose_node(self, node_id: str) -> None:
        """The platform loses a node; the autoscaler should replace it."""
        self.cluster.lose(node_id)

    def close(self) -> None:
        from raydog_backends.memory.compute import MemoryComputeBackend
        from raydog_backends.memory.tag_store import MemoryTagStore

        self.provider.close()
        MemoryComputeBackend.forget(self.cluster.name)
        MemoryTagStore.forget(self.cluster.name)
        shutil.rmtree(state.cluster_dir(self.cluster.name), ignore_errors=True)

    def _report_load(self, demand: Sequence[Demand]) -> None:
        """What the raylets would report: resources, what is in use, what waits."""
        waiting = [b for d in demand if d.active(self.elapsed) for b in d.bundles()]
        types = self.config["available_node_types"]
        for info in self.cluster.live_nodes():
            if info.state is not NodeState.RUNNING or info.internal_ip is None:
                continue
            total = {k: float(v) for k, v in types[info.node_type].get("resources", {}).items()}
            free = dict(total)
            placed = []
            for bundle in waiting:
                if all(free.get(k, 0.0) >= v for k, v in bundle.items()):
                    for k, v in bundle.items():
                        free[k] -= v
                    placed.append(bundle)
            for bundle in placed:
                waiting.remove(bundle)
            if placed:
                self._busy_until[info.node_id] = self.clock.now
            idle_s = self.clock.now - self._busy_until.setdefault(info.node_id, self.clock.now)
            # Ray annotates the resources as dict[str, dict]; raylets report dict[str, float].
            report: Any = self.load_metrics.update
            report(info.internal_ip, info.node_id.encode(), total, free, idle_s)
        # Only the last report carries the waiting demand.
        self.load_metrics.waiting_bundles = waiting

    def _observe(self, timeline: Timeline) -> None:
        nodes = [n for n in self.cluster.live_nodes() if not n.is_head]
        live = {n.node_id: n.node_type for n in nodes}
        running = {n.node_id for n in nodes if n.state is NodeState.RUNNING}
        for node_id, node_type in live.items():
            if node_id not in self._known:
                timeline.events.append(Event(self.elapsed, "launch", node_type, node_id))
            if node_id in running and node_id not in self._running:
                timeline.events.append(Event(self.elapsed, "ready", node_type, node_id))
        for node_id, node_type in self._known.items():
            if node_id not in live:
                timeline.events.append(Event(self.elapsed, "terminate", node_type, node_id))
        self._known, self._running = live, running
        timeline.workers.append((self.elapsed, Counter(live.values())))


def _memory_config(
    cluster_config: Mapping[str, Any], name: str, launch_delay_s: float
) -> dict[str, Any]:
    """The user's config with the plugins swapped for the in-memory ones."""
    config = copy.deepcopy(dict(cluster_config))
    provider = config.get("provider")
    if not isinstance(provider, dict):
        raise ConfigError("provider", f"expected a mapping, got {provider!r}")
    config["provider"] = {k: v for k, v in provider.items() if k in raydog_config.RAY_PROVIDER_KEYS}
    config["provider"].update(
        {
            "type": "external",
            "module": "raydog_core.RayDogNodeProvider",
            "compute": {"type": "memory", "launch_delay": launch_delay_s},
            "tag_store": "memory",
            "transport": "direct",
            "foreground_node_launch": True,
        }
    )
    config["provider"].pop("head_node_tag_server_port", None)
    config["cluster_name"] = name
    for key, default in raydog_config.RAY_TOP_LEVEL_DEFAULTS.items():
        config.setdefault(key, copy.deepcopy(default))
    config["file_mounts"] = {}
    return config
