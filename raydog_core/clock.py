"""Time as the core hands it to compute backends (``ClusterSpec.clock``): the machine's, or a
simulation's.

A simulation runs Ray's autoscaler, which builds providers of its own from the config (Ray passes
a provider nothing but its config section and the cluster name), so the simulated time is found
by cluster name: ``simulate(name, clock)`` until ``forget(name)``, ``of_cluster(name)`` when a
provider builds its plugins.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Seconds on a monotonic scale, and a way to wait; a simulation moves its own."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class SimulatedClock:
    """Time that moves only when told to: ``advance``, or a ``sleep`` that returns at once."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self._now += seconds


_clusters: dict[str, Clock] = {}
_lock = threading.Lock()


def of_cluster(cluster_name: str) -> Clock:
    """The clock a cluster's plugins live in: a simulation's while one runs, else the machine's."""
    with _lock:
        return _clusters.get(cluster_name, SYSTEM_CLOCK)


def simulate(cluster_name: str, clock: Clock) -> None:
    """Plugins built for ``cluster_name`` from now on live in ``clock`` (until ``forget``)."""
    with _lock:
        _clusters[cluster_name] = clock


def forget(cluster_name: str) -> None:
    with _lock:
        _clusters.pop(cluster_name, None)
