"""Where the cluster's nodes are: private addresses from nodes, public ones from instances.

The platform no longer fills ``Node.details.publicIpAddress`` (yellowdog-ray commit 54e2599,
"Work around new absence of 'publicIpAddress' in Node"): a node's public address is its
instance's, found through the compute API by the node's ``details.instanceId`` among the
instances of its pool's compute requirement. One instance search answers for every node of a
pool, so addresses are learned per pool, in batches, and kept until the node goes away.

An instance is listed while it boots (``InstanceStatus.PENDING``), before it has addresses, and
a compute source may assign no public IP at all (``assignPublicIp`` defaults to false in the
SDK's source models). So "none yet" is not "none ever": a node's public address is looked for
again until its instance lists one, or runs with a private address and no public one (its
source assigns none: ``no_public``).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from yellowdog_client.model import Instance, InstanceSearch, InstanceStatus, Node, Task

from raydog_backends.yellowdog.api import Api, all_items, call
from raydog_backends.yellowdog.cluster import Clusters


@dataclass(frozen=True)
class Address:
    private: str | None
    public: str | None


@dataclass
class _Node:
    pool_id: str | None
    instance_id: str | None
    private: str | None
    public: str | None = None
    public_known: bool = False
    """Whether its instance settled it: it lists a public address, or runs without one."""


class Addresses:
    """Node and instance look-ups, cached; thread-safe."""

    def __init__(self, api: Api, clusters: Clusters) -> None:
        self.api = api
        self.clusters = clusters
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._worker_nodes: dict[str, str] = {}

    def node_of(self, task: Task) -> str | None:
        """The YellowDog node a task runs on, if known."""
        if task.nodeId is not None:
            return task.nodeId
        with self._lock:
            return self._worker_nodes.get(task.workerId or "")

    def known(self, node_id: str | None) -> Address | None:
        """A node's addresses, once its private one is known (its public one may follow)."""
        with self._lock:
            node = self._nodes.get(node_id or "")
        return Address(node.private, node.public) if node is not None else None

    def needs_node(self, node_id: str | None) -> bool:
        with self._lock:
            return node_id not in self._nodes

    def learn(self, nodes: Iterable[Node]) -> None:
        """Private addresses, instances and pools of nodes found by a search or a read."""
        with self._lock:
            for node in nodes:
                if node.id is None:
                    continue
                details = node.details
                previous = self._nodes.get(node.id)
                record = _Node(
                    node.workerPoolId,
                    details.instanceId if details else None,
                    details.privateIpAddress if details else None,
                )
                if previous is not None and previous.public_known:
                    record.public, record.public_known = previous.public, True
                self._nodes[node.id] = record
                for worker in node.workers or []:
                    if worker.id is not None:
                        self._worker_nodes[worker.id] = node.id

    def learn_public(self, node_ids: Collection[str]) -> None:
        """Public addresses of these nodes not yet known: one instance search per pool."""
        with self._lock:
            pools: dict[str, dict[str, str]] = {}
            for node_id in node_ids:
                node = self._nodes.get(node_id)
                if node is None or node.public_known or not node.pool_id or not node.instance_id:
                    continue
                pools.setdefault(node.pool_id, {})[node.instance_id] = node_id
        for pool_id, by_instance in pools.items():
            requirement_id = self.clusters.pool(pool_id).computeRequirementId
            if requirement_id is None:
                continue
            search = InstanceSearch(computeRequirementId=requirement_id)
            instances = call(
                "find",
                f"instances of compute requirement {requirement_id}",
                lambda search=search: all_items(  # type: ignore[misc]
                    self.api.sdk.compute_client.get_instances(search)
                ),
            )
            with self._lock:
                for instance in instances:
                    found = by_instance.get(instance.id.instanceId if instance.id else "")
                    node = self._nodes.get(found or "")
                    if node is not None and _settled(instance):
                        node.public, node.public_known = instance.publicIpAddress, True

    def no_public(self, node_id: str | None) -> bool:
        """Whether the node's instance runs without a public address (its source assigns
        none), rather than not having one yet."""
        with self._lock:
            node = self._nodes.get(node_id or "")
            return node is not None and node.public_known and node.public is None

    def public_known(self, node_id: str | None) -> bool:
        with self._lock:
            node = self._nodes.get(node_id or "")
            return node is not None and node.public_known

    def of_task(self, task: Task, public: bool) -> Address | None:
        """A running task's node addresses (with its public one, if ``public``): cached, else
        read. The head's launch waits on this; workers need the head's private address only."""
        node_id = self.node_of(task)
        if node_id is None or self.needs_node(node_id):
            client = self.api.sdk.worker_pool_client
            if node_id is not None:
                known: str = node_id
                node = call("read", f"node {node_id}", lambda: client.get_node_by_id(known))
            elif task.workerId is not None:
                worker = task.workerId
                node = call(
                    "read", f"node of worker {worker}", lambda: client.get_node_by_worker_id(worker)
                )
            else:
                return None
            self.learn([node])
            node_id = node.id
        if node_id is None or not public:
            return self.known(node_id)
        if not self.public_known(node_id):
            self.learn_public([node_id])
        return self.known(node_id) if self.public_known(node_id) else None

    def keep_only(self, node_ids: Collection[str]) -> None:
        """Keep the caches as small as the cluster: only nodes that live tasks run on."""
        with self._lock:
            self._nodes = {n: a for n, a in self._nodes.items() if n in node_ids}
            self._worker_nodes = {w: n for w, n in self._worker_nodes.items() if n in node_ids}

    def clear(self) -> None:
        with self._lock:
            self._nodes.clear()
            self._worker_nodes.clear()


def _settled(instance: Instance) -> bool:
    """Whether an instance's public address is final: it lists one, or it runs (it has its
    private address) without one. A ``PENDING`` instance has no addresses yet."""
    if instance.publicIpAddress:
        return True
    return instance.status is InstanceStatus.RUNNING and bool(instance.privateIpAddress)
