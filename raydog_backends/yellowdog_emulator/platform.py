"""The emulated YellowDog platform: work requirements, tasks, worker pools and nodes in memory.

Objects are the SDK's own model classes, so what the HTTP layer sends is what YellowDog sends.
A background tick moves the lifecycle on: pools provision nodes after a delay, nodes register
with private and public addresses, registered workers take ready tasks whose task group asks for
their worker tag, tasks run until they end, are cancelled or made to fail, idle nodes and idle
pools shut themselves down, work requirements finish when their task groups have.

Durations that come from API objects (idle shutdowns, task timeouts) are multiplied by
``time_scale``, so tests can use the backend's real minutes and still run in seconds.

With ``run_tasks`` and ``loopback_ips``, each task process is a Ray node sharing this machine, as
the ``local`` backend's nodes are: its own address (``RAYDOG_NODE_IP``), Ray temp folder
(``RAY_TMPDIR``) and dashboard agent port, the Ray ports of its cluster (``RAYDOG_GCS_PORT``,
``RAYDOG_CLIENT_PORT``: one pair per work requirement, as Ray binds them on every address),
``RAY_ADDRESS``, and the ``ray``/``sudo`` shims that scope ``ray stop`` to the node. Its folder
holds ``node.json`` and ``environment.json`` (0600), for the shims and for
``raydog_backends.yellowdog_emulator.runner``, which runs Ray's commands "on" the node.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from yellowdog_client.common.json import Json
from yellowdog_client.model import (
    AutoShutdown,
    ComputeRequirementTemplateUsage,
    Node,
    NodeDetails,
    NodeStatus,
    ProvisionedWorkerPool,
    ProvisionedWorkerPoolProperties,
    Slice,
    Task,
    TaskError,
    TaskGroup,
    TaskGroupStatus,
    TaskStatus,
    Worker,
    WorkerPoolStatus,
    WorkerPoolSummary,
    WorkerStatus,
    WorkRequirement,
    WorkRequirementStatus,
    WorkRequirementSummary,
)

from raydog_backends.process_nodes.addresses import LoopbackAddresses, free_port
from raydog_backends.process_nodes.processes import TOKEN_VARIABLE, NodeProcess, stop_all
from raydog_backends.process_nodes.shims import NODE_DIR_VARIABLE, write_shims

logger = logging.getLogger(__name__)

T = TypeVar("T")
Query = Mapping[str, list[str]]

ACCOUNT = "e0000d"
NAME_RULE = re.compile(r"^[a-z]([a-z0-9_-]*[a-z0-9])?$")
MAX_NAME = 60
MAX_SLICE = 1000
OPEN_GROUP = {TaskGroupStatus.PENDING, TaskGroupStatus.RUNNING}
NOT_INHERITED = ("HOME", "PWD", "OLDPWD")
NOT_INHERITED_PREFIXES = ("RAY_", "RAYDOG_", "YD_API_")
"""What a local node does not get from the emulator's environment: the identity, Ray settings
and YellowDog key of whoever started the emulator (a real node has none of them)."""
NODE_FILE = "node.json"
ENVIRONMENT_FILE = "environment.json"


class ApiError(Exception):
    """A request YellowDog would refuse; the HTTP layer sends it as the SDK expects."""

    def __init__(
        self, status: int, message: str, error_type: str = "InvalidRequestException"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


@dataclass
class EmulatorConfig:
    """How the emulated platform behaves; every field can be changed while it runs."""

    provision_delay: float = 0.05
    """Seconds from provisioning a pool to its nodes starting to boot."""
    boot_delay: float = 0.2
    """Seconds a node takes to boot and register its worker."""
    task_start_delay: float = 0.05
    """Seconds from a task's allocation to its execution."""
    time_scale: float = 1.0
    """Multiplies durations given in API objects (idle shutdowns, task timeouts)."""
    run_tasks: bool = False
    """Run each task's bash script as a real local process with the task's environment."""
    work_dir: str | None = None
    """Where task processes run (one folder per task); a temporary folder if None."""
    api_key: str | None = None
    """``ID:SECRET`` to accept; None accepts any key."""
    templates: list[str] | None = None
    """Compute requirement template ids to accept; None accepts any."""
    loopback_ips: bool = False
    """Give nodes distinct 127.x.y.z private addresses (for real processes), else fake ones."""
    public_ip: str | None = None
    """One public address for every node (e.g. 127.0.0.1); None: distinct fake ones."""
    slice_size: int = 100
    """Items per slice when a search does not ask for a size."""
    fail_tasks_of_lost_nodes: bool = True
    """A lost node's tasks fail at once, as YellowDog does; False leaves them executing."""
    stop_grace_seconds: float = 5.0
    """How long task processes get after SIGTERM before SIGKILL."""

    def update(self, values: Mapping[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ApiError(400, f"unknown emulator setting {key!r}")
            setattr(self, key, value)


@dataclass
class _Pool:
    pool: ProvisionedWorkerPool
    usage: ComputeRequirementTemplateUsage
    active_at: float
    idle_since: float | None = None

    @property
    def properties(self) -> ProvisionedWorkerPoolProperties:
        assert self.pool.properties is not None
        return self.pool.properties

    @property
    def live(self) -> bool:
        return self.pool.status is not None and not self.pool.status.finished


@dataclass
class _Node:
    node: Node
    pool_id: str
    ready_at: float
    registered: bool = False
    task_id: str | None = None
    idle_since: float = 0.0
    lease: Path | None = None

    @property
    def id(self) -> str:
        assert self.node.id is not None
        return self.node.id

    @property
    def alive(self) -> bool:
        return self.node.status is None or self.node.status.active


@dataclass
class _Task:
    task: Task
    requirement_id: str
    group_id: str
    start_at: float = 0.0
    deadline: float | None = None
    process: NodeProcess | None = None
    work_dir: Path | None = None
    ray_tmp_dir: Path | None = None
    cancel_when_done: bool = False

    @property
    def id(self) -> str:
        assert self.task.id is not None
        return self.task.id

    @property
    def status(self) -> TaskStatus:
        assert self.task.status is not None
        return self.task.status


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _new_id(kind: str) -> str:
    return f"ydid:{kind}:{ACCOUNT}:{uuid.uuid4().hex}"


def _check_name(what: str, name: str | None) -> str:
    if not name or len(name) > MAX_NAME or not NAME_RULE.match(name):
        raise ApiError(
            400,
            f"{what} {name!r} is invalid: use lower-case letters, digits, '-' and '_', start "
            f"with a letter, end with a letter or digit, at most {MAX_NAME} characters",
        )
    return name


def _one(query: Query, key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _many(query: Query, key: str) -> set[str] | None:
    values = query.get(key)
    return set(values) if values else None


def _seconds(shutdown: AutoShutdown | None) -> float | None:
    if shutdown is None or not shutdown.enabled or shutdown.timeout is None:
        return None
    return shutdown.timeout.total_seconds()


class Platform:
    """The whole emulated account. Every public method is safe to call from any thread."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.lock = threading.RLock()
        self.requirements: dict[str, WorkRequirement] = {}
        self.groups: dict[str, tuple[str, TaskGroup]] = {}
        self.tasks: dict[str, _Task] = {}
        self.pools: dict[str, _Pool] = {}
        self.nodes: dict[str, _Node] = {}
        self._addresses = itertools.count(1)
        self._loopback = LoopbackAddresses()
        self._scratch: Path | None = None
        self._stopping: list[NodeProcess] = []
        self._ray_ports: dict[str, tuple[int, int]] = {}
        self._ray_tmp_dirs: list[Path] = []

    # --- work requirements ---------------------------------------------------------------

    def add_work_requirement(self, requirement: WorkRequirement) -> WorkRequirement:
        with self.lock:
            namespace = _check_name("namespace", requirement.namespace)
            name = _check_name("work requirement name", requirement.name)
            if requirement.tag is not None:
                _check_name("tag", requirement.tag)
            if any(r.namespace == namespace and r.name == name for r in self.requirements.values()):
                raise ApiError(400, f"work requirement {namespace}/{name} already exists")
            requirement.id = _new_id("workreq")
            requirement.status = WorkRequirementStatus.RUNNING
            requirement.createdTime = requirement.statusChangedTime = _now()
            groups = list(requirement.taskGroups or [])
            requirement.taskGroups = []
            for group in groups:
                self._add_group(requirement, group)
            self.requirements[requirement.id] = requirement
            return requirement

    def update_work_requirement(self, update: WorkRequirement) -> WorkRequirement:
        with self.lock:
            current = self.get_work_requirement(update.id or "")
            if current.status is None or current.status.finished:
                raise ApiError(400, f"work requirement {current.name} is {current.status}")
            existing = {g.id for g in current.taskGroups or []}
            given = {g.id for g in update.taskGroups or [] if g.id is not None}
            if existing - given:
                raise ApiError(400, "task groups cannot be removed from a work requirement")
            for group in update.taskGroups or []:
                if group.id is None:
                    self._add_group(current, group)
                elif group.id not in existing:
                    raise ApiError(404, f"no task group {group.id} in {current.name}")
            return current

    def _add_group(self, requirement: WorkRequirement, group: TaskGroup) -> None:
        name = _check_name("task group name", group.name)
        if any(g.name == name for g in requirement.taskGroups or []):
            raise ApiError(400, f"task group {name} already exists in {requirement.name}")
        if not group.runSpecification or not group.runSpecification.taskTypes:
            raise ApiError(400, f"task group {name} needs runSpecification.taskTypes")
        for tag in group.runSpecification.workerTags or []:
            _check_name("worker tag", tag)
        group.id = _new_id("taskgrp")
        group.status = TaskGroupStatus.PENDING
        group.statusChangedTime = _now()
        requirement.taskGroups = [*(requirement.taskGroups or []), group]
        assert requirement.id is not None
        self.groups[group.id] = (requirement.id, group)

    def get_work_requirement(self, requirement_id: str) -> WorkRequirement:
        with self.lock:
            found = self.requirements.get(requirement_id)
            if found is None:
                raise ApiError(404, f"no work requirement {requirement_id}")
            return found

    def get_work_requirement_by_name(self, namespace: str, name: str) -> WorkRequirement:
        with self.lock:
            for requirement in self.requirements.values():
                if requirement.namespace == namespace and requirement.name == name:
                    return requirement
            raise ApiError(404, f"no work requirement {namespace}/{name}")

    def find_work_requirements(self, query: Query) -> Slice[WorkRequirementSummary]:
        namespaces = _many(query, "namespaces") or _many(query, "namespace")
        name, tag, statuses = _one(query, "name"), _one(query, "tag"), _many(query, "statuses")
        with self.lock:
            found = [
                self._summary(r)
                for r in self.requirements.values()
                if (namespaces is None or r.namespace in namespaces)
                and (name is None or r.name == name)
                and (tag is None or r.tag == tag)
                and (statuses is None or str(r.status) in statuses)
            ]
        return self._slice(found, query)

    def _summary(self, requirement: WorkRequirement) -> WorkRequirementSummary:
        tasks = [t for t in self.tasks.values() if t.requirement_id == requirement.id]
        return WorkRequirementSummary(
            id=requirement.id,
            namespace=requirement.namespace,
            name=requirement.name,
            tag=requirement.tag,
            createdTime=requirement.createdTime,
            statusChangedTime=requirement.statusChangedTime,
            priority=requirement.priority,
            completedTaskCount=sum(t.status is TaskStatus.COMPLETED for t in tasks),
            totalTaskCount=len(tasks),
            status=requirement.status,
            healthy=True,
        )

    def transition_work_requirement(
        self, requirement_id: str, status: str, abort: bool
    ) -> WorkRequirement:
        with self.lock:
            requirement = self.get_work_requirement(requirement_id)
            current = requirement.status
            assert current is not None
            try:
                target = WorkRequirementStatus[status]
            except KeyError:
                raise ApiError(400, f"no work requirement status {status}") from None
            if current.finished:
                raise ApiError(400, f"work requirement {requirement.name} is already {current}")
            if target is WorkRequirementStatus.CANCELLING:
                self._set_status(requirement, WorkRequirementStatus.CANCELLING)
                for task in self._tasks_of(requirement_id):
                    if task.status.waiting or (abort and task.status.in_progress):
                        self._finish(task, TaskStatus.CANCELLED)
                    elif task.status.in_progress:
                        task.cancel_when_done = True
            elif target in (
                WorkRequirementStatus.HELD,
                WorkRequirementStatus.RUNNING,
                WorkRequirementStatus.FINISHING,
            ):
                if current is WorkRequirementStatus.CANCELLING:
                    raise ApiError(400, f"work requirement {requirement.name} is cancelling")
                self._set_status(requirement, target)
            else:
                raise ApiError(400, f"cannot move a work requirement to {status}")
            self._advance_requirement(requirement)  # settles at once if nothing still runs
            return requirement

    @staticmethod
    def _set_status(requirement: WorkRequirement, status: WorkRequirementStatus) -> None:
        if requirement.status is not status:
            requirement.status = status
            requirement.statusChangedTime = _now()

    # --- tasks ---------------------------------------------------------------------------

    def add_tasks(self, group_id: str, tasks: list[Task]) -> list[Task]:
        with self.lock:
            if group_id not in self.groups:
                raise ApiError(404, f"no task group {group_id}")
            requirement_id, group = self.groups[group_id]
            requirement = self.requirements[requirement_id]
            if requirement.status not in (
                WorkRequirementStatus.RUNNING,
                WorkRequirementStatus.HELD,
            ):
                raise ApiError(400, f"work requirement {requirement.name} is {requirement.status}")
            if group.status not in OPEN_GROUP:
                raise ApiError(400, f"task group {group.name} is {group.status}")
            task_types = group.runSpecification.taskTypes
            for task in tasks:
                if task.taskType not in task_types:
                    raise ApiError(400, f"task type {task.taskType!r} is not one of {task_types}")
                if task.name is not None:
                    _check_name("task name", task.name)
            for task in tasks:
                task.id = _new_id("task")
                task.status = TaskStatus.READY
                task.taskGroupId = group_id
                task.retryCount = 0
                self.tasks[task.id] = _Task(task, requirement_id, group_id)
            return tasks

    def add_tasks_by_name(
        self, namespace: str, requirement_name: str, group_name: str, tasks: list[Task]
    ) -> list[Task]:
        with self.lock:
            requirement = self.get_work_requirement_by_name(namespace, requirement_name)
            for group in requirement.taskGroups or []:
                if group.name == group_name and group.id is not None:
                    return self.add_tasks(group.id, tasks)
            raise ApiError(404, f"no task group {group_name} in {requirement_name}")

    def get_task(self, task_id: str) -> Task:
        return self._task(task_id).task

    def _task(self, task_id: str) -> _Task:
        with self.lock:
            found = self.tasks.get(task_id)
            if found is None:
                raise ApiError(404, f"no task {task_id}")
            return found

    def cancel_task(self, task_id: str, abort: bool) -> Task:
        with self.lock:
            task = self._task(task_id)
            if task.status.waiting or (abort and task.status.in_progress):
                self._finish(task, TaskStatus.CANCELLED)
            elif task.status.in_progress:
                task.cancel_when_done = True
            return task.task

    def find_tasks(self, query: Query) -> Slice[Task]:
        requirement_id, group_id = _one(query, "workRequirementId"), _one(query, "taskGroupId")
        name, tag, statuses = _one(query, "name"), _one(query, "tag"), _many(query, "statuses")
        with self.lock:
            found = [
                t.task
                for t in self.tasks.values()
                if (requirement_id is None or t.requirement_id == requirement_id)
                and (group_id is None or t.group_id == group_id)
                and (name is None or t.task.name == name)
                and (tag is None or t.task.tag == tag)
                and (statuses is None or str(t.status) in statuses)
            ]
        return self._slice(found, query)

    def fail_task(self, task_id: str, message: str = "made to fail by the emulator") -> Task:
        with self.lock:
            task = self._task(task_id)
            if not task.status.finished:
                self._finish(task, TaskStatus.FAILED, message)
            return task.task

    def _tasks_of(self, requirement_id: str) -> list[_Task]:
        return [t for t in self.tasks.values() if t.requirement_id == requirement_id]

    # --- worker pools --------------------------------------------------------------------

    def provision_pool(self, body: Mapping[str, Any]) -> ProvisionedWorkerPool:
        try:
            usage = Json.load(body["requirementTemplateUsage"], ComputeRequirementTemplateUsage)
            properties = Json.load(
                body.get("provisionedProperties") or {}, ProvisionedWorkerPoolProperties
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, f"malformed provisioning request: {exc}") from None
        with self.lock:
            templates = self.config.templates
            if templates is not None and usage.templateId not in templates:
                raise ApiError(404, f"no compute requirement template {usage.templateId!r}")
            namespace = _check_name("namespace", usage.requirementNamespace or "default")
            name = _check_name("worker pool name", usage.requirementName)
            if properties.workerTag is not None:
                _check_name("worker tag", properties.workerTag)
            if any(
                p.live and p.pool.namespace == namespace and p.pool.name == name
                for p in self.pools.values()
            ):
                raise ApiError(400, f"worker pool {namespace}/{name} already exists")
            if usage.targetInstanceCount < 0:
                raise ApiError(400, "targetInstanceCount must not be negative")
            now = _now()
            pool = ProvisionedWorkerPool(
                id=_new_id("wrkrpool"),
                name=name,
                namespace=namespace,
                createdTime=now,
                status=WorkerPoolStatus.PENDING,
                statusChangedTime=now,
                expectedNodeCount=usage.targetInstanceCount,
                awaitingNodes=usage.targetInstanceCount > 0,
                properties=properties,
                computeRequirementId=_new_id("compreq"),
            )
            assert pool.id is not None
            self.pools[pool.id] = _Pool(pool, usage, time.monotonic() + self.config.provision_delay)
            return pool

    def resize_pool(self, pool_id: str, size: int) -> ProvisionedWorkerPool:
        with self.lock:
            pool = self._pool(pool_id)
            if not pool.live:
                raise ApiError(400, f"worker pool {pool.pool.name} is {pool.pool.status}")
            max_nodes = pool.properties.maxNodes
            if size < 0 or (max_nodes is not None and size > max_nodes):
                raise ApiError(400, f"size {size} is outside 0..{max_nodes}")
            pool.pool.expectedNodeCount = size
            return pool.pool

    def get_pool(self, pool_id: str) -> ProvisionedWorkerPool:
        return self._pool(pool_id).pool

    def _pool(self, pool_id: str) -> _Pool:
        with self.lock:
            found = self.pools.get(pool_id)
            if found is None:
                raise ApiError(404, f"no worker pool {pool_id}")
            return found

    def get_pool_by_name(self, namespace: str, name: str) -> ProvisionedWorkerPool:
        with self.lock:
            matching = [
                p
                for p in self.pools.values()
                if p.pool.namespace == namespace and p.pool.name == name
            ]
            if not matching:
                raise ApiError(404, f"no worker pool {namespace}/{name}")
            return matching[-1].pool

    def find_pools(self, query: Query) -> Slice[WorkerPoolSummary]:
        namespaces = _many(query, "namespaces") or _many(query, "namespace")
        name, statuses = _one(query, "name"), _many(query, "statuses")
        with self.lock:
            found = [
                WorkerPoolSummary(
                    id=p.pool.id,
                    name=p.pool.name,
                    namespace=p.pool.namespace,
                    type=p.pool.type,
                    registeredNodeCount=len(self._registered_nodes(p)),
                    registeredWorkerCount=len(self._registered_nodes(p)),
                    claimedWorkerCount=sum(
                        n.task_id is not None for n in self._registered_nodes(p)
                    ),
                    workingWorkerCount=sum(
                        n.task_id is not None for n in self._registered_nodes(p)
                    ),
                    status=p.pool.status,
                    createdTime=p.pool.createdTime,
                    statusChangedTime=p.pool.statusChangedTime,
                    healthy=True,
                )
                for p in self.pools.values()
                if (namespaces is None or p.pool.namespace in namespaces)
                and (name is None or p.pool.name == name)
                and (statuses is None or str(p.pool.status) in statuses)
            ]
        return self._slice(found, query)

    def shutdown_pool(self, pool_id: str) -> ProvisionedWorkerPool:
        with self.lock:
            pool = self._pool(pool_id)
            if pool.live:
                self._set_pool_status(pool, WorkerPoolStatus.SHUTDOWN)
                for node in self._pool_nodes(pool):
                    self._end_node(node, NodeStatus.TERMINATED, "its worker pool shut down")
            return pool.pool

    def _set_pool_status(self, pool: _Pool, status: WorkerPoolStatus) -> None:
        if pool.pool.status is not status:
            pool.pool.status = status
            pool.pool.statusChangedTime = _now()
        if status.finished:
            pool.pool.expectedNodeCount = 0
            pool.pool.awaitingNodes = False

    # --- nodes ---------------------------------------------------------------------------

    def find_nodes(self, query: Query) -> Slice[Node]:
        pool_id, tag, statuses = (
            _one(query, "workerPoolId"),
            _one(query, "workerTag"),
            _many(query, "statuses"),
        )
        instance_id, group_id = _one(query, "instanceId"), _one(query, "workerTaskGroupId")
        with self.lock:
            found = [
                n.node
                for n in self.nodes.values()
                if n.registered
                and (pool_id is None or n.pool_id == pool_id)
                and (tag is None or self.pools[n.pool_id].properties.workerTag == tag)
                and (statuses is None or str(n.node.status) in statuses)
                and (
                    instance_id is None
                    or (n.node.details and n.node.details.instanceId == instance_id)
                )
                and (group_id is None or self._group_of_node(n) == group_id)
            ]
        return self._slice(found, query)

    def _group_of_node(self, node: _Node) -> str | None:
        return self.tasks[node.task_id].group_id if node.task_id in self.tasks else None

    def get_node(self, node_id: str) -> Node:
        return self._node(node_id).node

    def _node(self, node_id: str) -> _Node:
        with self.lock:
            found = self.nodes.get(node_id)
            if found is None or not found.registered:
                raise ApiError(404, f"no node {node_id}")
            return found

    def node_of_worker(self, worker_id: str) -> Node:
        with self.lock:
            for node in self.nodes.values():
                if any(w.id == worker_id for w in node.node.workers or []):
                    return node.node
            raise ApiError(404, f"no worker {worker_id}")

    def shutdown_node(self, node_id: str) -> Node:
        with self.lock:
            node = self._node(node_id)
            if node.alive:
                self._end_node(node, NodeStatus.TERMINATED, "node shut down")
                self._shrink(self.pools[node.pool_id])
            return node.node

    def lose_node(self, node_id: str, fail_tasks: bool | None = None) -> Node:
        """The platform loses contact with a node (a reclaimed spot instance, a crash)."""
        with self.lock:
            node = self._node(node_id)
            if node.alive:
                fail = self.config.fail_tasks_of_lost_nodes if fail_tasks is None else fail_tasks
                self._end_node(node, NodeStatus.LOST, "node lost", fail_tasks=fail)
                self._shrink(self.pools[node.pool_id])
            return node.node

    def lose_node_of_task(self, task_id: str, fail_tasks: bool | None = None) -> Node:
        with self.lock:
            node_id = self._task(task_id).task.nodeId
            if node_id is None:
                raise ApiError(400, f"task {task_id} is not on a node")
            return self.lose_node(node_id, fail_tasks)

    def _shrink(self, pool: _Pool) -> None:
        pool.pool.expectedNodeCount = max(0, pool.pool.expectedNodeCount - 1)

    def _end_node(
        self, node: _Node, status: NodeStatus, reason: str, fail_tasks: bool = True
    ) -> None:
        node.node.status = status
        node.node.statusChangedTime = node.node.deregisteredTime = _now()
        worker_status = WorkerStatus.LOST if status is NodeStatus.LOST else WorkerStatus.SHUTDOWN
        for worker in node.node.workers or []:
            worker.status = worker_status
        if node.task_id is not None and fail_tasks:
            task = self.tasks[node.task_id]
            if not task.status.finished:
                self._finish(task, TaskStatus.FAILED, reason)
        if node.lease is not None and node.node.details is not None:
            self._loopback.release(node.node.details.privateIpAddress or "", node.lease)
            shutil.rmtree(node.lease, ignore_errors=True)
            node.lease = None

    def _registered_nodes(self, pool: _Pool) -> list[_Node]:
        return [n for n in self._pool_nodes(pool) if n.registered]

    def _pool_nodes(self, pool: _Pool) -> list[_Node]:
        return [n for n in self.nodes.values() if n.pool_id == pool.pool.id and n.alive]

    # --- the lifecycle -------------------------------------------------------------------

    def tick(self) -> None:
        """Move everything on to where it would be by now."""
        with self.lock:
            now = time.monotonic()
            for pool in list(self.pools.values()):
                self._advance_pool(pool, now)
            for node in list(self.nodes.values()):
                self._advance_node(node, now)
            self._schedule(now)
            for task in list(self.tasks.values()):
                self._advance_task(task, now)
            for requirement in self.requirements.values():
                self._advance_requirement(requirement)

    def _advance_pool(self, pool: _Pool, now: float) -> None:
        if pool.pool.status is WorkerPoolStatus.SHUTDOWN:
            self._set_pool_status(pool, WorkerPoolStatus.TERMINATED)
        if not pool.live or now < pool.active_at:
            return
        nodes = self._pool_nodes(pool)
        target = pool.pool.expectedNodeCount
        for _ in range(target - len(nodes)):
            nodes.append(self._boot_node(pool, now))
        if len(nodes) > target:
            # Idle nodes go first, then booting ones, busy ones last.
            order = sorted(nodes, key=lambda n: (n.task_id is not None, n.registered))
            for node in order[: len(nodes) - target]:
                self._end_node(node, NodeStatus.TERMINATED, "its worker pool shrank")
            nodes = order[len(nodes) - target :]
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
        self._set_pool_status(pool, status)
        pool.idle_since = None if busy or booting else (pool.idle_since or now)
        timeout = _seconds(pool.properties.idlePoolShutdown)
        idle_for = now - pool.idle_since if pool.idle_since is not None else 0.0
        if (
            timeout is not None
            and pool.idle_since is not None
            and idle_for >= timeout * self.config.time_scale
        ):
            logger.info("emulator: worker pool %s shuts down, idle", pool.pool.name)
            self.shutdown_pool(pool.pool.id or "")

    def _boot_node(self, pool: _Pool, now: float) -> _Node:
        node_id = _new_id("node")
        node = Node(id=node_id, workerPoolId=pool.pool.id, workers=[])
        made = _Node(node, pool.pool.id or "", now + self.config.boot_delay)
        self.nodes[node_id] = made
        return made

    def _advance_node(self, node: _Node, now: float) -> None:
        if not node.alive:
            return
        pool = self.pools[node.pool_id]
        if not node.registered and now >= node.ready_at:
            self._register(node, pool, now)
        if node.registered and node.task_id is None:
            timeout = _seconds(pool.properties.idleNodeShutdown)
            if timeout is not None and now - node.idle_since >= timeout * self.config.time_scale:
                logger.info("emulator: node %s shuts down, idle", node.id)
                self._end_node(node, NodeStatus.TERMINATED, "idle node shutdown")
                self._shrink(pool)

    def _register(self, node: _Node, pool: _Pool, now: float) -> None:
        number = next(self._addresses)
        public = self.config.public_ip
        if self.config.loopback_ips:
            lease = self._work_root() / "leases" / node.id.rsplit(":", 1)[-1]
            lease.mkdir(parents=True, exist_ok=True)
            node.lease = lease
            private = self._loopback.allocate(lease)
        else:
            private = f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"
            public = public or f"100.64.{number // 256 % 256}.{number % 256}"
        instance = f"i-{uuid.uuid4().hex[:17]}"
        node.node.details = NodeDetails(
            instanceId=instance,
            provider=None,
            region="emulated",
            sourceName=pool.usage.templateId,
            instanceType="emulated",
            hostname=f"node-{number}",
            privateIpAddress=private,
            publicIpAddress=public or private,
            vcpus=1.0,
            ram=1.0,
            supportedTaskTypes=None,
            workerTag=pool.properties.workerTag,
        )
        stamp = _now()
        node.node.status = NodeStatus.RUNNING
        node.node.registeredTime = node.node.statusChangedTime = stamp
        worker_id = node.id.replace(":node:", ":wrkr:") + ":1"
        node.node.workers = [
            Worker(id=worker_id, status=WorkerStatus.STARTING, registeredTime=stamp)
        ]
        node.node.agentVersion = "emulated"
        node.registered = True
        node.idle_since = now

    def _schedule(self, now: float) -> None:
        free = [
            n
            for n in self.nodes.values()
            if n.registered and n.alive and n.task_id is None and self.pools[n.pool_id].live
        ]
        if not free:
            return
        for task in self.tasks.values():
            if task.status is not TaskStatus.READY:
                continue
            requirement = self.requirements[task.requirement_id]
            group = self.groups[task.group_id][1]
            if (
                requirement.status is not WorkRequirementStatus.RUNNING
                or group.status not in OPEN_GROUP
            ):
                continue
            spec = group.runSpecification
            for node in free:
                pool = self.pools[node.pool_id].pool
                assert pool.properties is not None
                if spec.workerTags and pool.properties.workerTag not in spec.workerTags:
                    continue
                if spec.namespaces and pool.namespace not in spec.namespaces:
                    continue
                free.remove(node)
                self._allocate(task, node, now)
                break
            if not free:
                return

    def _allocate(self, task: _Task, node: _Node, now: float) -> None:
        workers = node.node.workers or []
        task.task.status = TaskStatus.ALLOCATED
        task.task.nodeId = node.id
        task.task.workerId = workers[0].id if workers else None
        task.start_at = now + self.config.task_start_delay
        node.task_id = task.id
        for worker in workers:
            worker.status = WorkerStatus.RUNNING
            worker.taskGroupId = task.group_id
        group = self.groups[task.group_id][1]
        if group.status is TaskGroupStatus.PENDING:
            group.status = TaskGroupStatus.RUNNING
            group.statusChangedTime = _now()

    def _advance_task(self, task: _Task, now: float) -> None:
        if task.status is TaskStatus.ALLOCATED and now >= task.start_at:
            self._execute(task, now)
        elif task.status is TaskStatus.EXECUTING:
            if task.process is not None and not task.process.running():
                code = task.process.returncode
                if task.cancel_when_done:
                    self._finish(task, TaskStatus.CANCELLED)
                elif code == 0:
                    self._finish(task, TaskStatus.COMPLETED)
                else:
                    self._finish(task, TaskStatus.FAILED, f"the task script exited with {code}")
            elif task.deadline is not None and now >= task.deadline:
                self._finish(task, TaskStatus.FAILED, "the task timed out")

    def _execute(self, task: _Task, now: float) -> None:
        task.task.status = TaskStatus.EXECUTING
        task.task.startedTime = _now()
        group = self.groups[task.group_id][1]
        timeout = task.task.timeout or group.runSpecification.taskTimeout
        if timeout is not None:
            task.deadline = now + timeout.total_seconds() * self.config.time_scale
        if self.config.run_tasks:
            self._start_process(task)

    def _start_process(self, task: _Task) -> None:
        node = self.nodes[task.task.nodeId or ""]
        details = node.node.details
        folder = self._work_root() / "tasks" / task.id.rsplit(":", 1)[-1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "taskdata.txt").write_text(task.task.taskData or "")
        local_node = self.config.loopback_ips and details is not None
        environment = {
            **(_node_inheritance() if local_node else os.environ),
            "YD_TASK_ID": task.id,
            "YD_TASK_GROUP_ID": task.group_id,
            "YD_WORK_REQUIREMENT_ID": task.requirement_id,
            "YD_NODE_ID": node.id,
            "YD_WORKER_ID": task.task.workerId or "",
            "YD_INSTANCE_ID": details.instanceId if details else "",
            "YD_PROVIDER": "EMULATED",
            "YD_REGION": "emulated",
            "YD_INSTANCE_TYPE": "emulated",
            "YD_AGENT_DATA": str(folder),
            "YD_AGENT_HOME": str(folder),
            **(task.task.environment or {}),
        }
        if local_node and details is not None:
            environment.update(self._local_node_environment(task, details, folder))
        command = shlex.join(["exec", "bash", *(task.task.arguments or [])])
        task.work_dir = folder
        task.process = process = NodeProcess.start(
            command, env=environment, home=folder, log_path=folder / "output.log"
        )
        if local_node:
            node_file = {
                "node_id": task.id,
                "pid": process.pid,
                "start_ticks": process.start_ticks,
                "token": process.token,
            }
            full = {**environment, "HOME": str(folder), TOKEN_VARIABLE: process.token}
            _write_private(folder / NODE_FILE, node_file)
            _write_private(folder / ENVIRONMENT_FILE, full)

    def _local_node_environment(
        self, task: _Task, details: NodeDetails, folder: Path
    ) -> dict[str, str]:
        """What a Ray node sharing this machine needs (see the module docstring)."""
        ip = details.privateIpAddress or ""
        gcs, client = self._ray_ports.setdefault(task.requirement_id, (free_port(), free_port()))
        # Short on purpose: Ray's socket paths under it must stay below 108 bytes.
        tmp = Path(tempfile.mkdtemp(prefix="raydog-yd-"))
        task.ray_tmp_dir = tmp
        self._ray_tmp_dirs.append(tmp)
        shims = self._work_root() / "shims"
        write_shims(shims)
        head_ip = (task.task.environment or {}).get("RAY_HEAD_IP") or ip
        path = [str(shims), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
        return {
            "PATH": os.pathsep.join(path),
            "RAYDOG_NODE_IP": ip,
            "RAY_TMPDIR": str(tmp),
            "RAYDOG_DASHBOARD_AGENT_PORT": str(free_port()),
            "RAYDOG_GCS_PORT": str(gcs),
            "RAYDOG_CLIENT_PORT": str(client),
            "RAY_ADDRESS": f"{head_ip}:{gcs}",
            NODE_DIR_VARIABLE: str(folder),
        }

    def _finish(self, task: _Task, status: TaskStatus, error: str | None = None) -> None:
        task.task.status = status
        task.task.finishedTime = _now()
        if error is not None:
            task.task.errors = [
                *(task.task.errors or []),
                TaskError(timestamp=_now(), error=error, nodeId=task.task.nodeId),
            ]
        if task.process is not None:
            process, task.process = task.process, None
            threading.Thread(
                target=_stop_node,
                args=(process, self.config.stop_grace_seconds, task.ray_tmp_dir),
                daemon=True,
            ).start()
            self._stopping.append(process)
        node = self.nodes.get(task.task.nodeId or "")
        if node is not None and node.task_id == task.id:
            node.task_id = None
            node.idle_since = time.monotonic()
            for worker in node.node.workers or []:
                if worker.status is WorkerStatus.RUNNING:
                    worker.status = WorkerStatus.STARTING
                    worker.taskGroupId = None

    def _advance_requirement(self, requirement: WorkRequirement) -> None:
        status = requirement.status
        if status is None or status.finished:
            return
        tasks = self._tasks_of(requirement.id or "")
        for group in requirement.taskGroups or []:
            self._advance_group(requirement, group, [t for t in tasks if t.group_id == group.id])
        all_done = all(t.status.finished for t in tasks)
        if status is WorkRequirementStatus.CANCELLING and all_done:
            self._set_status(requirement, WorkRequirementStatus.CANCELLED)
        elif status is WorkRequirementStatus.FINISHING and all_done:
            self._set_status(requirement, WorkRequirementStatus.COMPLETED)
        elif status is WorkRequirementStatus.RUNNING:
            groups = requirement.taskGroups or []
            if groups and all(g.status is not None and g.status.terminated for g in groups):
                failed = any(g.status is TaskGroupStatus.FAILED for g in groups)
                self._set_status(
                    requirement,
                    WorkRequirementStatus.FAILED if failed else WorkRequirementStatus.COMPLETED,
                )

    def _advance_group(
        self, requirement: WorkRequirement, group: TaskGroup, tasks: list[_Task]
    ) -> None:
        current = group.status
        if current is None or current.terminated:
            return
        done = bool(tasks) and all(t.status.finished for t in tasks)
        failed = any(t.status is TaskStatus.FAILED for t in tasks)
        new = current
        if requirement.status is WorkRequirementStatus.CANCELLING:
            new = (
                TaskGroupStatus.CANCELLED
                if all(t.status.finished for t in tasks)
                else TaskGroupStatus.CANCELLING
            )
        elif failed and group.finishIfAnyTaskFailed:
            for task in tasks:
                if not task.status.finished:
                    self._finish(task, TaskStatus.DISCARDED)
            new = TaskGroupStatus.FAILED
        elif done and (group.finishIfAllTasksFinished or current is TaskGroupStatus.FINISHING):
            new = TaskGroupStatus.FAILED if failed else TaskGroupStatus.COMPLETED
        elif requirement.status is WorkRequirementStatus.FINISHING and current in OPEN_GROUP:
            new = TaskGroupStatus.FINISHING
        if new is not current:
            group.status = new
            group.statusChangedTime = _now()

    # --- inspection and housekeeping ------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything live and finished, as plain data, for tests and curious users."""
        with self.lock:
            return {
                "work_requirements": [
                    {
                        "id": r.id,
                        "name": r.name,
                        "namespace": r.namespace,
                        "tag": r.tag,
                        "status": str(r.status),
                        "live": r.status is not None and not r.status.finished,
                        "task_groups": [
                            {
                                "id": g.id,
                                "name": g.name,
                                "tag": g.tag,
                                "status": str(g.status),
                                "worker_tags": g.runSpecification.workerTags or [],
                                "task_timeout": _total(g.runSpecification.taskTimeout),
                            }
                            for g in r.taskGroups or []
                        ],
                    }
                    for r in self.requirements.values()
                ],
                "tasks": [
                    {
                        "id": t.id,
                        "work_requirement_id": t.requirement_id,
                        "task_group_id": t.group_id,
                        "status": str(t.status),
                        "node_id": t.task.nodeId,
                        "worker_id": t.task.workerId,
                        "environment": dict(t.task.environment or {}),
                        "arguments": list(t.task.arguments or []),
                        "task_data": t.task.taskData,
                        "errors": [e.error for e in t.task.errors or []],
                        "pid": t.process.pid if t.process is not None else None,
                        "work_dir": str(t.work_dir) if t.work_dir is not None else None,
                    }
                    for t in self.tasks.values()
                ],
                "pools": [
                    {
                        "id": p.pool.id,
                        "name": p.pool.name,
                        "namespace": p.pool.namespace,
                        "status": str(p.pool.status),
                        "live": p.live,
                        "target": p.pool.expectedNodeCount,
                        "worker_tag": p.properties.workerTag,
                        "template_id": p.usage.templateId,
                        "images_id": p.usage.imagesId,
                        "user_data": p.usage.userData,
                        "requirement_tag": p.usage.requirementTag,
                        "instance_tags": dict(p.usage.instanceTags or {}),
                        "metrics_enabled": p.properties.metricsEnabled,
                        "idle_node_shutdown": _seconds(p.properties.idleNodeShutdown),
                        "idle_pool_shutdown": _seconds(p.properties.idlePoolShutdown),
                    }
                    for p in self.pools.values()
                ],
                "nodes": [
                    {
                        "id": n.id,
                        "pool_id": n.pool_id,
                        "status": str(n.node.status) if n.registered else "BOOTING",
                        "live": n.alive,
                        "private_ip": n.node.details.privateIpAddress if n.node.details else None,
                        "public_ip": n.node.details.publicIpAddress if n.node.details else None,
                        "task_id": n.task_id,
                    }
                    for n in self.nodes.values()
                ],
            }

    def reset(self) -> None:
        """Forget everything; stop every task process."""
        with self.lock:
            for task in self.tasks.values():
                if not task.status.finished:
                    self._finish(task, TaskStatus.CANCELLED)
            for node in self.nodes.values():
                if node.alive:
                    self._end_node(node, NodeStatus.TERMINATED, "emulator reset")
            self.requirements.clear()
            self.groups.clear()
            self.tasks.clear()
            self.pools.clear()
            self.nodes.clear()
        self.stop_processes()

    def close(self) -> None:
        """Stop every task process, release addresses, remove the scratch folder."""
        self.reset()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def stop_processes(self) -> None:
        with self.lock:
            running = [t.process for t in self.tasks.values() if t.process is not None]
            for task in self.tasks.values():
                task.process = None
            stopping, self._stopping = self._stopping + running, []
        if stopping:
            stop_all(stopping, self.config.stop_grace_seconds)
        with self.lock:
            tmp_dirs, self._ray_tmp_dirs = self._ray_tmp_dirs, []
        for tmp in tmp_dirs:
            shutil.rmtree(tmp, ignore_errors=True)

    def _work_root(self) -> Path:
        if self.config.work_dir is not None:
            root = Path(self.config.work_dir)
            root.mkdir(parents=True, exist_ok=True)
            return root
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="yellowdog-emulator-"))
        return self._scratch

    def _slice(self, items: list[T], query: Query) -> Slice[T]:
        try:
            offset = int(_one(query, "sliceId") or 0)
            size = int(_one(query, "size") or self.config.slice_size)
        except ValueError:
            raise ApiError(400, "sliceId and size must be whole numbers") from None
        size = max(1, min(size, MAX_SLICE))
        page = items[offset : offset + size]
        following = offset + size if offset + size < len(items) else None
        return Slice(items=page, nextSliceId=str(following) if following is not None else None)


def _total(duration: timedelta | None) -> float | None:
    return duration.total_seconds() if duration is not None else None


def _node_inheritance() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name not in NOT_INHERITED and not name.startswith(NOT_INHERITED_PREFIXES)
    }


def _write_private(path: Path, value: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(value, out)


def _stop_node(process: NodeProcess, grace: float, ray_tmp_dir: Path | None) -> None:
    process.stop(grace)
    if ray_tmp_dir is not None:
        shutil.rmtree(ray_tmp_dir, ignore_errors=True)
