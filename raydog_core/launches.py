"""What became of the launches a provider made.

A launch can fail after ``create_node`` returned: the platform takes it, then cannot provision
the node (a quota, a wrong image), or the node's setup fails before its Ray joins. Such a late
failure is held against its node type for ``provider.launch_failure_memory`` seconds, so that
``create_node`` raises Ray's ``NodeLaunchException`` and Ray tries another type. The same
bookkeeping times each launch: to running, and (on the head, where Ray's monitor says which
nodes joined) to Ray joined; a worker still joining is "setting-up" for Ray.

The provider calls ``launched`` from ``create_node`` and ``observe`` once per snapshot; Ray's
threads ask ``recent_failure`` and ``joining`` at any time.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from raydog_core.clock import Clock
from raydog_core.interfaces import NodeInfo, NodeState
from raydog_core.metrics import ProviderMetrics, ray_node_ips
from raydog_core.why import Chain, chain_of

logger = logging.getLogger(__name__)

# How long a node launched by this process is kept as pending while describe() does not list it
# yet (a describe that started before the launch returned cannot know it).
LAUNCH_GRACE_SECONDS = 120.0


@dataclasses.dataclass(frozen=True)
class LaunchFailure:
    """A node type's latest launch that ended before its node ran: when, the platform's
    reason, and how far the node got (``raydog status --why``)."""

    node_type: str
    at: float
    reason: str
    chain: Chain | None = None


class Launches:
    """The launches of one provider: their late failures and their figures. Thread-safe."""

    def __init__(
        self,
        metrics: ProviderMetrics,
        clock: Clock,
        failure_memory: float,
        tags_of: Callable[[str], Mapping[str, str] | None],
        ray_monitor: Any | None,
    ) -> None:
        """``ray_monitor``: what holds Ray's autoscaler on the head (``find_ray_autoscaler``),
        which says which nodes joined Ray; None elsewhere."""
        self._metrics = metrics
        self._clock = clock
        self._failure_memory = failure_memory
        self._tags_of = tags_of
        self._ray_monitor = ray_monitor
        self._lock = threading.Lock()
        self._launched_at: dict[str, float] = {}
        # Launches not yet seen running, and not yet seen in Ray: node id -> (type, monotonic
        # launch time). The launch-to-running and launch-to-Ray-joined histograms.
        self._awaiting_running: dict[str, tuple[str, float]] = {}
        self._awaiting_ray: dict[str, tuple[str, float]] = {}
        self._late_failures: dict[str, LaunchFailure] = {}

    def launched(self, node_ids: Collection[str], node_type: str, is_head: bool) -> None:
        now = time.monotonic()
        with self._lock:
            for node_id in node_ids:
                self._launched_at[node_id] = now
                self._awaiting_running[node_id] = (node_type, now)
                if not is_head and self._ray_monitor is not None:
                    self._awaiting_ray[node_id] = (node_type, now)

    def not_yet_described(self, described: Collection[str], started: float) -> set[str]:
        """This process's launches that a describe started at ``started`` (monotonic) did not
        list, within their grace: the provider keeps them as they were. A launch listed, or
        past its grace, needs no keeping any more."""
        with self._lock:
            waiting = set()
            for node_id, launched in list(self._launched_at.items()):
                if node_id in described or started - launched > LAUNCH_GRACE_SECONDS:
                    del self._launched_at[node_id]
                else:
                    waiting.add(node_id)
            return waiting

    def joining(self, node_id: str) -> bool:
        """Whether a worker launched here runs (or will) but its Ray has not joined yet."""
        return node_id in self._awaiting_ray

    def observe(
        self,
        previous: Mapping[str, NodeInfo],
        described: Mapping[str, NodeInfo],
        gone: Mapping[str, str],
    ) -> tuple[bool, list[str]]:
        """One snapshot: note late failures, time the launches that ran or joined Ray.
        Whether the late failures changed, and the nodes whose Ray joined just now."""
        with self._lock:
            changed = self._note_failures(previous, described, gone)
            joined = self._time_launches(described, gone)
        return changed, joined

    def recent_failure(self, node_type: str) -> LaunchFailure | None:
        """The node type's late launch failure while it counts: within the failure memory and
        no node of the type has run since."""
        with self._lock:
            failure = self._late_failures.get(node_type)
            if failure is None:
                return None
            if self._clock.now() - failure.at < self._failure_memory:
                return failure
            del self._late_failures[node_type]
            return None

    def late_failures(self) -> list[LaunchFailure]:
        """Every node type's late launch failure that still counts."""
        with self._lock:
            types = list(self._late_failures)
        return [f for f in map(self.recent_failure, types) if f is not None]

    def failure_chains(self) -> list[Chain]:
        """How far each late failure's node got, for the head's tags."""
        with self._lock:
            return [f.chain for f in self._late_failures.values() if f.chain is not None]

    def _note_failures(
        self,
        previous: Mapping[str, NodeInfo],
        described: Mapping[str, NodeInfo],
        gone: Mapping[str, str],
    ) -> bool:
        """A worker that ended while pending, or (on the head, under Ray's autoscaler) before
        its Ray joined, is its type's late launch failure; a worker running clears its type's
        (the platform launches that type again). Holds ``_lock``."""
        now = self._clock.now()
        failures = dict(self._late_failures)
        for node_id, why in gone.items():
            before = previous.get(node_id) or described.get(node_id)
            if before is None or before.is_head:
                continue
            if before.state is not NodeState.PENDING and node_id not in self._awaiting_ray:
                continue
            # How far it got, as described last (its steps) and with the reason it ended.
            last = described.get(node_id, before)
            ended = dataclasses.replace(last, state=NodeState.TERMINATED, detail=why)
            chain = chain_of(node_id, ended, self._tags_of(node_id) or {}, None)
            chain = dataclasses.replace(chain, ended=time.time())
            self._late_failures[before.node_type] = LaunchFailure(before.node_type, now, why, chain)
            self._metrics.count(
                "raydog_launch_failures_total", node_type=before.node_type, reason=why
            )
            logger.warning(
                "RayDog: a %s launch failed after create_node returned (%s); the next %s "
                "launches fail for up to %.0f s so Ray can try another node type",
                before.node_type,
                why,
                before.node_type,
                self._failure_memory,
            )
        if self._late_failures:
            for info in described.values():
                if info.state is NodeState.RUNNING:
                    self._late_failures.pop(info.node_type, None)
        return failures != self._late_failures

    def _time_launches(self, described: Mapping[str, NodeInfo], gone: Collection[str]) -> list[str]:
        """Launch to running, and launch to Ray joined (Ray's monitor reports the node's
        address). Holds ``_lock``. The nodes that joined Ray just now."""
        now = time.monotonic()
        in_ray = ray_node_ips(self._ray_monitor) if self._awaiting_ray else ()
        joined = []
        for info in described.values():
            if info.state is not NodeState.RUNNING:
                continue
            launched = self._awaiting_running.pop(info.node_id, None)
            if launched is not None:
                self._metrics.observe(
                    "raydog_launch_to_running_seconds", now - launched[1], node_type=launched[0]
                )
            if info.internal_ip in in_ray:
                launched = self._awaiting_ray.pop(info.node_id, None)
                if launched is not None:
                    joined.append(info.node_id)
                    self._metrics.observe(
                        "raydog_launch_to_ray_joined_seconds",
                        now - launched[1],
                        node_type=launched[0],
                    )
        for node_id in gone:
            self._awaiting_running.pop(node_id, None)
            self._awaiting_ray.pop(node_id, None)
        return joined
