"""Provisioned worker pools: the ``/workerPools/`` API and a pool's life.

Each pool is provisioned from a compute requirement template and gets a compute requirement
of its own (``ProvisionedWorkerPool.computeRequirementId``, SDK model), whose instances are its
nodes. A pool shutdown is not immediate, and nodes still booting never hear of it: only the
termination of the compute requirement stops them (yellowdog-ray commit 0794285).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from yellowdog_client.common.json import Json
from yellowdog_client.model import (
    ComputeRequirement,
    ComputeRequirementStatus,
    ComputeRequirementTemplateUsage,
    ComputeSourceStatus,
    NamespacePolicy,
    NodeStatus,
    ProvisionedWorkerPool,
    ProvisionedWorkerPoolProperties,
    SimulatorComputeSource,
    SingleSourceProvisionStrategy,
    Slice,
    WorkerPoolStatus,
    WorkerPoolSummary,
)

from raydog_backends.yellowdog_emulator.nodes import Nodes
from raydog_backends.yellowdog_emulator.records import (
    MAX_NODES_PER_POOL,
    Account,
    ApiError,
    ComputeRecord,
    NodeRecord,
    PoolRecord,
    Query,
    check_name,
    many,
    new_id,
    now_utc,
    one,
    page,
    seconds,
)

logger = logging.getLogger(__name__)


class Pools:
    """Worker pools and their compute requirements' lifecycle. Callers hold ``account.lock``."""

    def __init__(self, account: Account, nodes: Nodes) -> None:
        self.account = account
        self.nodes = nodes

    # --- the API -------------------------------------------------------------------------

    def provision_pool(self, body: Mapping[str, Any]) -> ProvisionedWorkerPool:
        try:
            usage = Json.load(body["requirementTemplateUsage"], ComputeRequirementTemplateUsage)
            properties = Json.load(
                body.get("provisionedProperties") or {}, ProvisionedWorkerPoolProperties
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, f"malformed provisioning request: {exc}") from None
        templates = self.account.config.templates
        if templates is not None and usage.templateId not in templates:
            raise ApiError(404, f"no compute requirement template {usage.templateId!r}")
        namespace = check_name("namespace", usage.requirementNamespace or "default")
        name = check_name("worker pool name", usage.requirementName)
        if properties.workerTag is not None:
            check_name("worker tag", properties.workerTag)
        if usage.requirementTag is not None:
            check_name("compute requirement tag", usage.requirementTag)
        for key, value in (usage.instanceTags or {}).items():
            check_name("instance tag key", key)  # stricter: the rule names "Tags" only
            check_name(f"instance tag {key}", value)
        if any(
            p.live and p.pool.namespace == namespace and p.pool.name == name
            for p in self.account.pools.values()
        ):
            raise ApiError(400, f"worker pool {namespace}/{name} already exists")
        max_nodes = self._max_nodes(name, usage.targetInstanceCount, properties)
        pool = ProvisionedWorkerPool(
            id=new_id("wrkrpool"),
            name=name,
            namespace=namespace,
            createdTime=now_utc(),
            status=WorkerPoolStatus.PENDING,
            statusChangedTime=now_utc(),
            expectedNodeCount=usage.targetInstanceCount,
            awaitingNodes=usage.targetInstanceCount > 0,
            properties=properties,
            computeRequirementId=new_id("compreq"),
        )
        assert pool.id is not None and pool.computeRequirementId is not None
        active_at = time.monotonic() + self.account.config.provision_delay
        self.account.pools[pool.id] = PoolRecord(pool, usage, active_at, max_nodes)
        compute = _compute_requirement(pool, usage)
        self.account.computes[compute.id] = compute
        self.account.schedule_auto_shutdown(compute, usage.autoShutdown)
        return pool

    def _max_nodes(
        self, name: str, target: int, properties: ProvisionedWorkerPoolProperties
    ) -> int:
        """The pool's limit, refused as the platform refuses it when out of range."""
        if target < 0:
            raise ApiError(400, "targetInstanceCount must not be negative")
        limit = properties.maxNodes
        if limit is None:
            # The platform imposes a limit of its own when maxNodes is missing (yellowdog-ray
            # autoscaler.py, MAX_NODES_IN_WORKER_POOL); its value is unknown, so the strictest
            # that still lets the pool reach its initial size.
            return max(1, target)
        if not 1 <= limit <= MAX_NODES_PER_POOL:
            raise ApiError(
                400,
                f"worker pool {name}: maxNodes {limit} is outside 1..{MAX_NODES_PER_POOL:,} "
                "(the platform's limit of nodes per worker pool)",
            )
        if (properties.minNodes or 0) > limit:
            raise ApiError(400, f"worker pool {name}: minNodes is above maxNodes {limit}")
        if target > limit:
            raise ApiError(400, f"worker pool {name}: {target} nodes is above maxNodes {limit}")
        return limit

    def resize_pool(self, pool_id: str, size: int) -> ProvisionedWorkerPool:
        pool = self.account.pool(pool_id)
        if not pool.live:
            raise ApiError(400, f"worker pool {pool.pool.name} is {pool.pool.status}")
        if size < 0:
            raise ApiError(400, f"size {size} is negative")
        if size > pool.max_nodes:
            given = pool.properties.maxNodes is not None
            why = "its maxNodes" if given else "the platform's limit for a pool without maxNodes"
            raise ApiError(
                400,
                f"worker pool {pool.pool.name} cannot grow to {size} nodes: "
                f"{why} is {pool.max_nodes}",
            )
        pool.pool.expectedNodeCount = size
        nodes = self.account.pool_nodes(pool)
        # Idle nodes go first, then booting ones, busy ones last.
        order = sorted(nodes, key=lambda n: (n.task_id is not None, n.registered))
        for node in order[: max(0, len(nodes) - size)]:
            self.nodes.end(node, NodeStatus.TERMINATED, "its worker pool shrank")
        return pool.pool

    def get_pool(self, pool_id: str) -> ProvisionedWorkerPool:
        return self.account.pool(pool_id).pool

    def get_pool_by_name(self, namespace: str, name: str) -> ProvisionedWorkerPool:
        matching = [
            p
            for p in self.account.pools.values()
            if p.pool.namespace == namespace and p.pool.name == name
        ]
        if not matching:
            raise ApiError(404, f"no worker pool {namespace}/{name}")
        return matching[-1].pool

    def find_pools(self, query: Query) -> Slice[WorkerPoolSummary]:
        namespaces = many(query, "namespaces") or many(query, "namespace")
        name, statuses = one(query, "name"), many(query, "statuses")
        found = [
            self._summary(p)
            for p in self.account.pools.values()
            if (namespaces is None or p.pool.namespace in namespaces)
            and (name is None or p.pool.name == name)
            and (statuses is None or str(p.pool.status) in statuses)
        ]
        return page(found, query, self.account.config.slice_size)

    def _summary(self, pool: PoolRecord) -> WorkerPoolSummary:
        registered = [n for n in self.account.pool_nodes(pool) if n.registered]
        busy = sum(n.task_id is not None for n in registered)
        return WorkerPoolSummary(
            id=pool.pool.id,
            name=pool.pool.name,
            namespace=pool.pool.namespace,
            type=pool.pool.type,
            registeredNodeCount=len(registered),
            registeredWorkerCount=len(registered),
            claimedWorkerCount=busy,
            workingWorkerCount=busy,
            status=pool.pool.status,
            createdTime=pool.pool.createdTime,
            statusChangedTime=pool.pool.statusChangedTime,
            healthy=self.account.compute_of(pool).failure is None,
        )

    def shutdown_pool(self, pool_id: str) -> ProvisionedWorkerPool:
        """SHUTDOWN now; its registered nodes stop ``node_shutdown_delay`` later, and its nodes
        still booting never register and run on until the compute requirement is terminated
        (yellowdog-ray commit 0794285)."""
        pool = self.account.pool(pool_id)
        if not pool.live:
            return pool.pool
        _set_status(pool, WorkerPoolStatus.SHUTDOWN)
        pool.shutdown_at = time.monotonic() + self.account.config.node_shutdown_delay
        for node in self.account.pool_nodes(pool):
            node.orphaned = not node.registered
        self._advance_shutdown(pool, time.monotonic())
        return pool.pool

    # --- a pool's life -------------------------------------------------------------------

    def advance(self, pool: PoolRecord, now: float) -> None:
        if pool.pool.status is WorkerPoolStatus.SHUTDOWN:
            self._advance_shutdown(pool, now)
        if not pool.live or now < pool.active_at:
            return
        compute = self.account.compute_of(pool)
        nodes = self.account.pool_nodes(pool)
        target = self._autoscaled(pool, nodes)
        if target > len(nodes) and self._provisions(pool, compute):
            for _ in range(target - len(nodes)):
                nodes.append(self.nodes.boot(pool, now))
        pool.pool.expectedNodeCount = target
        compute.requirement.targetInstanceCount = target
        compute.requirement.expectedInstanceCount = target
        if nodes:
            _set_compute_status(compute, ComputeRequirementStatus.RUNNING)
        self._set_running_status(pool, nodes, now)

    def _autoscaled(self, pool: PoolRecord, nodes: list[NodeRecord]) -> int:
        """How many nodes the pool wants now: what it was asked for (its initial size, a
        resize) or, if more, one per task that runs or waits on it, between ``minNodes`` and
        its limit. "The platform automatically scales the pool up and down to meet Task demand,
        and shuts it down when idle" (yellowdog-cli README, "Worker Pools vs. Compute
        Requirements"); it shrinks through its idle node shutdown, never below ``minNodes``.
        Booting nodes count as meeting demand. A resize is obeyed as asked, whatever the
        demand: nodes it adds beyond the tasks (e.g. while idle nodes could take them) boot,
        idle, and cost until their idle shutdown (how the platform weighs a resize against
        demand is not published: obeying both is the stricter choice for a client)."""
        busy = sum(n.task_id is not None or bool(n.queue) for n in nodes)
        demand = busy + self.account.waiting_for(pool)
        wanted = min(max(demand, pool.properties.minNodes or 0), pool.max_nodes)
        if wanted > len(nodes):
            wanted = min(wanted, len(nodes) + self._room_in_namespace(pool))
        return max(pool.pool.expectedNodeCount, wanted)

    def _room_in_namespace(self, pool: PoolRecord) -> int:
        """How many more nodes the namespace's policy lets its pools scale to
        (``NamespacePolicy.autoscalingMaxNodes``); unlimited without a policy."""
        cap = self.account.config.namespace_policies.get(pool.pool.namespace or "")
        if cap is None:
            return MAX_NODES_PER_POOL
        used = sum(
            len(self.account.pool_nodes(p))
            for p in self.account.pools.values()
            if p.live and p.pool.namespace == pool.pool.namespace
        )
        return max(0, cap - used)

    def namespace_policy(self, namespace: str) -> NamespacePolicy:
        """``namespaces_client.get_namespace_policy``; a namespace without one is a 404 (what
        the platform answers then is not published: the stricter choice)."""
        cap = self.account.config.namespace_policies.get(namespace)
        if cap is None:
            raise ApiError(404, f"namespace {namespace} has no policy")
        return NamespacePolicy(namespace=namespace, autoscalingMaxNodes=cap)

    def _provisions(self, pool: PoolRecord, compute: ComputeRecord) -> bool:
        """Whether instances can be had from the template now. If not, the reason shows as the
        SDK models it: each source of the compute requirement ``ERRORED`` with the reason as
        its ``statusMessage`` ("The last requested action performed by YellowDog Compute with
        this compute source resulted in an error": ``ComputeSourceStatus``), ``healthy: false``
        on the requirement's and the pool's summaries; the requirement itself is not
        terminated (its status aggregates its instances': ``ComputeRequirementStatus``), and
        the pool keeps waiting, empty, until its idle shutdown or a client ends it."""
        failures = self.account.provisioning_failures
        reason = failures.get(pool.usage.templateId, failures.get(None))
        sources = compute.requirement.provisionStrategy.sources or []
        if reason is None:
            compute.failure = None
            for source in sources:
                source.status, source.statusMessage = ComputeSourceStatus.ACTIVE, None
            return True
        if compute.failure != reason:
            logger.info("emulator: provisioning %s fails: %s", pool.pool.name, reason)
        compute.failure = reason
        for source in sources:
            source.status, source.statusMessage = ComputeSourceStatus.ERRORED, reason
        _set_compute_status(compute, ComputeRequirementStatus.PROVISIONING)
        return False

    def _set_running_status(self, pool: PoolRecord, nodes: list[NodeRecord], now: float) -> None:
        busy = any(n.task_id is not None for n in nodes)
        booting = any(not n.registered for n in nodes)
        pool.pool.awaitingNodes = booting
        if busy:
            status = WorkerPoolStatus.RUNNING
        elif nodes and not booting:
            status = WorkerPoolStatus.IDLE
        elif nodes:
            status = WorkerPoolStatus.PENDING
        else:
            status = WorkerPoolStatus.EMPTY
        _set_status(pool, status)
        pool.idle_since = None if busy or booting else (pool.idle_since or now)
        timeout = seconds(pool.properties.idlePoolShutdown)
        idle = pool.idle_since is not None and timeout is not None
        if (
            idle
            and now - (pool.idle_since or now) >= (timeout or 0) * self.account.config.time_scale
        ):
            logger.info("emulator: worker pool %s shuts down, idle", pool.pool.name)
            self.shutdown_pool(pool.id)

    def _advance_shutdown(self, pool: PoolRecord, now: float) -> None:
        """Registered nodes stop once the delay is over; the pool and its compute requirement
        end when no instance is left."""
        if pool.shutdown_at is not None and now >= pool.shutdown_at:
            for node in self.account.pool_nodes(pool):
                if not node.orphaned:
                    self.nodes.end(node, NodeStatus.TERMINATED, "its worker pool shut down")
        if not self.account.pool_nodes(pool):
            self.terminate(self.account.compute_of(pool))

    def terminate(self, compute: ComputeRecord) -> None:
        """Every instance of the compute requirement stops, registered or not; its pool ends."""
        pool = self.account.pools[compute.pool_id]
        for node in self.account.pool_nodes(pool):
            self.nodes.end(node, NodeStatus.TERMINATED, "its compute requirement was terminated")
        _set_compute_status(compute, ComputeRequirementStatus.TERMINATED)
        compute.requirement.expectedInstanceCount = 0
        _set_status(pool, WorkerPoolStatus.TERMINATED)


