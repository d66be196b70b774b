"""The scheduler: ready tasks to registered nodes whose worker tag their group asks for, and a
task's run from allocation to its end.

Tasks go to idle nodes first. With none idle, a task of a group that does not set
``RunSpecification.disablePreallocation`` is pre-allocated to a busy node's local queue, where
it waits until the task before it ends ("If true, tasks are only allocated to nodes as workers
become idle and are not queued on the node": SDK model, 13.1). A Ray node's task never ends,
so a task queued behind one never starts.
"""

from __future__ import annotations

from yellowdog_client.model import (
    TaskGroup,
    TaskGroupStatus,
    TaskStatus,
    WorkerStatus,
)

from raydog_backends.yellowdog_emulator.processes import NodeProcesses
from raydog_backends.yellowdog_emulator.records import (
    Account,
    NodeRecord,
    TaskRecord,
    now_utc,
    runs_on,
)
from raydog_backends.yellowdog_emulator.work import Work


class Scheduler:
    """Allocation and execution. Callers hold ``account.lock``."""

    def __init__(self, account: Account, work: Work, processes: NodeProcesses) -> None:
        self.account = account
        self.work = work
        self.processes = processes

    def schedule(self, now: float) -> None:
        nodes = [
            n
            for n in self.account.nodes.values()
            if n.registered and n.alive and self.account.pools[n.pool_id].live
        ]
        for node in nodes:
            if node.task_id is None and node.queue:
                self._start_next(node, self.account.tasks[node.queue.pop(0)], now)
        for task in self.account.tasks.values():
            if task.status is not TaskStatus.READY or not self.account.may_run(task):
                continue
            group = self.account.groups[task.group_id][1]
            matching = [n for n in nodes if self._matches(group, n)]
            idle = [n for n in matching if n.task_id is None and not n.queue]
            if idle:
                self._allocate(task, idle[0])
                self._start_next(idle[0], task, now)
            elif matching and not group.runSpecification.disablePreallocation:
                node = min(matching, key=lambda n: len(n.queue))
                self._allocate(task, node)
                node.queue.append(task.id)

    def _matches(self, group: TaskGroup, node: NodeRecord) -> bool:
        return runs_on(group, self.account.pools[node.pool_id].pool)

    def _allocate(self, task: TaskRecord, node: NodeRecord) -> None:
        workers = node.node.workers or []
        task.task.status = TaskStatus.ALLOCATED
        task.task.nodeId = node.id
        task.task.workerId = workers[0].id if workers else None
        group = self.account.groups[task.group_id][1]
        if group.status is TaskGroupStatus.PENDING:
            group.status = TaskGroupStatus.RUNNING
            group.statusChangedTime = now_utc()

    def _start_next(self, node: NodeRecord, task: TaskRecord, now: float) -> None:
        """``task`` (allocated to ``node``) is the one the node's worker runs now."""
        node.task_id = task.id
        task.start_at = now + self.account.config.task_start_delay
        for worker in node.node.workers or []:
            worker.status = WorkerStatus.RUNNING
            worker.taskGroupId = task.group_id

    def advance(self, task: TaskRecord, now: float) -> None:
        node = self.account.nodes.get(task.task.nodeId or "")
        running_here = node is not None and node.task_id == task.id
        if task.status is TaskStatus.ALLOCATED and running_here and now >= task.start_at:
            assert node is not None
            self._execute(task, node, now)
        elif task.status is TaskStatus.EXECUTING:
            if task.process is not None and not task.process.running():
                code = task.process.returncode
                if task.cancel_when_done:
                    self.work.finish(task, TaskStatus.CANCELLED)
                elif code == 0:
                    self.work.finish(task, TaskStatus.COMPLETED)
                else:
                    self.work.finish(task, TaskStatus.FAILED, f"the task script exited with {code}")
            elif task.deadline is not None and now >= task.deadline:
                self.work.finish(task, TaskStatus.FAILED, "the task timed out")

    def _execute(self, task: TaskRecord, node: NodeRecord, now: float) -> None:
        task.task.status = TaskStatus.EXECUTING
        # SDK model/task.py: "The time the task was last started by a Worker" (the yellowdog
        # backend reports it as the node's boot time).
        task.task.startedTime = now_utc()
        group = self.account.groups[task.group_id][1]
        timeout = task.task.timeout or group.runSpecification.taskTimeout
        if timeout is not None:
            task.deadline = now + timeout.total_seconds() * self.account.config.time_scale
        if self.account.config.run_tasks:
            self.processes.start(task, node)
