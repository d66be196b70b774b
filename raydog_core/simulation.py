"""Run Ray's own autoscaler against the in-memory backends, in simulated time.

What ``raydog simulate`` prints, and what users import to unit-test a cluster config::

    from raydog_core.simulation import Demand, Simulation
    from raydog_core.validation import load_file

    sim = Simulation(load_file(Path("cluster.yaml")), launch_delay_s=60)
    timeline = sim.run([Demand(cpus=8, start_s=0, end_s=600)], duration_s=1800)
    assert timeline.peak_workers("cpu_worker") == 4
    sim.close()

The user's node types, ``min_workers``/``max_workers``, ``upscaling_speed`` and
``idle_timeout_minutes`` are kept; the compute backend, tag store and transport are replaced by
the ``memory`` plugins. Each tick every running node reports its resources to Ray's
``LoadMetrics`` as its raylet would, with the demand placed on the nodes and the rest waiting.
``unavailable`` node types have every launch end before its node runs, as a pool that cannot
provision does; Ray then sees the provider's ``NodeLaunchException`` and, with RayDog's scorer
(``raydog_core.scheduling``), falls back to another node type.
"""

from __future__ import annotations

import copy
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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

from raydog_core import clock, ray_defaults, scheduling, state
from raydog_core import config as raydog_config
from raydog_core.clock import SimulatedClock
from raydog_core.errors import ConfigError
from raydog_core.interfaces import NodeInfo, NodeState
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


@runtime_checkable
class LosesNodes(Protocol):
    """A compute backend that can lose a node on request (the ``memory`` one)."""

    def lose(self, node_id: str, reason: str = ...) -> None: ...


@runtime_checkable
class FailsLaunches(Protocol):
    """A compute backend whose node types can be made to fail their launches (``memory``)."""

    def make_unavailable(self, node_type: str, reason: str) -> None: ...


@dataclass(frozen=True)
class Event:
    t: float
    action: str
    node_type: str
    node_id: str
    detail: str = ""
    """Why, for a ``failed`` launch: the platform's reason."""


