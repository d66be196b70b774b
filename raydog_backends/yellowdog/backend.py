"""The ``yellowdog`` compute backend: a Ray cluster as one YellowDog work requirement.

Each Ray node is one YellowDog task (its id is the Ray node id). The head's task and each worker
node type's tasks go to task groups of the cluster's work requirement; each node type gets one
provisioned worker pool from its compute requirement template, and the pool's worker tag is what
that type's task groups ask for. The platform's idle node and idle pool shutdowns are the safety
net: a node whose task was cancelled goes away by itself, and so does a pool nobody uses.

Costs, in API calls: launching N workers is O(1) (the tasks go in one request, the pool is resized
in one); ``describe`` is one task search, plus one node search per node type when it has to learn
new addresses or re-check that nodes are alive; addresses are cached once known.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import requests
from yellowdog_client.common import SearchClient
from yellowdog_client.model import (
    ApiKey,
    AutoShutdown,
    ComputeRequirementTemplateUsage,
    Node,
    NodeSearch,
    NodeStatus,
    NodeWorkerTarget,
    ProvisionedWorkerPoolProperties,
    RetryProperties,
    RunSpecification,
    ServicesSchema,
    SliceReference,
    Task,
    TaskGroup,
    TaskGroupStatus,
    TaskSearch,
    TaskStatus,
    WorkerPool,
    WorkerPoolSearch,
    WorkerPoolStatus,
    WorkRequirement,
    WorkRequirementSearch,
    WorkRequirementStatus,
)
from yellowdog_client.model.exceptions import BaseCustomException, InvalidRequestException
from yellowdog_client.platform_client import PlatformClient

from raydog_backends.yellowdog import credentials
from raydog_backends.yellowdog.names import SEPARATOR, ClusterNames, is_valid_name, stamp
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import (
    Check,
    ClusterSpec,
    ComputeBackend,
    LaunchRequest,
    NodeInfo,
    NodeState,
)
from raydog_core.progress import report

logger = logging.getLogger(__name__)

T = TypeVar("T")

TASK_TYPE = "bash"
TASK_SCRIPT_FILE = "taskdata.txt"
"""The YellowDog agent writes a bash task's data to this file; the task's argument names it."""
HEAD_GROUP_TAG = "ray-head"
WORKER_GROUP_TAG = "ray-worker"
API_ERRORS = (BaseCustomException, requests.RequestException)

LIVE_WORK_REQUIREMENT = [WorkRequirementStatus.RUNNING, WorkRequirementStatus.HELD]
UNFINISHED_WORK_REQUIREMENT = [s for s in WorkRequirementStatus if not s.finished]
OPEN_GROUP = {TaskGroupStatus.PENDING, TaskGroupStatus.RUNNING}
LIVE_TASK = [s for s in TaskStatus if not s.finished]
ALLOCATED_TASK = {s for s in TaskStatus if s.in_progress}
LIVE_POOL = [s for s in WorkerPoolStatus if not s.finished]
LIVE_NODE = [s for s in NodeStatus if s.active]
PROGRESS_SECONDS = 30.0
MAX_POLL_SECONDS = 5.0
AGENT_HOME = "/opt/yellowdog/agent"
AGENT_INSTALLER = (
    "https://raw.githubusercontent.com/yellowdog/resources/refs/heads/main"
    "/agent-install/linux/yd-agent-installer.sh"
)
REFUSALS = (400, 404, 409)

NODE_CONFIG_KEYS: dict[str, type] = {
    "compute_requirement_template": str,
    "images_id": str,
    "userdata": str,
    "extra_userdata": str,
    "metrics_enabled": bool,
}


@dataclass(frozen=True)
class NodeTypeConfig:
    """A node type's ``node_config``, checked."""

    template: str
    images_id: str | None = None
    userdata: str | None = None
    metrics_enabled: bool = False


@dataclass(frozen=True)
class _Group:
    id: str
    node_type: str
    is_head: bool
    is_open: bool
    worker_tag: str


@dataclass
class _Cluster:
    """The cluster's work requirement as last read, and what its task groups are for."""

    work_requirement: WorkRequirement
    generation: str
    groups: dict[str, _Group] = field(default_factory=dict)

    @property
    def id(self) -> str:
        assert self.work_requirement.id is not None
        return self.work_requirement.id


@dataclass(frozen=True)
class _Address:
    private: str | None
    public: str | None


@dataclass(frozen=True)
class _CapacityChange:
    """What launching did to a pool, so that a failed launch can undo it."""

    pool_id: str
    pool_name: str
    provisioned: bool
    previous_size: int


