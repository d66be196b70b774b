"""Nodes: the ``/workerPools/nodes`` API, and a node's life from boot to its end.

A node boots on an instance of its pool's compute requirement (listed ``PENDING``, without
addresses, until ``address_delay`` after its agent registered), its agent registers
``boot_delay`` later and takes tasks at once, its setup finishes ``setup_delay`` after that
(see ``processes``). It ends when its pool shrinks or
shuts down, when it is idle for the pool's ``idleNodeShutdown``, when it is lost, or when its
compute requirement is terminated; its instance is terminated with it.
"""

from __future__ import annotations

import itertools
import logging
import uuid

from yellowdog_client.model import (
    InstanceId,
    InstanceStatus,
    Node,
    NodeDetails,
    NodeStatus,
    SimulatorInstance,
    Slice,
    TaskStatus,
    Worker,
    WorkerStatus,
)

from raydog_backends.yellowdog_emulator.processes import NodeProcesses
from raydog_backends.yellowdog_emulator.records import (
    ACCOUNT,
    Account,
    ApiError,
    NodeRecord,
    PoolRecord,
    Query,
    many,
    new_id,
    now_utc,
    one,
    page,
    seconds,
)
from raydog_backends.yellowdog_emulator.work import Work

logger = logging.getLogger(__name__)

SOURCE_ID = f"ydid:compsrc:{ACCOUNT}:emulated"