@dataclass
class Timeline:
    """What a simulation saw: events, and the live workers per node type at each tick.

    ``summary()`` holds the figures (node-hours and peak per node type) that ``raydog simulate``
    prints and ``--json`` emits; ``chart()`` draws the cluster's size over time.
    """

    events: list[Event] = field(default_factory=list)
    workers: list[tuple[float, Counter[str]]] = field(default_factory=list)
    head_type: str = ""
    configured_types: tuple[str, ...] = ()

    def launches(self, node_type: str | None = None) -> list[Event]:
        return self._of("launch", node_type)

    def terminations(self, node_type: str | None = None) -> list[Event]:
        return self._of("terminate", node_type)

    def failures(self, node_type: str | None = None) -> list[Event]:
        """Launches that ended before their node ran."""
        return self._of("failed", node_type)

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

    def node_types(self) -> list[str]:
        """The head's type, then every other node type (configured, or seen), by name."""
        seen = {t for _, counts in self.workers for t, n in counts.items() if n}
        seen |= {e.node_type for e in self.events} | set(self.configured_types)
        return ([self.head_type] if self.head_type else []) + sorted(seen - {self.head_type})

    def node_hours(self) -> dict[str, float]:
        """Hours of node time per node type, from launch to termination (what a cloud bills),
        the head included for the whole run."""
        hours = dict.fromkeys(self.node_types(), 0.0)
        for (start, counts), (end, _) in zip(self.workers, self.workers[1:], strict=False):
            for node_type, count in counts.items():
                hours[node_type] = hours.get(node_type, 0.0) + count * (end - start) / 3600
        if self.head_type and self.workers:
            hours[self.head_type] += (self.workers[-1][0] - self.workers[0][0]) / 3600
        return hours

    def summary(self) -> dict[str, Any]:
        """The figures, JSON-ready: per node type its peak, node-hours, launches, terminations."""
        hours = self.node_hours()
        per_type = {
            node_type: {
                "peak": 1 if node_type == self.head_type else self.peak_workers(node_type),
                "node_hours": round(hours[node_type], 4),
                "launches": len(self.launches(node_type)),
                "terminations": len(self.terminations(node_type)),
                "failed_launches": len(self.failures(node_type)),
            }
            for node_type in self.node_types()
        }
        return {
            "duration_s": self.workers[-1][0] if self.workers else 0.0,
            "head_node_type": self.head_type,
            "node_types": per_type,
            "peak_workers": self.peak_workers(),
            "node_hours": round(sum(hours.values()), 4),
            "workers_at_end": dict(self.workers[-1][1]) if self.workers else {},
            "series": [{"t": t, "workers": dict(counts)} for t, counts in self.workers],
            "events": [
                {
                    "t": e.t,
                    "action": e.action,
                    "node_type": e.node_type,
                    "node_id": e.node_id,
                    **({"detail": e.detail} if e.detail else {}),
                }
                for e in self.events
            ],
        }

    def chart(self, width: int = 80, height: int = 18, colors: bool = False) -> str:
        """Workers per node type over simulated minutes, drawn by plotext."""
        import plotext

        figure = plotext.figure
        figure.clear()
        plotext.terminal.limit(False, False)
        figure.plot_size(width, height)
        worker_types = [t for t in self.node_types() if t != self.head_type] or ["workers"]
        for node_type in worker_types:
            xs, ys = self._steps(node_type)
            figure.draw(figure.signal(xs, ys, marker="braille").lines().label(node_type))
        figure.title("workers per node type (simulated minutes)")
        peak = max(self.peak_workers(), 1)
        figure.ruler("y").lim(0, peak + 0.5).ticks(_integer_ticks(peak))
        text: str = figure.build().string(colorless=not colors)
        figure.clear()
        return text.rstrip("\n")

    def _steps(self, node_type: str) -> tuple[list[float], list[int]]:
        """The count as a step function: it holds until the next observation."""
        xs: list[float] = []
        ys: list[int] = []
        for t, counts in self.workers:
            count = counts[node_type]
            if ys and count != ys[-1]:
                xs.append(t / 60)
                ys.append(ys[-1])
            xs.append(t / 60)
            ys.append(count)
        return xs or [0.0], ys or [0]

    def _of(self, action: str, node_type: str | None) -> list[Event]:
        return [e for e in self.events if e.action == action and node_type in (None, e.node_type)]

    def format_events(self) -> str:
        return "\n".join(
            f"{_clock(e.t)}  {e.action:<9}  {e.node_type:<20}  {e.node_id}"
            + (f"  ({e.detail})" if e.detail else "")
            for e in self.events
        )

    def format_figures(self) -> str:
        """Per node type: peak, node-hours, launches; then the totals and the end state."""
        summary = self.summary()
        width = max([len(t) for t in summary["node_types"]] + [9]) + 2
        lines = [f"{'node type':<{width}}{'peak':>6}{'node-hours':>12}{'launches':>10}"]
        for node_type, figures in summary["node_types"].items():
            role = " (head)" if node_type == self.head_type else ""
            lines.append(
                f"{node_type + role:<{width}}{figures['peak']:>6}{figures['node_hours']:>12.2f}"
                f"{figures['launches']:>10}"
            )
        lines.append(
            f"{'all':<{width}}{summary['peak_workers']:>6}{summary['node_hours']:>12.2f}"
            f"{len(self.launches()):>10}   (peak: workers at once)"
        )
        final = summary["workers_at_end"]
        ended = ", ".join(f"{t}: {n}" for t, n in sorted(final.items()) if n) or "none"
        lines.append(f"workers at the end: {ended}")
        for node_type in summary["node_types"]:
            failed = self.failures(node_type)
            if failed:
                lines.append(
                    f"{node_type}: {len(failed)} launch(es) failed before running "
                    f"({failed[-1].detail})"
                )
        return "\n".join(lines)


