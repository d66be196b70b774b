"""The provider's own figures, kept as it runs, rendered in the Prometheus text format Ray's
metrics use (so one Prometheus scrape config serves both)."""

from __future__ import annotations

import bisect
import contextlib
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Seconds; launch-to-running on a cloud platform spans from seconds to tens of minutes.
LAUNCH_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
TICK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)

Labels = tuple[tuple[str, str], ...]


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (
        (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in labels
    )
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: Labels) -> Iterable[str]:
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            cumulative += count
            yield f"{name}_bucket{_label_text((*labels, ('le', repr(bound))))} {cumulative}"
        yield f"{name}_bucket{_label_text((*labels, ('le', '+Inf')))} {self.count}"
        yield f"{name}_sum{_label_text(labels)} {self.total}"
        yield f"{name}_count{_label_text(labels)} {self.count}"


class ProviderMetrics:
    """Counters and histograms the provider feeds; ``render`` is the Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._read_at_render: dict[str, Callable[[], float]] = {}

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def observe(
        self, name: str, value: float, buckets: tuple[float, ...] = LAUNCH_BUCKETS, **labels: str
    ) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._histograms.setdefault(name, {})
            series.setdefault(key, _Histogram(buckets)).observe(value)

    def set_total(self, name: str, value: float) -> None:
        """A counter kept elsewhere (the tag cache's), copied in at each tick."""
        with self._lock:
            self._counters[name] = {(): value}

    def gauge_of(self, name: str, read: Callable[[], float]) -> None:
        """A gauge read when the figures are rendered (scraped), not at the last tick: what
        the tag cache holds now, while ticks may be seconds apart."""
        with self._lock:
            self._read_at_render[name] = read

    def set_gauge(self, name: str, values: Mapping[Labels, float]) -> None:
        """Replace a gauge's every series (a series that left is no longer reported)."""
        with self._lock:
            self._gauges[name] = dict(values)

    @contextlib.contextmanager
    def compute_call(self, kind: str) -> Iterator[None]:
        """Count one call the core makes to its compute backend (``kind``: ``launch``,
        ``describe``, ``terminate``, ``shutdown``) with its outcome, ``ok`` or the error's
        class. Counted at this one boundary, every backend gets the figure without code of
        its own."""
        try:
            yield
        except Exception as exc:
            self.count("raydog_compute_api_calls_total", kind=kind, outcome=type(exc).__name__)
            raise
        self.count("raydog_compute_api_calls_total", kind=kind, outcome="ok")

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            readers = dict(self._read_at_render)
        read: dict[str, dict[Labels, float]] = {
            name: {(): float(reader())} for name, reader in readers.items()
        }
        with self._lock:
            for name, series in sorted(self._counters.items()):
                out.append(f"# TYPE {name} counter")
                out.extend(f"{name}{_label_text(k)} {v}" for k, v in sorted(series.items()))
            for name, gauge in sorted({**self._gauges, **read}.items()):
                out.append(f"# TYPE {name} gauge")
                out.extend(f"{name}{_label_text(k)} {v}" for k, v in sorted(gauge.items()))
            for name, hists in sorted(self._histograms.items()):
                out.append(f"# TYPE {name} histogram")
                for key, hist in sorted(hists.items()):
                    out.extend(hist.lines(name, key))
        return "\n".join(out) + "\n"


def find_ray_autoscaler(depth: int = 12) -> Any | None:
    """What holds Ray's autoscaler building the provider that calls this, or None (``ray up``
    on a laptop, ``raydog status``, tests, autoscaler v2).

    Ray's ``Monitor`` on the head holds ``prom_metrics`` and ``load_metrics`` (the very one it
    hands its ``StandardAutoscaler``, whose ``reset`` builds the provider; Ray 2.60 sets the
    autoscaler's own ``load_metrics`` only after that): the ``self`` of a caller that has both
    (``ray/autoscaler/_private/monitor.py``)."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if hasattr(owner, "prom_metrics") and hasattr(owner, "load_metrics"):
            return owner
        frame = frame.f_back
    return None


def serve_through_ray_autoscaler(metrics: ProviderMetrics, autoscaler: Any) -> bool:
    """Add the figures to the registry Ray's autoscaler serves on its metrics port
    (``AUTOSCALER_METRIC_PORT``, listed in Ray's Prometheus service-discovery file), so a
    Prometheus set up by Ray's instructions scrapes them with nothing more to open.
    False when the autoscaler has no such registry or prometheus_client is missing."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
        from prometheus_client.registry import Collector, CollectorRegistry
    except ImportError:
        return False
    registry = getattr(getattr(autoscaler, "prom_metrics", None), "registry", None)
    if not isinstance(registry, CollectorRegistry):
        return False

    class _Figures(Collector):
        def collect(self) -> Iterable[Metric]:
            return text_string_to_metric_families(metrics.render())

    registry.register(_Figures())
    return True


def ray_node_ips(autoscaler: Any) -> Collection[str]:
    """The IPs of the Ray nodes the head's GCS reports, as Ray's monitor hands them to the
    autoscaler before each update (``LoadMetrics.node_id_by_ip``, filled from the GCS's
    resource reports only): a node whose IP is there has joined Ray."""
    found = getattr(getattr(autoscaler, "load_metrics", None), "node_id_by_ip", None)
    return set(found) if isinstance(found, Mapping) else set()
