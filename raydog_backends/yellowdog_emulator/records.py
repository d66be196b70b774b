"""What every part of the emulated platform shares: its settings, its records and its lock.

Objects are the SDK's own model classes, so what the HTTP layer sends is what YellowDog sends;
the records around them hold what the platform knows but does not publish (timers, processes).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from yellowdog_client.model import (
    AutoShutdown,
    ComputeRequirement,
    ComputeRequirementTemplateUsage,
    Instance,
    Node,
    ProvisionedWorkerPool,
    ProvisionedWorkerPoolProperties,
    Slice,
    Task,
    TaskGroup,
    TaskGroupStatus,
    TaskStatus,
    WorkerStatus,
    WorkRequirement,
    WorkRequirementStatus,
)

from raydog_backends.process_nodes.processes import NodeProcess

T = TypeVar("T")
Query = Mapping[str, list[str]]

ACCOUNT = "e0000d"
NAME_RULE = re.compile(r"[a-z]([a-z0-9_-]*[a-z0-9])?")
MAX_NAME = 60
MAX_SLICE = 1000
MAX_NODES_PER_POOL = 10_000
MAX_TASKS_PER_ADD = 10_000
"""The most tasks one add request may carry (yellowdog-cli ``submit.py``: a batch size outside
1-10,000 is refused; unconfirmed that the platform refuses more, so the stricter choice)."""
DUPLICATE_TASK_NAME = "Task names must be unique within task group"
"""The platform's words when a batch repeats a task name (yellowdog-cli ``submit.py``)."""
"""The platform's limit on a worker pool's nodes (yellowdog-cli README, ``maxNodes``)."""


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
    """How the emulated platform behaves; every field can be changed while it runs.

    The defaults are the platform as documented in ``../shared/YELLOWDOG.md`` and docs/emulator.md,
    the stricter choice where the platform's behaviour is unknown.
    """

    provision_delay: float = 0.05
    """Seconds from provisioning a pool to its nodes starting to boot."""
    boot_delay: float = 0.2
    """Seconds a node takes to boot and register its worker."""
    task_start_delay: float = 0.05
    """Seconds from a task's allocation to its execution."""
    setup_delay: float = 0.5
    """Seconds a node's setup (its userdata: Python, Ray) runs after its agent registered; its
    tasks may start before (YellowDog agent installer README: the agent starts at once)."""
    node_shutdown_delay: float = 0.5
    """Seconds a registered node keeps running after its pool shut down (yellowdog-ray 0794285)."""
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
    """One public address for every instance (e.g. 127.0.0.1); None: distinct fake ones."""
    address_delay: float = 0.3
    """Seconds after a node's agent registered that its instance is still listed ``PENDING``,
    without addresses. An instance is listed while it boots, before it has addresses
    (``InstanceStatus.PENDING``, SDK); how long the compute API's view lags the agent's is not
    published, so it lags (the stricter choice)."""
    no_public_ip_templates: list[str] = field(default_factory=list)
    """Compute requirement templates whose sources assign no public IP (``assignPublicIp``
    defaults to false in the SDK's cloud source models): their instances never list one."""
    namespace_policies: dict[str, int] = field(default_factory=dict)
    """Namespace -> its policy's ``autoscalingMaxNodes``: the most nodes pools in it scale to
    (SDK ``NamespacePolicy``; yellowdog-cli README, "Namespace Policies")."""
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
class PoolRecord:
    pool: ProvisionedWorkerPool
    usage: ComputeRequirementTemplateUsage
    active_at: float
    max_nodes: int
    """The most nodes it may have (``maxNodes``, or the limit imposed when that is missing)."""
    idle_since: float | None = None
    shutdown_at: float | None = None
    """When its registered nodes stop, once shut down."""

    @property
    def id(self) -> str:
        assert self.pool.id is not None
        return self.pool.id

    @property
    def properties(self) -> ProvisionedWorkerPoolProperties:
        assert self.pool.properties is not None
        return self.pool.properties

    @property
    def live(self) -> bool:
        return self.pool.status is not None and not self.pool.status.finished


@dataclass
class ComputeRecord:
    """A compute requirement and its instances (one per node, booting or registered)."""

    requirement: ComputeRequirement
    pool_id: str
    instances: dict[str, Instance] = field(default_factory=dict)
    failure: str | None = None
    """Why provisioning failed (quota, template, image), once it has."""
    auto_shutdown_at: float | None = None
    """When the platform terminates it by itself (its ``autoShutdown``), on the tick's clock."""

    @property
    def id(self) -> str:
        assert self.requirement.id is not None
        return self.requirement.id


@dataclass
class NodeRecord:
    node: Node
    pool_id: str
    ready_at: float
    instance_id: str
    private_ip: str
    public_ip: str | None
    """None where the template's source assigns no public IP."""
    registered: bool = False
    addressed_at: float = 0.0
    """When its instance leaves ``PENDING`` and lists its addresses."""
    orphaned: bool = False
    """Booting when its pool shut down: its agent never registers, only its compute
    requirement's termination stops it."""
    task_id: str | None = None
    queue: list[str] = field(default_factory=list)
    """Tasks pre-allocated to this node, waiting behind ``task_id``."""
    idle_since: float = 0.0
    setup_done_at: float = 0.0
    setup_done: bool = False
    lease: Path | None = None
    folder: Path | None = None

    @property
    def id(self) -> str:
        assert self.node.id is not None
        return self.node.id

    @property
    def alive(self) -> bool:
        return self.node.status is None or self.node.status.active

    def release(self, task_id: str, now: float) -> None:
        """``task_id`` no longer occupies this node."""
        if task_id in self.queue:
            self.queue.remove(task_id)
        if self.task_id != task_id:
            return
        self.task_id = None
        self.idle_since = now
        for worker in self.node.workers or []:
            if worker.status is WorkerStatus.RUNNING:
                worker.status = WorkerStatus.STARTING
                worker.taskGroupId = None