def _compute_requirement(
    pool: ProvisionedWorkerPool, usage: ComputeRequirementTemplateUsage
) -> ComputeRecord:
    requirement = ComputeRequirement(
        namespace=pool.namespace or "default",
        name=pool.name or "",
        tag=usage.requirementTag,
        provisionStrategy=SingleSourceProvisionStrategy(
            sources=[SimulatorComputeSource(name="emulated")]
        ),
        targetInstanceCount=usage.targetInstanceCount,
    )
    requirement.id = pool.computeRequirementId
    requirement.createdTime = requirement.statusChangedTime = now_utc()
    requirement.createdFromId = usage.templateId
    requirement.status = ComputeRequirementStatus.NEW
    return ComputeRecord(requirement, pool.id or "")


def _set_compute_status(compute: ComputeRecord, status: ComputeRequirementStatus) -> None:
    if compute.requirement.status is not status:
        compute.requirement.status = status
        compute.requirement.statusChangedTime = now_utc()


def _set_status(pool: PoolRecord, status: WorkerPoolStatus) -> None:
    if pool.pool.status is not status:
        pool.pool.status = status
        pool.pool.statusChangedTime = now_utc()
    if status.finished:
        pool.pool.expectedNodeCount = 0
        pool.pool.awaitingNodes = False