class YellowDogComputeBackend(ComputeBackend):
    """Ray nodes as YellowDog tasks on provisioned worker pools (see the module docstring)."""

    runs_node_setup = True  # the agent takes tasks before the rest of the setup has finished

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        cluster_namespace: str = "default",
        cluster_tag: str | None = None,
        cluster_lifetime_hours: float = 24.0,
        head_node_build_timeout_minutes: float = 20.0,
        idle_node_shutdown_minutes: float = 1.0,
        idle_pool_shutdown_minutes: float = 10.0,
        node_recheck_seconds: float = 30.0,
        api_url: str | None = None,
        api_max_attempts: int = 3,
    ) -> None:
        """The provider section's options, checked; no I/O."""
        super().__init__(spec)
        self.names = ClusterNames.for_cluster(spec.cluster_name, list(spec.node_types))
        _check_name("cluster_namespace", cluster_namespace)
        if cluster_tag is not None:
            _check_name("cluster_tag", cluster_tag)
        for option, value in (
            ("cluster_lifetime_hours", cluster_lifetime_hours),
            ("head_node_build_timeout_minutes", head_node_build_timeout_minutes),
            ("idle_node_shutdown_minutes", idle_node_shutdown_minutes),
            ("idle_pool_shutdown_minutes", idle_pool_shutdown_minutes),
            ("node_recheck_seconds", node_recheck_seconds),
        ):
            if value <= 0:
                raise ConfigError(option, f"must be greater than 0, got {value!r}")
        if api_max_attempts < 1:
            raise ConfigError("api_max_attempts", f"must be at least 1, got {api_max_attempts!r}")
        if api_url is not None and not api_url.startswith(("http://", "https://")):
            raise ConfigError("api_url", f"expected an http(s) URL, got {api_url!r}")
        self.namespace = cluster_namespace
        self.tag = cluster_tag or self.names.cluster
        self.lifetime = timedelta(hours=cluster_lifetime_hours)
        self.build_timeout = timedelta(minutes=head_node_build_timeout_minutes)
        self.idle_node_shutdown = timedelta(minutes=idle_node_shutdown_minutes)
        self.idle_pool_shutdown = timedelta(minutes=idle_pool_shutdown_minutes)
        self.node_recheck_seconds = node_recheck_seconds
        self.api_url = api_url
        self.api_max_attempts = api_max_attempts
        self.node_configs = {
            name: _node_type_config(name, node_type.node_config)
            for name, node_type in spec.node_types.items()
        }
        self._client: PlatformClient | None = None
        self._client_lock = threading.Lock()
        self._launch_lock = threading.RLock()
        self._state_lock = threading.RLock()
        self._cluster: _Cluster | None = None
        self._pool_ids: dict[tuple[str, str], str] = {}
        self._addresses: dict[str, _Address] = {}
        self._worker_nodes: dict[str, str] = {}
        self._lost_nodes: set[str] = set()
        self._checked_at: dict[str, float] = {}
        self._head_addresses: dict[str, _Address] = {}
        self._seen: dict[str, NodeInfo] = {}

    # --- the ComputeBackend interface ----------------------------------------------------

    def launch(self, request: LaunchRequest) -> list[str]:
        if request.node_type not in self.node_configs:
            raise BackendError(
                "launch", f"node type {request.node_type!r}", "not in available_node_types"
            )
        if request.count < 1:
            return []
        if request.is_head:
            return self._launch_head(request.node_type)
        return self._launch_workers(request.node_type, request.count)

    def describe(self) -> list[NodeInfo]:
        cluster = self._attach(refresh=False)
        if cluster is None:
            return self._ended([])
        search = TaskSearch(workRequirementId=cluster.id, statuses=LIVE_TASK)
        tasks = self._call(
            "describe", self._what(), lambda: _all(self._api().work_client.get_tasks(search))
        )
        if not tasks:
            with self._state_lock:
                self._cluster = None
            return self._ended([])
        if any(task.taskGroupId not in cluster.groups for task in tasks):
            cluster = self._attach(refresh=True) or cluster
        self._check_nodes(cluster, tasks)
        nodes = [info for task in tasks if (info := self._node_info(cluster, task)) is not None]
        self._forget_addresses_except(tasks)
        return self._ended(nodes)

    def terminate(self, node_ids: Collection[str]) -> None:
        failures = []
        for node_id in dict.fromkeys(node_ids):
            try:
                self._api().work_client.cancel_task_by_id(node_id, True)
            except API_ERRORS as exc:
                if not _is_refusal(exc):
                    failures.append(f"{node_id}: {_reason(exc)}")
        if failures:
            raise BackendError("terminate", f"nodes of {self._what()}", "; ".join(failures))

    def shutdown(self) -> None:
        with self._launch_lock:
            cleaned, failures = self._shutdown_everything()
        if failures:
            raise BackendError("shut down", self._what(), "; ".join(failures), cleaned)

    def preflight(self) -> list[Check]:
        """``raydog doctor``: the key is found and accepted; no pool outlived its cluster."""
        try:
            self._api()
        except BackendError as exc:
            return [Check("yellowdog credentials", False, exc.reason, "set them, or add a .env")]
        found = credentials.load(self.spec.cluster_name, os.environ, self.api_url)
        checks = [Check("yellowdog credentials", True, f"key {found.key_id} from {found.source}")]
        try:
            requirements = self._cluster_work_requirements(LIVE_WORK_REQUIREMENT)
            pools = self._cluster_pools()
        except BackendError as exc:
            fix = "check YD_API_URL, YD_API_KEY_ID and YD_API_KEY_SECRET"
            return [*checks, Check("yellowdog api", False, f"{found.url}: {exc.reason}", fix)]
        checks.append(
            Check(
                "yellowdog api",
                True,
                f"{found.url} accepts the key; namespace {self.namespace}: "
                f"{len(requirements)} running work requirement(s), {len(pools)} live pool(s) "
                "of this cluster",
            )
        )
        if pools and not requirements:
            names = ", ".join(str(pool.name) for pool in pools)
            checks.append(
                Check(
                    "yellowdog leftovers",
                    False,
                    f"worker pools without a running cluster: {names}",
                    "ray down removes them",
                )
            )
        return checks

    def node_setup_script(self, node_type: str, common: str) -> str:
        """The YellowDog agent first: it runs the node's task and creates the ``yd-agent``
        user that the core's part gives the SSH key to. Skipped if the image has the agent."""
        lines = common.splitlines(keepends=True)
        shebang = lines.pop(0) if lines and lines[0].startswith("#!") else "#!/usr/bin/env bash\n"
        agent = (
            "# The YellowDog agent, which runs this node's Ray task\n"
            f"if [ ! -d {AGENT_HOME} ]; then\n"
            f"  curl -LsSf {AGENT_INSTALLER} | bash\n"
            "fi\n\n"
        )
        return shebang + agent + "".join(lines)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # --- launching -----------------------------------------------------------------------

    def _launch_head(self, node_type: str) -> list[str]:
        deadline = time.monotonic() + self.build_timeout.total_seconds()
        creating = False
        cluster: _Cluster | None = None
        capacity: _CapacityChange | None = None
        try:
            with self._launch_lock:
                cluster = self._attach(refresh=True)
                if cluster is None:
                    creating = True  # before the call: an interrupted request may still succeed
                    cluster = self._create_cluster(node_type)
                group = self._open_group(cluster, node_type, head=True)
                if creating:  # a new generation has no pool yet
                    capacity = self._provision_pool(cluster, node_type, 1)
                else:
                    capacity = self._add_capacity(cluster, node_type, 1)
                (task_id,) = self._add_tasks(group, node_type, 1, head_ip=None)
            address = self._wait_until_running(task_id, deadline)
            with self._state_lock:
                self._head_addresses[cluster.work_requirement.id or ""] = address
            return [task_id]
        except BaseException as exc:
            cleaned = self._undo_head_launch(cluster, creating, capacity)
            if isinstance(exc, BackendError):
                raise BackendError(
                    exc.action, exc.resource, exc.reason, (*exc.cleaned_up, *cleaned)
                ) from exc
            if isinstance(exc, Exception):
                raise BackendError(
                    "launch", f"the head node of {self._what()}", _reason(exc), cleaned
                ) from exc
            raise

    def _launch_workers(self, node_type: str, count: int) -> list[str]:
        with self._launch_lock:
            cluster = self._attach(refresh=True)
            if cluster is None:
                raise BackendError(
                    "launch",
                    f"{count} {node_type!r} node(s) of {self._what()}",
                    "the cluster has no running work requirement: launch the head first",
                )
            head_ip = self._head_private_ip(cluster)
            group = self._open_group(cluster, node_type, head=False)
            capacity = self._add_capacity(cluster, node_type, count)
            try:
                try:
                    return self._add_tasks(group, node_type, count, head_ip)
                except BackendError:
                    reopened = self._reopened(group)
                    if reopened is None:
                        raise
                    return self._add_tasks(reopened, node_type, count, head_ip)
            except BaseException as exc:
                cleaned = self._undo_capacity(capacity)
                if isinstance(exc, BackendError):
                    raise BackendError(exc.action, exc.resource, exc.reason, cleaned) from exc
                raise

    def _create_cluster(self, head_type: str) -> _Cluster:
        generation = stamp()
        name = self.names.work_requirement(generation)
        requirement = WorkRequirement(
            namespace=self.namespace,
            name=name,
            tag=self.tag,
            taskGroups=[self._task_group(generation, head_type, 1, head=True)],
        )
        made = self._call(
            "create",
            f"work requirement {name}",
            lambda: self._api().work_client.add_work_requirement(requirement),
        )
        logger.info("YellowDog: created work requirement %s for %s", name, self._what())
        return self._remember(made)

    def _task_group(self, generation: str, node_type: str, number: int, head: bool) -> TaskGroup:
        return TaskGroup(
            name=self.names.task_group(node_type, number),
            tag=HEAD_GROUP_TAG if head else WORKER_GROUP_TAG,
            runSpecification=RunSpecification(
                taskTypes=[TASK_TYPE],
                workerTags=[self.names.worker_tag(generation, node_type)],
                namespaces=[self.namespace],
                taskTimeout=self.lifetime,
                maximumTaskRetries=0,
            ),
            finishIfAllTasksFinished=True,
            finishIfAnyTaskFailed=False,
        )

    def _open_group(self, cluster: _Cluster, node_type: str, head: bool) -> _Group:
        """A task group of this type that can take tasks; a new one if every old one finished."""
        for group in cluster.groups.values():
            if group.node_type == node_type and group.is_head == head and group.is_open:
                return group
        requirement = copy.copy(cluster.work_requirement)  # the cache keeps no unsent group
        groups = list(requirement.taskGroups or [])
        new_group = self._task_group(cluster.generation, node_type, len(groups) + 1, head)
        requirement.taskGroups = [*groups, new_group]
        updated = self._call(
            "add task group",
            f"{new_group.name} to work requirement {requirement.name}",
            lambda: self._api().work_client.update_work_requirement(requirement),
        )
        cluster = self._remember(updated)
        for made in updated.taskGroups or []:
            if made.name == new_group.name and made.id in cluster.groups:
                return cluster.groups[made.id]
        raise BackendError(
            "add task group", new_group.name, "YellowDog did not return the new task group"
        )

    def _reopened(self, group: _Group) -> _Group | None:
        """After a failed add: a new group if this one finished meanwhile, else None."""
        cluster = self._attach(refresh=True)
        if cluster is not None:
            current = cluster.groups.get(group.id)
            if current is not None and not current.is_open:
                return self._open_group(cluster, group.node_type, group.is_head)
        return None

    def _add_capacity(self, cluster: _Cluster, node_type: str, count: int) -> _CapacityChange:
        pool = self._live_pool(cluster, node_type)
        if pool is None:
            return self._provision_pool(cluster, node_type, count)
        assert pool.id is not None and pool.name is not None
        pool_id = pool.id
        previous = pool.expectedNodeCount or 0
        change = _CapacityChange(pool_id, pool.name, False, previous)
        try:
            self._call(
                "resize",
                f"worker pool {pool.name}",
                lambda: self._api().worker_pool_client.resize_worker_pool_by_id(
                    pool_id, previous + count
                ),
            )
        except BaseException:
            self._undo_capacity(change)  # the resize may have happened, its answer lost
            raise
        return change

    def _userdata(self, node_type: str, userdata: str | None) -> str | None:
        """The node type's userdata; the head's gains the tag store server's install."""
        if node_type != self.spec.head_node_type or not self.spec.head_setup:
            return userdata
        return "\n".join(part for part in (userdata or "#!/bin/bash", self.spec.head_setup) if part)

    def _provision_pool(self, cluster: _Cluster, node_type: str, count: int) -> _CapacityChange:
        config = self.node_configs[node_type]
        name = self.names.pool(cluster.generation, node_type, stamp())
        usage = ComputeRequirementTemplateUsage(
            templateId=config.template,
            requirementName=name,
            requirementNamespace=self.namespace,
            requirementTag=self.tag,
            targetInstanceCount=count,
            imagesId=config.images_id,
            userData=self._userdata(node_type, config.userdata),
            instanceTags={
                "raydog-cluster": self.names.cluster,
                "raydog-node-type": self.names.node_types[node_type],
            },
        )
        properties = ProvisionedWorkerPoolProperties(
            createNodeWorkers=NodeWorkerTarget.per_node(1),
            minNodes=0,
            nodeBootTimeout=self.build_timeout,
            idleNodeShutdown=AutoShutdown(enabled=True, timeout=self.idle_node_shutdown),
            idlePoolShutdown=AutoShutdown(enabled=True, timeout=self.idle_pool_shutdown),
            workerTag=self.names.worker_tag(cluster.generation, node_type),
            metricsEnabled=config.metrics_enabled,
        )
        try:
            pool = self._call(
                "provision",
                f"worker pool {name}",
                lambda: self._api().worker_pool_client.provision_worker_pool(usage, properties),
            )
        except BaseException:
            self._shut_down_pool_named(name)  # the pool may exist, its answer lost
            raise
        assert pool.id is not None
        logger.info("YellowDog: provisioned worker pool %s (%d node(s))", name, count)
        with self._state_lock:
            self._pool_ids[(cluster.generation, node_type)] = pool.id
        return _CapacityChange(pool.id, name, True, 0)

    def _live_pool(self, cluster: _Cluster, node_type: str) -> WorkerPool | None:
        """This generation's live pool for a node type: by its remembered id, else by search."""
        key = (cluster.generation, node_type)
        with self._state_lock:
            pool_id = self._pool_ids.get(key)
        if pool_id is None:
            candidates = sorted(
                (summary.name or "", summary.id)
                for summary in self._cluster_pools()
                if self.names.parse_pool(summary.name) == key and summary.id
            )
            if not candidates:
                return None
            pool_id = candidates[-1][1]
        found_id = pool_id
        pool = self._call(
            "read",
            f"worker pool {found_id}",
            lambda: self._api().worker_pool_client.get_worker_pool_by_id(found_id),
        )
        with self._state_lock:
            if pool.status is not None and pool.status.finished:
                self._pool_ids.pop(key, None)
                return None
            self._pool_ids[key] = found_id
        return pool

    def _add_tasks(
        self, group: _Group, node_type: str, count: int, head_ip: str | None
    ) -> list[str]:
        environment = {
            "RAYDOG_CLUSTER_NAME": self.spec.cluster_name,
            "RAYDOG_NODE_TYPE": node_type,
        }
        if head_ip is not None:
            environment["RAY_HEAD_IP"] = head_ip
        script = _task_script(self.spec.head_script if group.is_head else self.spec.worker_script)
        tasks = [
            Task(
                taskType=TASK_TYPE,
                taskData=script,
                arguments=[TASK_SCRIPT_FILE],
                environment=dict(environment),
            )
            for _ in range(count)
        ]
        made = self._call(
            "add",
            f"{count} {node_type!r} task(s) to task group {group.id}",
            lambda: self._api().work_client.add_tasks_to_task_group_by_id(group.id, tasks),
        )
        ids = [task.id for task in made if task.id is not None]
        if len(ids) != count:
            raise BackendError("add", f"{count} tasks", f"YellowDog returned {len(ids)} task ids")
        return ids

    def _wait_until_running(self, task_id: str, deadline: float) -> _Address:
        """Poll the head's task (backing off) until it executes on a node whose IPs are known.

        A status line goes to Ray's CLI output when the task's status changes, and every
        ``PROGRESS_SECONDS`` while it does not, so `ray up` shows the instance booting.
        """
        delay = 0.1
        started = time.monotonic()
        shown: tuple[object, float] = (None, started)
        report(
            "waiting for the head node of %s (task %s; up to %g minutes)",
            self._what(),
            task_id,
            self.build_timeout.total_seconds() / 60,
        )
        while True:
            task = self._call(
                "read",
                f"head task {task_id}",
                lambda: self._api().work_client.get_task_by_id(task_id),
            )
            status = task.status
            if status is not None and (status.finished or status is TaskStatus.UPLOADING):
                raise BackendError(
                    "launch",
                    f"the head node of {self._what()}",
                    f"its task is {status}{_errors(task)}",
                )
            if status is TaskStatus.EXECUTING:
                address = self._address_of(task)
                if address is not None and address.private:
                    report("the head node runs at %s", address.public or address.private)
                    return address
            now = time.monotonic()
            if status != shown[0] or now - shown[1] >= PROGRESS_SECONDS:
                report("head task %s after %.0f s", status, now - started)
                shown = (status, now)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(
                    "launch",
                    f"the head node of {self._what()}",
                    f"not running after {self.build_timeout.total_seconds() / 60:g} minutes "
                    f"(head_node_build_timeout_minutes); its task is {status}",
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_POLL_SECONDS)

    def _head_private_ip(self, cluster: _Cluster) -> str:
        with self._state_lock:
            known = self._head_addresses.get(cluster.id)
        if known is not None and known.private:
            return known.private
        head_groups = [g.id for g in cluster.groups.values() if g.is_head]
        for group_id in reversed(head_groups):
            search = TaskSearch(
                workRequirementId=cluster.id, taskGroupId=group_id, statuses=[TaskStatus.EXECUTING]
            )
            tasks = self._call(
                "find",
                f"the head node of {self._what()}",
                lambda search=search: _all(self._api().work_client.get_tasks(search)),  # type: ignore[misc]
            )
            for task in tasks:
                address = self._address_of(task)
                if address is not None and address.private:
                    with self._state_lock:
                        self._head_addresses[cluster.id] = address
                    return address.private
        raise BackendError("launch", f"workers of {self._what()}", "the head node is not running")

    # --- undoing -------------------------------------------------------------------------

    def _undo_head_launch(
        self, cluster: _Cluster | None, creating: bool, capacity: _CapacityChange | None
    ) -> list[str]:
        """Leave nothing billable that this launch made; never raises an API error."""
        if creating:
            cleaned, failures = self._shutdown_everything()
            for failure in failures:
                logger.warning("YellowDog: cleaning up after a failed head launch: %s", failure)
            return cleaned
        cleaned = []
        if cluster is not None:
            cleaned += self._cancel_head_tasks(cluster)
        if capacity is not None:
            cleaned += self._undo_capacity(capacity)
        return cleaned

    def _cancel_head_tasks(self, cluster: _Cluster) -> list[str]:
        """Cancel every unfinished head task, including one whose creation was interrupted."""
        cancelled = []
        for group in cluster.groups.values():
            if not group.is_head:
                continue
            try:
                tasks = _all(
                    self._api().work_client.get_tasks(
                        TaskSearch(
                            workRequirementId=cluster.id, taskGroupId=group.id, statuses=LIVE_TASK
                        )
                    )
                )
                for task in tasks:
                    if task.id is not None:
                        self._api().work_client.cancel_task_by_id(task.id, True)
                        cancelled.append(f"head task {task.id}")
            except API_ERRORS as exc:
                logger.warning("YellowDog: could not cancel head tasks: %s", _reason(exc))
        return cancelled

    def _undo_capacity(self, change: _CapacityChange) -> list[str]:
        client = self._api().worker_pool_client
        try:
            if change.provisioned:
                client.shutdown_worker_pool_by_id(change.pool_id)
                with self._state_lock:
                    self._pool_ids = {
                        key: pool for key, pool in self._pool_ids.items() if pool != change.pool_id
                    }
                return [f"worker pool {change.pool_name}"]
            client.resize_worker_pool_by_id(change.pool_id, change.previous_size)
            return [f"worker pool {change.pool_name} resized back to {change.previous_size}"]
        except API_ERRORS as exc:
            logger.warning(
                "YellowDog: could not undo the change to worker pool %s: %s (its idle "
                "node shutdown will remove unused nodes)",
                change.pool_name,
                _reason(exc),
            )
            return []

    def _shut_down_pool_named(self, name: str) -> None:
        try:
            for summary in self._cluster_pools():
                if summary.name == name and summary.id is not None:
                    self._api().worker_pool_client.shutdown_worker_pool_by_id(summary.id)
                    logger.info("YellowDog: shut down worker pool %s after a failure", name)
        except (BackendError, *API_ERRORS) as exc:
            logger.warning("YellowDog: could not look for worker pool %s: %s", name, exc)

    def _shutdown_everything(self) -> tuple[list[str], list[str]]:
        """Cancel every unfinished work requirement and shut down every live pool of the cluster.

        Found by name in every generation, so whatever an interrupted launch left is found too.
        """
        cleaned: list[str] = []
        failures: list[str] = []
        client = self._api()
        try:
            requirements = self._cluster_work_requirements(UNFINISHED_WORK_REQUIREMENT)
        except BackendError as exc:
            requirements = []
            failures.append(str(exc))
        for summary in requirements:
            assert summary.id is not None
            try:
                client.work_client.cancel_work_requirement_by_id(summary.id, True)
                cleaned.append(f"work requirement {summary.name}")
            except API_ERRORS as exc:
                if not _is_refusal(exc):
                    failures.append(f"cancel work requirement {summary.name}: {_reason(exc)}")
        try:
            pools = self._cluster_pools()
        except BackendError as exc:
            pools = []
            failures.append(str(exc))
        for pool in pools:
            assert pool.id is not None
            try:
                client.worker_pool_client.shutdown_worker_pool_by_id(pool.id)
                cleaned.append(f"worker pool {pool.name}")
            except API_ERRORS as exc:
                if not _is_refusal(exc):
                    failures.append(f"shut down worker pool {pool.name}: {_reason(exc)}")
        with self._state_lock:
            self._cluster = None
            self._pool_ids.clear()
            self._head_addresses.clear()
        if cleaned:
            logger.info("YellowDog: shut down %s: %s", self._what(), ", ".join(cleaned))
        return cleaned, failures

    # --- finding the cluster -------------------------------------------------------------

    def _attach(self, refresh: bool) -> _Cluster | None:
        """The cluster's live work requirement: remembered, re-read (``refresh``), or found."""
        with self._state_lock:
            cluster = self._cluster
        if cluster is not None and not refresh:
            return cluster
        if cluster is not None:
            known_id = cluster.id
            requirement = self._call(
                "read",
                f"work requirement {cluster.work_requirement.name}",
                lambda: self._api().work_client.get_work_requirement_by_id(known_id),
            )
            if requirement.status in LIVE_WORK_REQUIREMENT:
                return self._remember(requirement)
            with self._state_lock:
                self._cluster = None
        found = self._cluster_work_requirements(LIVE_WORK_REQUIREMENT)
        if not found:
            return None
        newest = max(found, key=lambda summary: self.names.generation_of(summary.name) or "")
        newest_id = newest.id
        assert newest_id is not None
        requirement = self._call(
            "read",
            f"work requirement {newest.name}",
            lambda: self._api().work_client.get_work_requirement_by_id(newest_id),
        )
        return self._remember(requirement)

    def _remember(self, requirement: WorkRequirement) -> _Cluster:
        generation = self.names.generation_of(requirement.name)
        assert generation is not None
        types_by_tag = {
            self.names.worker_tag(generation, node_type): node_type
            for node_type in self.spec.node_types
        }
        cluster = _Cluster(requirement, generation)
        for group in requirement.taskGroups or []:
            tags = group.runSpecification.workerTags or []
            tag = next((t for t in tags if t in types_by_tag), None)
            node_type = types_by_tag.get(tag or "")
            if tag is None and tags and not self.spec.node_types and group.name:
                # A provider Ray builds from the raw YAML (`ray get-head-ip`) knows no node
                # types; it only looks, so the type's YellowDog form (its group's name) will do.
                tag, node_type = tags[0], group.name.rsplit(SEPARATOR, 1)[0]
            if group.id is None or tag is None or node_type is None:
                continue
            is_open = group.status is None or group.status in OPEN_GROUP
            cluster.groups[group.id] = _Group(
                group.id, node_type, group.tag == HEAD_GROUP_TAG, is_open, tag
            )
        with self._state_lock:
            self._cluster = cluster
        return cluster

    def _cluster_work_requirements(self, statuses: list[WorkRequirementStatus]) -> list[Any]:
        search = WorkRequirementSearch(namespaces=[self.namespace], statuses=statuses)
        found = self._call(
            "find",
            f"work requirements of {self._what()}",
            lambda: _all(self._api().work_client.get_work_requirements(search)),
        )
        return [
            summary
            for summary in found
            if summary.id and self.names.generation_of(summary.name) is not None
        ]

    def _cluster_pools(self) -> list[Any]:
        """Every live worker pool of this cluster, of any generation."""
        search = WorkerPoolSearch(namespaces=[self.namespace], statuses=LIVE_POOL)
        found = self._call(
            "find",
            f"worker pools of {self._what()}",
            lambda: _all(self._api().worker_pool_client.get_worker_pools(search)),
        )
        return [
            summary
            for summary in found
            if summary.id and self.names.parse_pool(summary.name) is not None
        ]

    # --- describing ----------------------------------------------------------------------

    def _check_nodes(self, cluster: _Cluster, tasks: list[Task]) -> None:
        """One node search per node type (worker tag) that has a new address to learn or is due
        a check."""
        now = time.monotonic()
        allocated: dict[str, list[Task]] = {}
        for task in tasks:
            group = cluster.groups.get(task.taskGroupId or "")
            if group is not None and task.status in ALLOCATED_TASK:
                allocated.setdefault(group.worker_tag, []).append(task)
        for tag, typed in allocated.items():
            with self._state_lock:
                unknown = any(self._node_of(task) not in self._addresses for task in typed)
                checked = self._checked_at.get(tag, float("-inf"))
                due = now - checked >= self.node_recheck_seconds
            if not (unknown or due):
                continue
            nodes = self._call(
                "find",
                f"nodes tagged {tag}",
                lambda tag=tag: _all(  # type: ignore[misc]
                    self._api().worker_pool_client.get_nodes(
                        NodeSearch(workerTag=tag, statuses=LIVE_NODE)
                    )
                ),
            )
            with self._state_lock:
                for node in nodes:
                    self._learn(node)
                live = {node.id for node in nodes}
                for task in typed:
                    node_id = self._node_of(task)
                    if node_id is not None and node_id not in live:
                        self._lost_nodes.add(node_id)
                self._checked_at[tag] = now

    def _node_info(self, cluster: _Cluster, task: Task) -> NodeInfo | None:
        group = cluster.groups.get(task.taskGroupId or "")
        if group is None or task.id is None:
            return None
        with self._state_lock:
            node_id = self._node_of(task)
            address = self._addresses.get(node_id) if node_id else None
            lost = node_id in self._lost_nodes
        status = task.status

        def info(state: NodeState, detail: str, at: _Address | None = None) -> NodeInfo:
            assert task.id is not None
            return NodeInfo(
                task.id,
                group.node_type,
                group.is_head,
                state,
                at.private if at else None,
                at.public if at else None,
                detail,
            )

        if lost:
            self._cancel_quietly(task.id)
            return info(NodeState.TERMINATED, f"YellowDog node {node_id} lost", address)
        if status is TaskStatus.UPLOADING:
            return info(NodeState.TERMINATED, "task script ended", address)
        if status is TaskStatus.EXECUTING and address is not None and address.private:
            if group.is_head:
                with self._state_lock:
                    self._head_addresses[cluster.id] = address
            return info(NodeState.RUNNING, f"task {status} on node {node_id}", address)
        return info(NodeState.PENDING, f"task {status}")

    def _ended(self, nodes: list[NodeInfo]) -> list[NodeInfo]:
        """``nodes``, plus once each node seen live before whose task is no longer live."""
        with self._state_lock:
            current = {node.node_id for node in nodes}
            ended = [
                NodeInfo(
                    node.node_id,
                    node.node_type,
                    node.is_head,
                    NodeState.TERMINATED,
                    node.internal_ip,
                    node.external_ip,
                    "its task ended (completed, failed or cancelled)",
                )
                for node in self._seen.values()
                if node.node_id not in current
            ]
            self._seen = {n.node_id: n for n in nodes if n.state is not NodeState.TERMINATED}
        return nodes + ended

    def _cancel_quietly(self, task_id: str) -> None:
        """A task whose node is lost must not come back as a node Ray no longer knows."""
        try:
            self._api().work_client.cancel_task_by_id(task_id, True)
        except API_ERRORS as exc:
            logger.debug("YellowDog: cancelling task %s of a lost node: %s", task_id, _reason(exc))

    def _address_of(self, task: Task) -> _Address | None:
        """A task's node addresses: cached, else one read of its node."""
        with self._state_lock:
            node_id = self._node_of(task)
            if node_id is not None and node_id in self._addresses:
                return self._addresses[node_id]
        client = self._api().worker_pool_client
        if node_id is not None:
            known = node_id
            node = self._call("read", f"node {node_id}", lambda: client.get_node_by_id(known))
        elif task.workerId is not None:
            worker = task.workerId
            node = self._call(
                "read", f"node of worker {worker}", lambda: client.get_node_by_worker_id(worker)
            )
        else:
            return None
        with self._state_lock:
            return self._learn(node)

    def _learn(self, node: Node) -> _Address:
        details = node.details
        address = _Address(
            details.privateIpAddress if details else None,
            details.publicIpAddress if details else None,
        )
        if node.id is not None:
            self._addresses[node.id] = address
            for worker in node.workers or []:
                if worker.id is not None:
                    self._worker_nodes[worker.id] = node.id
        return address

    def _node_of(self, task: Task) -> str | None:
        if task.nodeId is not None:
            return task.nodeId
        return self._worker_nodes.get(task.workerId or "")

    def _forget_addresses_except(self, tasks: list[Task]) -> None:
        """Keep the caches as small as the cluster: only nodes that live tasks run on."""
        with self._state_lock:
            in_use = {node for task in tasks if (node := self._node_of(task)) is not None}
            self._addresses = {n: a for n, a in self._addresses.items() if n in in_use}
            self._worker_nodes = {w: n for w, n in self._worker_nodes.items() if n in in_use}
            self._lost_nodes &= in_use

    # --- plumbing ------------------------------------------------------------------------

    def _api(self) -> PlatformClient:
        with self._client_lock:
            if self._client is None:
                found = credentials.load(self.spec.cluster_name, os.environ, self.api_url)
                # The SDK hands maxAttempts to urllib3 as the number of retries.
                retry = RetryProperties(maxAttempts=self.api_max_attempts - 1)
                schema = ServicesSchema(defaultUrl=found.url, retry=retry)
                self._client = PlatformClient.create(schema, ApiKey(found.key_id, found.secret))
            return self._client

    def _call(self, action: str, resource: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except API_ERRORS as exc:
            raise BackendError(action, resource, _reason(exc)) from exc

    def _what(self) -> str:
        return f"cluster {self.spec.cluster_name!r} (YellowDog namespace {self.namespace})"


def _node_type_config(name: str, node_config: Mapping[str, Any]) -> NodeTypeConfig:
    path = f"available_node_types.{name}.node_config"
    for key, value in node_config.items():
        expected = NODE_CONFIG_KEYS.get(key)
        if expected is None:
            raise ConfigError(
                f"{path}.{key}", "not a node_config key of the yellowdog backend", NODE_CONFIG_KEYS
            )
        required_text = key in ("compute_requirement_template", "images_id")
        if not isinstance(value, expected) or (required_text and not value):
            kind = "true or false" if expected is bool else "text"
            kind = "non-empty text" if required_text else kind
            raise ConfigError(f"{path}.{key}", f"expected {kind}, got {value!r}")
    template = node_config.get("compute_requirement_template")
    if template is None:
        raise ConfigError(
            f"{path}.compute_requirement_template",
            "missing: the id or name of the YellowDog compute requirement template "
            "that this node type's instances are made from",
        )
    parts = [node_config.get("userdata"), node_config.get("extra_userdata")]
    userdata = "\n".join(part.rstrip("\n") for part in parts if part) or None
    return NodeTypeConfig(
        template, node_config.get("images_id"), userdata, node_config.get("metrics_enabled", False)
    )


def _check_name(option: str, value: str) -> None:
    if not is_valid_name(value):
        raise ConfigError(
            option,
            f"{value!r} is not a YellowDog name: lower-case letters, digits, '-' and '_', "
            "starting with a letter, ending with a letter or digit, at most 60 characters",
        )


def _task_script(script: str) -> str:
    """The node's script, told its Ray node id: its task's id, which only the agent knows."""
    lines = script.splitlines(keepends=True)
    shebang = lines.pop(0) if lines and lines[0].startswith("#!") else "#!/usr/bin/env bash\n"
    return f'{shebang}export RAYDOG_NODE_ID="$YD_TASK_ID"\n{"".join(lines)}'


def _all(search: SearchClient[T]) -> list[T]:
    """Every item of a sliced search, in slices as large as YellowDog allows."""
    items: list[T] = []
    reference = SliceReference(size=SliceReference.MAX_SIZE)
    while True:
        page = search.slice(reference)
        items.extend(page.items or [])
        if not page.nextSliceId:
            return items
        reference = SliceReference(page.nextSliceId, SliceReference.MAX_SIZE)


def _is_refusal(exc: BaseException) -> bool:
    """YellowDog refused the request as such (unknown id, already finished), not a fault."""
    if isinstance(exc, InvalidRequestException):
        return True
    response = getattr(exc, "response", None)
    return isinstance(exc, requests.HTTPError) and getattr(response, "status_code", 0) in REFUSALS


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _errors(task: Task) -> str:
    messages = [error.error for error in task.errors or [] if error.error]
    return f" ({'; '.join(messages)})" if messages else ""