@dataclass
class TaskRecord:
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


@dataclass
class Account:
    """Every object of the emulated account, under one lock that every part takes."""

    config: EmulatorConfig
    lock: threading.RLock = field(default_factory=threading.RLock)
    requirements: dict[str, WorkRequirement] = field(default_factory=dict)
    groups: dict[str, tuple[str, TaskGroup]] = field(default_factory=dict)
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    pools: dict[str, PoolRecord] = field(default_factory=dict)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    computes: dict[str, ComputeRecord] = field(default_factory=dict)
    provisioning_failures: dict[str | None, str] = field(default_factory=dict)
    """Template id (None: any) -> why provisioning from it fails (quota, image...)."""

    def clear(self) -> None:
        for mapping in (
            self.requirements,
            self.groups,
            self.tasks,
            self.pools,
            self.nodes,
            self.computes,
        ):
            mapping.clear()

    def task(self, task_id: str) -> TaskRecord:
        found = self.tasks.get(task_id)
        if found is None:
            raise ApiError(404, f"no task {task_id}")
        return found

    def pool(self, pool_id: str) -> PoolRecord:
        found = self.pools.get(pool_id)
        if found is None:
            raise ApiError(404, f"no worker pool {pool_id}")
        return found

    def node(self, node_id: str) -> NodeRecord:
        found = self.nodes.get(node_id)
        if found is None or not found.registered:
            raise ApiError(404, f"no node {node_id}")
        return found

    def schedule_auto_shutdown(self, compute: ComputeRecord, shutdown: AutoShutdown | None) -> None:
        """The compute requirement ends by itself ``shutdown.timeout`` from now (scaled), whatever
        becomes of its client (``ComputeRequirementTemplateUsage.autoShutdown``, SDK 15.9;
        ``compute_client.update_compute_requirement_auto_shutdown``: "restart its timeout from
        now"); a disabled one, never."""
        compute.requirement.autoShutdown = shutdown
        timeout = seconds(shutdown)
        if timeout is None:
            compute.auto_shutdown_at = compute.requirement.autoShutdownTime = None
            return
        scaled = timeout * self.config.time_scale
        compute.auto_shutdown_at = time.monotonic() + scaled
        compute.requirement.autoShutdownTime = now_utc() + timedelta(seconds=scaled)

    def compute_of(self, pool: PoolRecord) -> ComputeRecord:
        return self.computes[pool.pool.computeRequirementId or ""]

    def pool_nodes(self, pool: PoolRecord) -> list[NodeRecord]:
        """Its nodes still running, booting ones included."""
        return [n for n in self.nodes.values() if n.pool_id == pool.id and n.alive]

    def may_run(self, task: TaskRecord) -> bool:
        """Whether its work requirement and task group let it start now."""
        requirement = self.requirements[task.requirement_id]
        group = self.groups[task.group_id][1]
        return requirement.status is WorkRequirementStatus.RUNNING and group.status in OPEN_GROUP

    def waiting_for(self, pool: PoolRecord) -> int:
        """Tasks that could start now on a node of this pool and have none yet."""
        return sum(
            task.status is TaskStatus.READY
            and self.may_run(task)
            and runs_on(self.groups[task.group_id][1], pool.pool)
            for task in self.tasks.values()
        )


OPEN_GROUP = {TaskGroupStatus.PENDING, TaskGroupStatus.RUNNING}


def runs_on(group: TaskGroup, pool: ProvisionedWorkerPool) -> bool:
    """Whether a group's tasks may run on the pool's workers (its run specification's worker
    tags and namespaces)."""
    spec = group.runSpecification
    tag = pool.properties.workerTag if pool.properties is not None else None
    if spec.workerTags and tag not in spec.workerTags:
        return False
    return not spec.namespaces or pool.namespace in spec.namespaces


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def new_id(kind: str) -> str:
    return f"ydid:{kind}:{ACCOUNT}:{uuid.uuid4().hex}"


def check_name(what: str, name: str | None) -> str:
    """YellowDog's naming rules, for every name and tag: namespaces, tags, work requirements,
    task groups, tasks, worker pools, compute requirements (yellowdog-cli README, "Naming
    Rules")."""
    if not name or len(name) > MAX_NAME or not NAME_RULE.fullmatch(name):
        raise ApiError(
            400,
            f"{what} {name!r} is invalid: use lower-case letters, digits, '-' and '_', start "
            f"with a letter, end with a letter or digit, at most {MAX_NAME} characters",
        )
    return name


def one(query: Query, key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def many(query: Query, key: str) -> set[str] | None:
    values = query.get(key)
    return set(values) if values else None


def seconds(shutdown: AutoShutdown | None) -> float | None:
    if shutdown is None or not shutdown.enabled or shutdown.timeout is None:
        return None
    return shutdown.timeout.total_seconds()


def total(duration: timedelta | None) -> float | None:
    return duration.total_seconds() if duration is not None else None


def page(items: list[T], query: Query, default_size: int) -> Slice[T]:
    """One slice of a search's results, as the platform serves them (at most 1,000)."""
    try:
        offset = int(one(query, "sliceId") or 0)
        size = int(one(query, "size") or default_size)
    except ValueError:
        raise ApiError(400, "sliceId and size must be whole numbers") from None
    size = max(1, min(size, MAX_SLICE))
    following = offset + size if offset + size < len(items) else None
    return Slice(
        items=items[offset : offset + size],
        nextSliceId=str(following) if following is not None else None,
    )