def _integer_ticks(peak: int) -> list[int]:
    step = max(1, -(-peak // 8))
    return list(range(0, peak + 1, step))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:>4}m{secs:02d}s"


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
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        """``unavailable``: node type to the reason the platform gives for ending its launches."""
        self.tick_s = tick_s
        self.clock = SimulatedClock()
        name = f"{cluster_config.get('cluster_name', 'default')}-sim-{uuid.uuid4().hex[:6]}"
        config = _memory_config(cluster_config, name, launch_delay_s)
        try:
            with quiet_ray_logs():
                config = ray_defaults.fill_defaults(prepare_config(config))
            validate_config(config)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ConfigError("cluster config", str(exc)) from None
        self.cluster_name = name
        # Every provider built for this cluster gives the memory backend the simulation's time:
        # launch delays, and the head launch's wait.
        clock.simulate(name, self.clock)
        self.config = raydog_config.bootstrap(config)
        # Through Ray's provider cache, as the autoscaler's own lookup: one provider per process,
        # the one its node launcher writes through and the one each tick reads.
        provider = _get_node_provider(self.config["provider"], name)
        assert isinstance(provider, RayDogNodeProvider)
        self.provider = provider
        self._busy_until: dict[str, float] = {}
        head_type = self.config["head_node_type"]
        for node_type, reason in (unavailable or {}).items():
            if node_type == head_type or node_type not in self.config["available_node_types"]:
                workers = sorted(set(self.config["available_node_types"]) - {head_type})
                raise ConfigError(
                    "--unavailable",
                    f"{node_type!r} is not a worker node type ({', '.join(workers)})",
                )
            compute = self.provider.compute
            if not isinstance(compute, FailsLaunches):
                raise TypeError(f"{type(compute).__name__} cannot fail launches on request")
            compute.make_unavailable(node_type, reason)
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
        self._start = self.clock.now()
        self.load_metrics = LoadMetrics()
        with quiet_ray_logs():
            self.autoscaler = StandardAutoscaler(
                lambda: copy.deepcopy(self.config),
                self.load_metrics,
                _NoGcs(),
                update_interval_s=0,
            )
        self.autoscaler.provider = self.provider  # type: ignore[assignment]
        # What RayDog's head runs too (its task script sets the variable Ray reads).
        scheduler = self.autoscaler.resource_demand_scheduler
        assert scheduler is not None
        scheduler.utilization_scorer = scheduling.prefer_launchable
        self._known: dict[str, str] = {}
        self._running: set[str] = set()

    def run(self, demand: Sequence[Demand], duration_s: float) -> Timeline:
        """Tick until ``duration_s`` simulated seconds have passed since the start."""
        timeline = Timeline(
            head_type=self.config["head_node_type"],
            configured_types=tuple(self.config["available_node_types"]),
        )
        self._observe(timeline)
        with quiet_ray_logs():
            while self.elapsed < duration_s:
                self.clock.advance(self.tick_s)
                self._report_load(demand)
                self.autoscaler.update()
                self._observe(timeline)
        return timeline

    @property
    def elapsed(self) -> float:
        """Simulated seconds since the head came up."""
        return self.clock.now() - self._start

    def lose_node(self, node_id: str) -> None:
        """The platform loses a node; the autoscaler should replace it."""
        compute = self.provider.compute
        if not isinstance(compute, LosesNodes):
            raise TypeError(f"{type(compute).__name__} cannot lose a node on request")
        compute.lose(node_id)

    def close(self) -> None:
        """Shut the simulated cluster down and forget it: its nodes, tags and folder."""
        self.provider.cleanup_cluster_resources()
        self.provider.close()
        clock.forget(self.cluster_name)
        shutil.rmtree(state.cluster_dir(self.cluster_name), ignore_errors=True)

    def _live_nodes(self) -> list[NodeInfo]:
        return [n for n in self.provider.compute.describe() if n.state is not NodeState.TERMINATED]

    def _report_load(self, demand: Sequence[Demand]) -> None:
        """What the raylets would report: resources, what is in use, what waits."""
        now = self.clock.now()
        waiting = [b for d in demand if d.active(self.elapsed) for b in d.bundles()]
        types = self.config["available_node_types"]
        for info in self._live_nodes():
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
                self._busy_until[info.node_id] = now
            idle_s = now - self._busy_until.setdefault(info.node_id, now)
            # Ray annotates the resources as dict[str, dict]; raylets report dict[str, float].
            report: Any = self.load_metrics.update
            report(info.internal_ip, info.node_id.encode(), total, free, idle_s)
        # Only the last report carries the waiting demand.
        self.load_metrics.waiting_bundles = waiting

    def _observe(self, timeline: Timeline) -> None:
        nodes = [n for n in self._live_nodes() if not n.is_head]
        live = {n.node_id: n.node_type for n in nodes}
        running = {n.node_id for n in nodes if n.state is NodeState.RUNNING}
        for node_id, node_type in live.items():
            if node_id not in self._known:
                timeline.events.append(Event(self.elapsed, "launch", node_type, node_id))
            if node_id in running and node_id not in self._running:
                timeline.events.append(Event(self.elapsed, "ready", node_type, node_id))
        for node_id, node_type in self._known.items():
            if node_id in live:
                continue
            failure = self.provider.launches.recent_failure(node_type)
            if node_id not in self._running and failure is not None:
                timeline.events.append(
                    Event(self.elapsed, "failed", node_type, node_id, failure.reason)
                )
            else:
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
    config["provider"] = {k: v for k, v in provider.items() if k in ray_defaults.RAY_PROVIDER_KEYS}
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
    config["cluster_name"] = name
    # The backend's node settings (and the files they name) mean nothing to the memory backend.
    types = config.get("available_node_types")
    if isinstance(types, dict):
        for entry in types.values():
            if isinstance(entry, dict):
                entry["node_config"] = {}
    config["file_mounts"] = {}
    # No command reaches a simulated node, so neither a real SSH user nor key is needed.
    config["auth"] = {"ssh_user": "simulation"}
    if "max_workers" not in config:
        raise ConfigError("max_workers", f"missing: `{ray_defaults.RAY_REQUIRED['max_workers']}`")
    # Ray's setup commands never run in a simulation.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        config.setdefault(key, [])
    return config
