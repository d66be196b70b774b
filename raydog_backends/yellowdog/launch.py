"""Launching Ray nodes as YellowDog tasks, and undoing a launch that failed half way.

Each launch request names its tasks ``<cluster>_<node type>_<launch>_<index>`` and keeps Ray's
launch config hash in each task's tag (behind ``ray-``: see ``names.py``). The tasks go in one
request that the SDK does not retry: the backend retries it itself, and after a failed attempt
looks its names up first, so a request that was applied but whose reply was lost is recognised,
never sent twice, never left behind.

Task groups are made once per node type and reused (they do not finish when their tasks have),
so a long-lived cluster stays far below the 1,000 groups a work requirement may hold
(``WorkRequirement.TASK_GROUPS_MAX``). Every group sets ``disablePreallocation``: a Ray node's
task never ends, so a task pre-allocated to a busy node's local queue would never start
(``RunSpecification.disablePreallocation``, SDK 13.1).
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Callable

from yellowdog_client.model import (
    RetryPolicy,
    RetryProperties,
    RunSpecification,
    Task,
    TaskGroup,
    TaskSearch,
    TaskStatus,
    WorkRequirement,
)

from raydog_backends.yellowdog.api import (
    API_ERRORS,
    MAX_TASKS_PER_ADD,
    Api,
    all_items,
    call,
    is_duplicate_task_name,
    is_refusal,
    is_too_many_requests,
    reason,
    retry_after,
)
from raydog_backends.yellowdog.cluster import (
    HEAD_GROUP_TAG,
    WORKER_GROUP_TAG,
    Cluster,
    Clusters,
    Group,
)
from raydog_backends.yellowdog.heads import MAX_POLL_SECONDS, Heads
from raydog_backends.yellowdog.names import launch_id, launch_tag, stamp
from raydog_backends.yellowdog.options import Options
from raydog_backends.yellowdog.pools import CapacityChange, Pools
from raydog_core.errors import BackendError
from raydog_core.interfaces import ClusterSpec

logger = logging.getLogger(__name__)

TASK_TYPE = "bash"
TASK_SCRIPT_FILE = "taskdata.txt"
"""The YellowDog agent writes a bash task's data to this file; the task's argument names it."""
LIVE_TASK = [s for s in TaskStatus if not s.finished]


class Launcher:
    """Launches heads and workers; one launch at a time per backend."""

    def __init__(
        self,
        spec: ClusterSpec,
        options: Options,
        api: Api,
        clusters: Clusters,
        pools: Pools,
        heads: Heads,
        shutdown_everything: Callable[[], tuple[list[str], list[str]]],
    ) -> None:
        self.spec = spec
        self.options = options
        self.api = api
        self.clusters = clusters
        self.pools = pools
        self.heads = heads
        self.shutdown_everything = shutdown_everything
        self.lock = threading.RLock()
        """Held for a whole launch (and a shutdown): one at a time."""

    def head(self, node_type: str, launch_config: str) -> list[str]:
        """The head's task, once it runs and its addresses are known; on any failure, what
        this launch made is undone."""
        deadline = time.monotonic() + self.options.build_timeout.total_seconds()
        creating = False
        cluster: Cluster | None = None
        capacity: CapacityChange | None = None
        launch = launch_id()
        tag = self._launch_tag(f"the head node of {self.clusters.what()}", launch_config)
        try:
            with self.lock:
                cluster = self.clusters.attach(refresh=True)
                if cluster is None:
                    creating = True  # before the call: an interrupted request may still succeed
                    cluster = self._create_cluster(node_type)
                group = self._open_group(cluster, node_type, head=True)
                if creating:  # a new generation has no pool yet
                    capacity = self.pools.provision(cluster, node_type, 1)
                else:
                    capacity = self.pools.add_capacity(cluster, node_type, 1)
                (task_id,) = self._add_tasks(cluster, group, 1, launch, tag, None)
            address = self.heads.wait_until_running(task_id, cluster, node_type, deadline)
            self.heads.remember(cluster.id, address)
            self.heads.report_lifetime()
            return [task_id]
        except BaseException as exc:
            cleaned = self._undo_head(cluster, creating, capacity)
            if isinstance(exc, BackendError):
                raise BackendError(
                    exc.action, exc.resource, exc.reason, (*exc.cleaned_up, *cleaned)
                ) from exc
            if isinstance(exc, Exception):
                raise BackendError(
                    "launch", f"the head node of {self.clusters.what()}", reason(exc), cleaned
                ) from exc
            raise

    def workers(self, node_type: str, count: int, launch_config: str) -> list[str]:
        """``count`` worker tasks, returned at once; on failure the pool is sized back."""
        launch = launch_id()
        what = f"{count} {node_type!r} node(s) of {self.clusters.what()}"
        tag = self._launch_tag(what, launch_config)
        with self.lock:
            cluster = self.clusters.attach(refresh=True)
            if cluster is None:
                raise BackendError(
                    "launch",
                    what,
                    "the cluster has no running work requirement: launch the head first",
                )
            head_ip = self.heads.private_ip(cluster)
            group = self._open_group(cluster, node_type, head=False)
            capacity = self.pools.add_capacity(cluster, node_type, count)
            try:
                try:
                    return self._add_tasks(cluster, group, count, launch, tag, head_ip)
                except BackendError:
                    reopened = self._reopened(group)
                    if reopened is None:
                        raise
                    return self._add_tasks(cluster, reopened, count, launch, tag, head_ip)
            except BaseException as exc:
                cleaned = self._cancel_launch(cluster, launch) + self.pools.undo(capacity)
                if isinstance(exc, BackendError):
                    raise BackendError(exc.action, exc.resource, exc.reason, cleaned) from exc
                raise

    @staticmethod
    def _launch_tag(what: str, launch_config: str) -> str | None:
        """The tasks' tag, checked before anything is created."""
        try:
            return launch_tag(launch_config)
        except ValueError as exc:
            raise BackendError("launch", what, str(exc)) from None

    # --- the work requirement and its task groups ------------------------------------------

    def _create_cluster(self, head_type: str) -> Cluster:
        generation = stamp()
        name = self.options.names.work_requirement(generation)
        requirement = WorkRequirement(
            namespace=self.options.namespace,
            name=name,
            tag=self.options.tag,
            taskGroups=[self._task_group(generation, head_type, 1, head=True)],
        )
        made = call(
            "create",
            f"work requirement {name}",
            lambda: self.api.sdk.work_client.add_work_requirement(requirement),
        )
        logger.info("YellowDog: created work requirement %s for %s", name, self.clusters.what())
        return self.clusters.remember(made)

    def _task_group(self, generation: str, node_type: str, number: int, head: bool) -> TaskGroup:
        return TaskGroup(
            name=self.options.names.task_group(node_type, number),
            tag=HEAD_GROUP_TAG if head else WORKER_GROUP_TAG,
            runSpecification=RunSpecification(
                taskTypes=[TASK_TYPE],
                workerTags=[self.options.names.worker_tag(generation, node_type)],
                namespaces=[self.options.namespace],
                taskTimeout=self.options.lifetime,
                retryPolicy=RetryPolicy(maxRetries=0),  # maximumTaskRetries is deprecated
                disablePreallocation=True,
            ),
            finishIfAllTasksFinished=False,
            finishIfAnyTaskFailed=False,
        )

    def _open_group(self, cluster: Cluster, node_type: str, head: bool) -> Group:
        """The node type's task group; a new one only if the old one finished (it does not
        finish by itself, but the platform may end it, e.g. at the cluster's lifetime)."""
        for group in cluster.groups.values():
            if group.node_type == node_type and group.is_head == head and group.is_open:
                return group
        requirement = copy.copy(cluster.work_requirement)  # the cache keeps no unsent group
        groups = list(requirement.taskGroups or [])
        if len(groups) >= WorkRequirement.TASK_GROUPS_MAX:
            raise BackendError(
                "add task group",
                f"to work requirement {requirement.name}",
                f"it holds {len(groups)} task groups, the most YellowDog allows",
            )
        new_group = self._task_group(cluster.generation, node_type, len(groups) + 1, head)
        requirement.taskGroups = [*groups, new_group]
        updated = call(
            "add task group",
            f"{new_group.name} to work requirement {requirement.name}",
            lambda: self.api.sdk.work_client.update_work_requirement(requirement),
        )
        cluster = self.clusters.remember(updated)
        for made in updated.taskGroups or []:
            if made.name == new_group.name and made.id in cluster.groups:
                return cluster.groups[made.id]
        raise BackendError(
            "add task group", new_group.name, "YellowDog did not return the new task group"
        )

    def _reopened(self, group: Group) -> Group | None:
        """After a failed add: a new group if this one finished meanwhile, else None."""
        cluster = self.clusters.attach(refresh=True)
        if cluster is not None:
            current = cluster.groups.get(group.id)
            if current is not None and not current.is_open:
                return self._open_group(cluster, group.node_type, group.is_head)
        return None

    # --- tasks -----------------------------------------------------------------------------

    def _add_tasks(
        self,
        cluster: Cluster,
        group: Group,
        count: int,
        launch: str,
        tag: str | None,
        head_ip: str | None,
    ) -> list[str]:
        """Add the launch's tasks exactly once (see the module docstring); their ids."""
        environment = {
            "RAYDOG_CLUSTER_NAME": self.spec.cluster_name,
            "RAYDOG_NODE_TYPE": group.node_type,
        }
        if head_ip is not None:
            environment["RAY_HEAD_IP"] = head_ip
        script = _task_script(self.spec.script(group.node_type, group.is_head))
        names = [self.options.names.task(group.node_type, launch, i) for i in range(count)]
        what = f"{count} {group.node_type!r} task(s) to task group {group.id}"
        found: dict[str, str] = {}
        failure = ""
        pause = 0.0
        for attempt in range(self.api.max_attempts):
            if failure:
                found = self._named_after(pause, cluster, launch, group.id)
            missing = [
                Task(
                    name=name,
                    tag=tag,
                    taskType=TASK_TYPE,
                    taskData=script,
                    arguments=[TASK_SCRIPT_FILE],
                    environment=dict(environment),
                )
                for name in names
                if name not in found
            ]
            try:
                for start in range(0, len(missing), MAX_TASKS_PER_ADD):
                    made = self.api.once.work_client.add_tasks_to_task_group_by_id(
                        group.id, missing[start : start + MAX_TASKS_PER_ADD]
                    )
                    found.update({t.name: t.id for t in made if t.name and t.id})
            except API_ERRORS as exc:
                if is_duplicate_task_name(exc):
                    # An earlier attempt was applied after all, its reply lost: the YellowDog
                    # CLI takes the refusal so too (submit.py). Its names are looked up next.
                    failure, pause = reason(exc), 0.0
                    continue
                if is_refusal(exc):
                    raise BackendError("add", what, reason(exc)) from exc
                failure, pause = reason(exc), self._pause(exc, attempt)
                continue
            if all(name in found for name in names):
                return [found[name] for name in names]
            failure = f"YellowDog returned {len(found)} of {count} named tasks"
            pause = self._pause(None, attempt)
        found = self._named_after(pause, cluster, launch, group.id)
        if all(name in found for name in names):
            return [found[name] for name in names]  # the last attempt was applied after all
        raise BackendError("add", what, failure)

    @staticmethod
    def _pause(exc: BaseException | None, attempt: int) -> float:
        """How long to wait after a failed add. A 429: what it asks (``Retry-After``), else the
        SDK's own policy (full jitter, from 10 s growing to 60 s: ``RetryProperties``,
        ``full_jitter_retry.py``). Anything else: a short pause that grows with each attempt
        (full jitter too), time for a request applied after all to show."""
        if is_too_many_requests(exc):
            asked = retry_after(exc)
            if asked is not None:
                return asked
            first = RetryProperties.DEFAULT_INITIAL_RETRY_INTERVAL.total_seconds()
            ceiling = RetryProperties.DEFAULT_MAX_RETRY_INTERVAL.total_seconds()
            return random.random() * min(ceiling, first * 2**attempt)
        return random.random() * min(MAX_POLL_SECONDS, 0.5 * 2**attempt)

    def _named_after(
        self, pause: float, cluster: Cluster, launch: str, group_id: str
    ) -> dict[str, str]:
        """``_named``, after ``pause`` seconds on the cluster's clock."""
        if pause > 0:
            self.spec.clock.sleep(pause)
        return self._named(cluster, launch, group_id)

    def _named(self, cluster: Cluster, launch: str, group_id: str | None) -> dict[str, str]:
        """The live tasks this launch made (name -> id), found by their names."""
        search = TaskSearch(workRequirementId=cluster.id, taskGroupId=group_id, statuses=LIVE_TASK)
        tasks = call(
            "find",
            f"the tasks of launch {launch}",
            lambda: all_items(self.api.sdk.work_client.get_tasks(search)),
        )
        return {
            task.name: task.id
            for task in tasks
            if task.name and task.id and self.options.names.launch_of(task.name) == launch
        }

    # --- undoing ---------------------------------------------------------------------------

    def _undo_head(
        self, cluster: Cluster | None, creating: bool, capacity: CapacityChange | None
    ) -> list[str]:
        """Leave nothing billable that this launch made; never raises an API error."""
        if creating:
            cleaned, failures = self.shutdown_everything()
            for failure in failures:
                logger.warning("YellowDog: cleaning up after a failed head launch: %s", failure)
            return cleaned
        cleaned = []
        if cluster is not None:
            cleaned += self._cancel_head_tasks(cluster)
        if capacity is not None:
            cleaned += self.pools.undo(capacity)
        return cleaned

    def _cancel_head_tasks(self, cluster: Cluster) -> list[str]:
        """Cancel every unfinished head task, including one whose creation was interrupted."""
        cancelled = []
        for group in cluster.groups.values():
            if group.is_head:
                search = TaskSearch(
                    workRequirementId=cluster.id, taskGroupId=group.id, statuses=LIVE_TASK
                )
                cancelled += self._cancel(search, "head task", lambda task: True)
        return cancelled

    def _cancel_launch(self, cluster: Cluster, launch: str) -> list[str]:
        """Cancel the tasks of a failed worker launch that were made after all."""
        search = TaskSearch(workRequirementId=cluster.id, statuses=LIVE_TASK)
        names = self.options.names
        return self._cancel(search, "task", lambda task: names.launch_of(task.name) == launch)

    def _cancel(self, search: TaskSearch, kind: str, chosen: Callable[[Task], bool]) -> list[str]:
        cancelled = []
        try:
            for task in all_items(self.api.sdk.work_client.get_tasks(search)):
                if task.id is not None and chosen(task):
                    self.api.sdk.work_client.cancel_task_by_id(task.id, True)
                    cancelled.append(f"{kind} {task.id}")
        except API_ERRORS as exc:
            logger.warning("YellowDog: could not cancel %ss: %s", kind, reason(exc))
        return cancelled


def _task_script(script: str) -> str:
    """The node's script, told its Ray node id: its task's id, which only the agent knows."""
    lines = script.splitlines(keepends=True)
    shebang = lines.pop(0) if lines and lines[0].startswith("#!") else "#!/usr/bin/env bash\n"
    return f'{shebang}export RAYDOG_NODE_ID="$YD_TASK_ID"\n{"".join(lines)}'
