"""The ``memory`` compute backend: simulated nodes in this process.

Nodes get distinct internal (10.x) and external (100.64.x) addresses and turn from pending to
running after ``launch_delay`` seconds. Backends made for the same cluster name share nodes, as
clients of one cloud account would. Tests reach a cluster through ``MemoryComputeBackend.cluster``
to fail launches (at once, or later: ``make_unavailable``) or lose running nodes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import ClassVar

from raydog_core.clock import SYSTEM_CLOCK, Clock
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import (
    ClusterSpec,
    ComputeBackend,
    LaunchRequest,
    NodeInfo,
    NodeState,
)

_addresses = itertools.count(1)


def _address(prefix: str, number: int) -> str:
    return f"{prefix}.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"


@dataclass
class SimulatedNode:
    node_id: str
    node_type: str
    is_head: bool
    ready_at: float
    internal_ip: str
    external_ip: str
    launch_config: str = ""
    lost: str = ""
    fails: str = ""
    """Why the platform will end this node when its launch delay is over, instead of running."""
    last_info: NodeInfo | None = field(default=None, repr=False, compare=False)

    def info(self, now: float) -> NodeInfo:
        """Made again only when the node's state changes: describing 10,000 nodes that did not
        change allocates nothing per node (a tick's cost is then the provider's own)."""
        if self.fails and not self.lost and now >= self.ready_at:
            self.lost = self.fails
        pending = not self.lost and now < self.ready_at
        if self.lost:
            state = NodeState.TERMINATED
        else:
            state = NodeState.PENDING if pending else NodeState.RUNNING
        if self.last_info is not None and self.last_info.state is state:
            return self.last_info
        self.last_info = NodeInfo(
            self.node_id,
            self.node_type,
            self.is_head,
            state,
            None if pending else self.internal_ip,
            None if pending else self.external_ip,
            self.lost,
            self.launch_config,
        )
        return self.last_info


@dataclass
class SimulatedCluster:
    """One cluster's nodes; the handle tests use to make things go wrong."""

    name: str
    nodes: dict[str, SimulatedNode] = field(default_factory=dict)
    launch_failures: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    launches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next_launch(self, reason: str = "simulated capacity shortage") -> None:
        with self.lock:
            self.launch_failures.append(reason)

    def make_unavailable(self, node_type: str, reason: str) -> None:
        """The platform takes launches of ``node_type`` and ends each node before it runs (a pool
        that cannot provision), as ``reason``."""
        with self.lock:
            self.unavailable[node_type] = reason

    def lose(self, node_id: str, reason: str = "node lost") -> None:
        """The platform loses a node (spot reclaim, hardware failure): it reports terminated."""
        with self.lock:
            self.nodes[node_id].lost = reason

    def live_nodes(self, clock: Clock = SYSTEM_CLOCK) -> list[NodeInfo]:
        now = clock.now()
        with self.lock:
            infos = [node.info(now) for node in self.nodes.values()]
        return [info for info in infos if info.state is not NodeState.TERMINATED]


class MemoryComputeBackend(ComputeBackend):
    """Nodes live in a registry shared by every instance made for one cluster name; each
    instance sees them in the time of its ``ClusterSpec``'s clock (a simulation gives its own)."""

    _clusters: ClassVar[dict[str, SimulatedCluster]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, spec: ClusterSpec, launch_delay: float = 0.0) -> None:
        """Options:

        - ``launch_delay``: seconds from launch until a node runs (the head's launch waits; at
          most a day).
        """
        super().__init__(spec)
        if not 0 <= launch_delay <= 86_400:
            raise ConfigError(
                "launch_delay",
                f"must be >= 0 and at most 86400 seconds (a day), got {launch_delay!r}",
            )
        self.launch_delay = float(launch_delay)
        self.clock = spec.clock
        self._cluster = self.cluster(spec.cluster_name)

    @classmethod
    def cluster(cls, name: str) -> SimulatedCluster:
        with cls._registry_lock:
            return cls._clusters.setdefault(name, SimulatedCluster(name))

    @classmethod
    def forget(cls, name: str) -> None:
        with cls._registry_lock:
            cls._clusters.pop(name, None)

    def launch(self, request: LaunchRequest) -> list[str]:
        cluster = self._cluster
        with cluster.lock:
            if cluster.launch_failures:
                reason = cluster.launch_failures.pop(0)
                raise BackendError("launch", f"{request.count} {request.node_type} node(s)", reason)
            cluster.launches += 1
            ready_at = self.clock.now() + self.launch_delay
            kind = "head" if request.is_head else request.node_type
            created = []
            for _ in range(request.count):
                number = next(_addresses)
                node_id = f"{cluster.name}-{kind}-{number}"
                cluster.nodes[node_id] = SimulatedNode(
                    node_id,
                    request.node_type,
                    request.is_head,
                    ready_at,
                    _address("10", number),
                    _address("100.64", number),
                    request.launch_config,
                    fails=cluster.unavailable.get(request.node_type, ""),
                )
                created.append(node_id)
        if request.is_head and self.launch_delay:
            self.clock.sleep(max(0.0, ready_at - self.clock.now()))
        return created

    def describe(self) -> list[NodeInfo]:
        """A lost node is reported terminated until ``terminate`` forgets it."""
        now = self.clock.now()
        with self._cluster.lock:
            return [node.info(now) for node in self._cluster.nodes.values()]

    def terminate(self, node_ids: Collection[str]) -> None:
        with self._cluster.lock:
            for node_id in node_ids:
                self._cluster.nodes.pop(node_id, None)

    def shutdown(self) -> None:
        with self._cluster.lock:
            self._cluster.nodes.clear()

    def lose(self, node_id: str, reason: str = "node lost") -> None:
        """The platform loses a node; what a simulation uses to see Ray replace it."""
        self._cluster.lose(node_id, reason)

    def make_unavailable(self, node_type: str, reason: str) -> None:
        """The platform ends every launch of ``node_type`` before it runs (``raydog simulate
        --unavailable``)."""
        self._cluster.make_unavailable(node_type, reason)
