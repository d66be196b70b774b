"""Work requirements, their task groups and tasks: the ``/work/`` API and how they finish."""

from __future__ import annotations

import time

from yellowdog_client.model import (
    Slice,
    Task,
    TaskError,
    TaskGroup,
    TaskGroupStatus,
    TaskStatus,
    WorkRequirement,
    WorkRequirementStatus,
    WorkRequirementSummary,
)

from raydog_backends.yellowdog_emulator.processes import NodeProcesses
from raydog_backends.yellowdog_emulator.records import (
    DUPLICATE_TASK_NAME,
    MAX_TASKS_PER_ADD,
    OPEN_GROUP,
    Account,
    ApiError,
    Query,
    TaskRecord,
    check_name,
    many,
    new_id,
    now_utc,
    one,
    page,
)


class Work:
    """The ``/work/`` half of the API. Callers hold ``account.lock``."""

    def __init__(self, account: Account, processes: NodeProcesses) -> None:
        self.account = account
        self.processes = processes

    # --- work requirements ---------------------------------------------------------------

    def add_work_requirement(self, requirement: WorkRequirement) -> WorkRequirement:
        namespace = check_name("namespace", requirement.namespace)
        name = check_name("work requirement name", requirement.name)
        if requirement.tag is not None:
            check_name("tag", requirement.tag)
        existing = self.account.requirements.values()
        if any(r.namespace == namespace and r.name == name for r in existing):
            raise ApiError(400, f"work requirement {namespace}/{name} already exists")
        groups = list(requirement.taskGroups or [])
        _check_group_count(requirement, len(groups))
        requirement.id = new_id("workreq")
        requirement.status = WorkRequirementStatus.RUNNING
        requirement.createdTime = requirement.statusChangedTime = now_utc()
        requirement.taskGroups = []
        for group in groups:
            self._add_group(requirement, group)
        self.account.requirements[requirement.id] = requirement
        return requirement

    def update_work_requirement(self, update: WorkRequirement) -> WorkRequirement:
        current = self.get_work_requirement(update.id or "")
        if current.status is None or current.status.finished:
            raise ApiError(400, f"work requirement {current.name} is {current.status}")
        existing = {g.id for g in current.taskGroups or []}
        given = {g.id for g in update.taskGroups or [] if g.id is not None}
        if existing - given:
            raise ApiError(400, "task groups cannot be removed from a work requirement")
        new = [g for g in update.taskGroups or [] if g.id is None]
        _check_group_count(current, len(existing) + len(new))
        for group in update.taskGroups or []:
            if group.id is not None and group.id not in existing:
                raise ApiError(404, f"no task group {group.id} in {current.name}")
        for group in new:
            self._add_group(current, group)
        return current

    def _add_group(self, requirement: WorkRequirement, group: TaskGroup) -> None:
        name = check_name("task group name", group.name)
        if group.tag is not None:
            check_name("task group tag", group.tag)
        if any(g.name == name for g in requirement.taskGroups or []):
            raise ApiError(400, f"task group {name} already exists in {requirement.name}")
        if not group.runSpecification or not group.runSpecification.taskTypes:
            raise ApiError(400, f"task group {name} needs runSpecification.taskTypes")
        for tag in group.runSpecification.workerTags or []:
            check_name("worker tag", tag)
        group.id = new_id("taskgrp")
        group.status = TaskGroupStatus.PENDING
        group.statusChangedTime = now_utc()
        requirement.taskGroups = [*(requirement.taskGroups or []), group]
        assert requirement.id is not None
        self.account.groups[group.id] = (requirement.id, group)

    def get_work_requirement(self, requirement_id: str) -> WorkRequirement:
        found = self.account.requirements.get(requirement_id)
        if found is None:
            raise ApiError(404, f"no work requirement {requirement_id}")
        return found

    def get_work_requirement_by_name(self, namespace: str, name: str) -> WorkRequirement:
        for requirement in self.account.requirements.values():
            if requirement.namespace == namespace and requirement.name == name:
                return requirement
        raise ApiError(404, f"no work requirement {namespace}/{name}")

    def find_work_requirements(self, query: Query) -> Slice[WorkRequirementSummary]:
        namespaces = many(query, "namespaces") or many(query, "namespace")
        name, tag, statuses = one(query, "name"), one(query, "tag"), many(query, "statuses")
        found = [
            self._summary(r)
            for r in self.account.requirements.values()
            if (namespaces is None or r.namespace in namespaces)
            and (name is None or r.name == name)
            and (tag is None or r.tag == tag)
            and (statuses is None or str(r.status) in statuses)
        ]
        return page(found, query, self.account.config.slice_size)

    def _summary(self, requirement: WorkRequirement) -> WorkRequirementSummary:
        tasks = self.tasks_of(requirement.id or "")
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
            _set_status(requirement, WorkRequirementStatus.CANCELLING)
            for task in self.tasks_of(requirement_id):
                self._cancel(task, abort)
        elif target in (
            WorkRequirementStatus.HELD,
            WorkRequirementStatus.RUNNING,
            WorkRequirementStatus.FINISHING,
        ):
            if current is WorkRequirementStatus.CANCELLING:
                raise ApiError(400, f"work requirement {requirement.name} is cancelling")
            _set_status(requirement, target)
        else:
            raise ApiError(400, f"cannot move a work requirement to {status}")
        self.advance_requirement(requirement)  # settles at once if nothing still runs
        return requirement

    # --- tasks ---------------------------------------------------------------------------

    def add_tasks(self, group_id: str, tasks: list[Task]) -> list[Task]:
        if group_id not in self.account.groups:
            raise ApiError(404, f"no task group {group_id}")
        requirement_id, group = self.account.groups[group_id]
        requirement = self.account.requirements[requirement_id]
        if requirement.status not in (WorkRequirementStatus.RUNNING, WorkRequirementStatus.HELD):
            raise ApiError(400, f"work requirement {requirement.name} is {requirement.status}")
        if group.status not in OPEN_GROUP:
            raise ApiError(400, f"task group {group.name} is {group.status}")
        if len(tasks) > MAX_TASKS_PER_ADD:
            raise ApiError(
                400,
                f"{len(tasks):,} tasks in one request; at most {MAX_TASKS_PER_ADD:,} are allowed",
            )
        task_types = group.runSpecification.taskTypes
        names = {t.task.name for t in self.account.tasks.values() if t.group_id == group_id}
        for task in tasks:
            if task.taskType not in task_types:
                raise ApiError(400, f"task type {task.taskType!r} is not one of {task_types}")
            if task.name is not None:
                check_name("task name", task.name)
                if task.name in names:
                    # The whole batch is refused, whatever its other tasks (the stricter choice).
                    raise ApiError(400, f"{DUPLICATE_TASK_NAME} {group.name}: {task.name}")
                names.add(task.name)
            if task.tag is not None:
                check_name("task tag", task.tag)
        for task in tasks:
            task.id = new_id("task")
            task.status = TaskStatus.READY
            task.taskGroupId = group_id
            task.retryCount = 0
            self.account.tasks[task.id] = TaskRecord(task, requirement_id, group_id)
        return tasks

    def add_tasks_by_name(
        self, namespace: str, requirement_name: str, group_name: str, tasks: list[Task]
    ) -> list[Task]:
        requirement = self.get_work_requirement_by_name(namespace, requirement_name)
        for group in requirement.taskGroups or []:
            if group.name == group_name and group.id is not None:
                return self.add_tasks(group.id, tasks)
        raise ApiError(404, f"no task group {group_name} in {requirement_name}")

    def get_task(self, task_id: str) -> Task:
        return self.account.task(task_id).task

    def cancel_task(self, task_id: str, abort: bool) -> Task:
        task = self.account.task(task_id)
        self._cancel(task, abort)
        return task.task

    def _cancel(self, task: TaskRecord, abort: bool) -> None:
        if task.status.waiting or (abort and task.status.in_progress):
            self.finish(task, TaskStatus.CANCELLED)
        elif task.status.in_progress:
            task.cancel_when_done = True

    def find_tasks(self, query: Query) -> Slice[Task]:
        requirement_id, group_id = one(query, "workRequirementId"), one(query, "taskGroupId")
        name, tag, statuses = one(query, "name"), one(query, "tag"), many(query, "statuses")
        found = [
            t.task
            for t in self.account.tasks.values()
            if (requirement_id is None or t.requirement_id == requirement_id)
            and (group_id is None or t.group_id == group_id)
            and (name is None or t.task.name == name)
            and (tag is None or t.task.tag == tag)
            and (statuses is None or str(t.status) in statuses)
        ]
        return page(found, query, self.account.config.slice_size)

    def fail_task(self, task_id: str, message: str = "made to fail by the emulator") -> Task:
        task = self.account.task(task_id)
        if not task.status.finished:
            self.finish(task, TaskStatus.FAILED, message)
        return task.task

    def tasks_of(self, requirement_id: str) -> list[TaskRecord]:
        return [t for t in self.account.tasks.values() if t.requirement_id == requirement_id]

    def finish(self, task: TaskRecord, status: TaskStatus, error: str | None = None) -> None:
        """End a task: record why, stop its process, free (or unqueue it from) its node."""
        task.task.status = status
        task.task.finishedTime = now_utc()
        if error is not None:
            task.task.errors = [
                *(task.task.errors or []),
                TaskError(timestamp=now_utc(), error=error, nodeId=task.task.nodeId),
            ]
        self.processes.stop_later(task)
        node = self.account.nodes.get(task.task.nodeId or "")
        if node is not None:
            node.release(task.id, time.monotonic())

    # --- how they finish -----------------------------------------------------------------

    def advance_requirement(self, requirement: WorkRequirement) -> None:
        status = requirement.status
        if status is None or status.finished:
            return
        tasks = self.tasks_of(requirement.id or "")
        for group in requirement.taskGroups or []:
            self._advance_group(requirement, group, [t for t in tasks if t.group_id == group.id])
        all_done = all(t.status.finished for t in tasks)
        if status is WorkRequirementStatus.CANCELLING and all_done:
            _set_status(requirement, WorkRequirementStatus.CANCELLED)
        elif status is WorkRequirementStatus.FINISHING and all_done:
            _set_status(requirement, WorkRequirementStatus.COMPLETED)
        elif status is WorkRequirementStatus.RUNNING:
            groups = requirement.taskGroups or []
            if groups and all(g.status is not None and g.status.terminated for g in groups):
                failed = any(g.status is TaskGroupStatus.FAILED for g in groups)
                _set_status(
                    requirement,
                    WorkRequirementStatus.FAILED if failed else WorkRequirementStatus.COMPLETED,
                )

    def _advance_group(
        self, requirement: WorkRequirement, group: TaskGroup, tasks: list[TaskRecord]
    ) -> None:
        current = group.status
        if current is None or current.terminated:
            return
        done = bool(tasks) and all(t.status.finished for t in tasks)
        failed = any(t.status is TaskStatus.FAILED for t in tasks)
        new = current
        if requirement.status is WorkRequirementStatus.CANCELLING:
            new = TaskGroupStatus.CANCELLED if done or not tasks else TaskGroupStatus.CANCELLING
        elif failed and group.finishIfAnyTaskFailed:
            for task in tasks:
                if not task.status.finished:
                    self.finish(task, TaskStatus.DISCARDED)
            new = TaskGroupStatus.FAILED
        elif done and (group.finishIfAllTasksFinished or current is TaskGroupStatus.FINISHING):
            new = TaskGroupStatus.FAILED if failed else TaskGroupStatus.COMPLETED
        elif requirement.status is WorkRequirementStatus.FINISHING and current in OPEN_GROUP:
            new = TaskGroupStatus.FINISHING
        if new is not current:
            group.status = new
            group.statusChangedTime = now_utc()


def _check_group_count(requirement: WorkRequirement, count: int) -> None:
    """At most ``WorkRequirement.TASK_GROUPS_MAX`` (1,000) task groups (SDK model)."""
    if count > WorkRequirement.TASK_GROUPS_MAX:
        raise ApiError(
            400,
            f"work requirement {requirement.name} would have {count} task groups; "
            f"at most {WorkRequirement.TASK_GROUPS_MAX} are allowed",
        )


def _set_status(requirement: WorkRequirement, status: WorkRequirementStatus) -> None:
    if requirement.status is not status:
        requirement.status = status
        requirement.statusChangedTime = now_utc()