class Nodes:
    """Nodes and their instances. Callers hold ``account.lock``."""

    def __init__(self, account: Account, processes: NodeProcesses, work: Work) -> None:
        self.account = account
        self.processes = processes
        self.work = work
        self._numbers = itertools.count(1)
        self.hidden: dict[str | None, int] = {}
        """Node ids (None: whichever comes first) left out of the next node searches."""
        self.searches_with_a_node_left_out = 0
        """So that a test knows the search it arranged happened."""

    # --- the API -------------------------------------------------------------------------

    def find_nodes(self, query: Query) -> Slice[Node]:
        pool_id, tag = one(query, "workerPoolId"), one(query, "workerTag")
        statuses = many(query, "statuses")
        instance_id, group_id = one(query, "instanceId"), one(query, "workerTaskGroupId")
        pools = self.account.pools
        found = [
            n
            for n in self.account.nodes.values()
            if n.registered
            and (pool_id is None or n.pool_id == pool_id)
            and (tag is None or pools[n.pool_id].properties.workerTag == tag)
            and (statuses is None or str(n.node.status) in statuses)
            and (instance_id is None or n.instance_id == instance_id)
            and (group_id is None or self._group_of(n) == group_id)
        ]
        return page([n.node for n in self._glitch(found)], query, self.account.config.slice_size)

    def _glitch(self, found: list[NodeRecord]) -> list[NodeRecord]:
        """Leave out a node the platform's search missed this time (an inconsistent result)."""
        for node in found:
            key = node.id if node.id in self.hidden else None
            if self.hidden.get(key, 0) > 0:
                self.hidden[key] -= 1
                if not self.hidden[key]:
                    del self.hidden[key]
                self.searches_with_a_node_left_out += 1
                logger.info("emulator: node %s left out of a node search", node.id)
                return [n for n in found if n is not node]
        return found

    def hide_from_searches(self, node_id: str | None, times: int) -> None:
        self.hidden[node_id] = self.hidden.get(node_id, 0) + times

    def _group_of(self, node: NodeRecord) -> str | None:
        task = self.account.tasks.get(node.task_id or "")
        return task.group_id if task is not None else None

    def get_node(self, node_id: str) -> Node:
        return self.account.node(node_id).node

    def node_of_worker(self, worker_id: str) -> Node:
        for node in self.account.nodes.values():
            if any(w.id == worker_id for w in node.node.workers or []):
                return node.node
        raise ApiError(404, f"no worker {worker_id}")

    def shutdown_node(self, node_id: str) -> Node:
        node = self.account.node(node_id)
        if node.alive:
            self.end(node, NodeStatus.TERMINATED, "node shut down")
            _shrink(self.account.pools[node.pool_id])
        return node.node

    def lose_node(self, node_id: str, fail_tasks: bool | None = None) -> Node:
        """The platform loses contact with a node (a reclaimed spot instance, a crash)."""
        node = self.account.node(node_id)
        if node.alive:
            fail = (
                self.account.config.fail_tasks_of_lost_nodes if fail_tasks is None else fail_tasks
            )
            self.end(node, NodeStatus.LOST, "node lost", fail_tasks=fail)
            _shrink(self.account.pools[node.pool_id])
        return node.node

    def lose_node_of_task(self, task_id: str, fail_tasks: bool | None = None) -> Node:
        node_id = self.account.task(task_id).task.nodeId
        if node_id is None:
            raise ApiError(400, f"task {task_id} is not on a node")
        return self.lose_node(node_id, fail_tasks)

    # --- a node's life -------------------------------------------------------------------

    def boot(self, pool: PoolRecord, now: float) -> NodeRecord:
        """A new instance of the pool's compute requirement, its agent not yet registered."""
        config = self.account.config
        number = next(self._numbers)
        node = NodeRecord(
            Node(id=new_id("node"), workerPoolId=pool.id, workers=[]),
            pool.id,
            ready_at=now + config.boot_delay,
            instance_id=f"i-{uuid.uuid4().hex[:17]}",
            private_ip=f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}",
            public_ip=config.public_ip or f"100.64.{number // 256 % 256}.{number % 256}",
        )
        if config.loopback_ips:
            node.private_ip = self.processes.lease_address(node)
            node.public_ip = config.public_ip or "127.0.0.1"
        if pool.usage.templateId in config.no_public_ip_templates:
            node.public_ip = None
        compute = self.account.compute_of(pool)
        compute.instances[node.instance_id] = SimulatorInstance(
            id=InstanceId(sourceId=SOURCE_ID, instanceId=node.instance_id),
            createdTime=now_utc(),
            instanceType="emulated",
            region="emulated",
            imageId=pool.usage.imagesId,
            hostname=f"node-{number}",
            # Listed while it boots, before it has addresses (InstanceStatus.PENDING, SDK).
            status=InstanceStatus.PENDING,
            statusChangedTime=now_utc(),
        )
        self.account.nodes[node.id] = node
        return node

    def advance(self, node: NodeRecord, now: float) -> None:
        if not node.alive or node.orphaned:
            return
        pool = self.account.pools[node.pool_id]
        if not node.registered and now >= node.ready_at:
            self._register(node, pool, now)
        if node.registered and now >= node.addressed_at:
            self._address(node, pool)
        if node.registered and not node.setup_done and now >= node.setup_done_at:
            self.processes.finish_setup(node, pool.usage.userData)
        if node.registered and node.task_id is None and not node.queue:
            timeout = seconds(pool.properties.idleNodeShutdown)
            scale = self.account.config.time_scale
            floor = pool.properties.minNodes or 0
            idle = timeout is not None and now - node.idle_since >= timeout * scale
            if idle and len(self.account.pool_nodes(pool)) > floor:
                logger.info("emulator: node %s shuts down, idle", node.id)
                self.end(node, NodeStatus.TERMINATED, "idle node shutdown")
                _shrink(pool)

    def _address(self, node: NodeRecord, pool: PoolRecord) -> None:
        """The instance runs and lists its addresses: its public one only if its source
        assigns one (``assignPublicIp``, SDK source models; ``no_public_ip_templates``)."""
        instance = self.account.compute_of(pool).instances[node.instance_id]
        if instance.status is InstanceStatus.PENDING:
            instance.status = InstanceStatus.RUNNING
            instance.statusChangedTime = now_utc()
            instance.privateIpAddress = node.private_ip
            instance.publicIpAddress = node.public_ip

    def _register(self, node: NodeRecord, pool: PoolRecord, now: float) -> None:
        config = self.account.config
        instance = self.account.compute_of(pool).instances[node.instance_id]
        node.node.details = NodeDetails(
            instanceId=node.instance_id,
            provider=None,
            region="emulated",
            sourceName=pool.usage.templateId,
            instanceType="emulated",
            hostname=instance.hostname,
            privateIpAddress=node.private_ip,
            # Absent on the platform since about October 2025 (yellowdog-ray 54e2599): the
            # public address is the instance's, from the compute API.
            publicIpAddress=None,
            vcpus=1.0,
            ram=1.0,
            supportedTaskTypes=None,
            workerTag=pool.properties.workerTag,
        )
        stamp = now_utc()
        node.node.status = NodeStatus.RUNNING
        node.node.registeredTime = node.node.statusChangedTime = stamp
        worker_id = node.id.replace(":node:", ":wrkr:") + ":1"
        node.node.workers = [
            Worker(id=worker_id, status=WorkerStatus.STARTING, registeredTime=stamp)
        ]
        node.node.agentVersion = "emulated"
        node.registered = True
        node.idle_since = now
        node.addressed_at = now + config.address_delay
        # The agent takes tasks at once; the setup goes on (YellowDog agent installer README).
        node.setup_done_at = now + config.setup_delay
        if config.setup_delay <= 0:
            self.processes.finish_setup(node, pool.usage.userData)

    def end(
        self, node: NodeRecord, status: NodeStatus, reason: str, fail_tasks: bool = True
    ) -> None:
        """The node and its instance stop; its running and queued tasks fail with ``reason``."""
        node.node.status = status
        node.node.statusChangedTime = node.node.deregisteredTime = now_utc()
        worker_status = WorkerStatus.LOST if status is NodeStatus.LOST else WorkerStatus.SHUTDOWN
        for worker in node.node.workers or []:
            worker.status = worker_status
        if fail_tasks:
            for task_id in [*node.queue, *([node.task_id] if node.task_id else [])]:
                task = self.account.tasks[task_id]
                if not task.status.finished:
                    self.work.finish(task, TaskStatus.FAILED, reason)
        pool = self.account.pools[node.pool_id]
        instance = self.account.compute_of(pool).instances.get(node.instance_id)
        if instance is not None:
            # A lost node's instance: nobody knows (InstanceStatus.UNKNOWN).
            lost = status is NodeStatus.LOST
            instance.status = InstanceStatus.UNKNOWN if lost else InstanceStatus.TERMINATED
            instance.statusChangedTime = now_utc()
        self.processes.release_address(node)


def _shrink(pool: PoolRecord) -> None:
    pool.pool.expectedNodeCount = max(0, pool.pool.expectedNodeCount - 1)
