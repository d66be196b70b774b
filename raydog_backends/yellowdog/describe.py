"""What the platform says of the cluster's nodes: one task search per tick, and a few look-ups.

``describe`` reports and never acts: asking twice gives the same answer, and the provider's tick
terminates what it reports TERMINATED. A node is declared gone only on the platform's word about
that node: a task missing from one task search, or a node missing from one node search, is read
by id before anything is concluded (a search result can be momentarily incomplete).

Costs per tick: one task search. Besides, only when there is something to learn: one node search
per node type with nodes whose addresses are new or due a liveness check (every
``node_recheck_seconds``), one instance search per pool with new public addresses, a read per
task that left the search or node that left a node search, and two reads per node type whose
tasks have waited ``node_recheck_seconds`` for a node (has its pool ended? did it fail to
provision?), with a search of live pools when it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import replace

from yellowdog_client.model import NodeSearch, NodeStatus, Task, TaskSearch, TaskStatus

from raydog_backends.yellowdog.addresses import Addresses
from raydog_backends.yellowdog.api import API_ERRORS, Api, all_items, call, is_refusal, reason
from raydog_backends.yellowdog.api import task_errors as errors_of
from raydog_backends.yellowdog.cluster import Cluster, Clusters
from raydog_backends.yellowdog.heads import Heads
from raydog_backends.yellowdog.launch import LIVE_TASK
from raydog_backends.yellowdog.names import launch_config_of
from raydog_backends.yellowdog.pools import Pools
from raydog_core.errors import BackendError
from raydog_core.interfaces import NodeInfo, NodeState, NodeSteps

logger = logging.getLogger(__name__)

ALLOCATED_TASK = {s for s in TaskStatus if s.in_progress}
WAITING_TASK = {TaskStatus.PENDING, TaskStatus.READY}
LIVE_NODE = [s for s in NodeStatus if s.active]
ENDED_REPORT_SECONDS = 600.0
"""How long an ended node is still reported (unless terminated meanwhile): long enough for
every reader to see why, short enough that the report stays the size of the cluster."""


class Describer:
    """The ``describe`` of the yellowdog backend, and what it remembers between ticks."""

    def __init__(
        self,
        api: Api,
        clusters: Clusters,
        pools: Pools,
        addresses: Addresses,
        heads: Heads,
        recheck_seconds: float,
    ) -> None:
        self.api = api
        self.clusters = clusters
        self.pools = pools
        self.addresses = addresses
        self.heads = heads
        self.recheck_seconds = recheck_seconds
        self._lock = threading.RLock()
        self._seen: dict[str, NodeInfo] = {}
        """Nodes reported alive by the last describe: one that leaves the search is read."""
        self._ended: dict[str, tuple[NodeInfo, float]] = {}
        self._lost: dict[str, str] = {}
        """YellowDog node id -> what the platform said of it when it was found gone."""
        self._unable: dict[str, str] = {}
        """Waiting task id -> why its pool will never start it."""
        self._nodes_checked: dict[str, float] = {}
        self._waiting_since: dict[tuple[str, str], float] = {}
        self._watched = False
        """Whether a describe has looked at waiting tasks yet (see ``_check_waiting``)."""

    def describe(self) -> list[NodeInfo]:
        with self._lock:
            cluster = self.clusters.attach(refresh=False)
            tasks = self._live_tasks(cluster) if cluster is not None else []
            if cluster is not None and any(t.taskGroupId not in cluster.groups for t in tasks):
                cluster = self.clusters.attach(refresh=True) or cluster
            alive, unread = self._confirm_vanished({task.id for task in tasks if task.id})
            tasks += alive
            if cluster is None or not (tasks or unread):
                self.clusters.forget()
                self._seen = {}
                return self._with_ended([])
            self._check_nodes(cluster, tasks)
            self._learn_public_addresses(tasks)
            self._check_waiting(cluster, tasks)
            nodes = [info for task in tasks if (info := self._info(cluster, task)) is not None]
            in_use = {node for task in tasks if (node := self.addresses.node_of(task))}
            self.addresses.keep_only(in_use)
            self._lost = {n: why for n, why in self._lost.items() if n in in_use}
            nodes += unread
            self._seen = {n.node_id: n for n in nodes if n.state is not NodeState.TERMINATED}
            return self._with_ended(nodes)

    def forget(self, node_ids: Collection[str]) -> None:
        """Ray terminated these nodes: they are no longer reported, as ended or otherwise."""
        with self._lock:
            for node_id in node_ids:
                self._seen.pop(node_id, None)
                self._ended.pop(node_id, None)
                self._unable.pop(node_id, None)

    def clear(self) -> None:
        """The cluster was shut down: nothing of it is to be reported or read again."""
        with self._lock:
            self._seen, self._ended, self._lost, self._unable = {}, {}, {}, {}

    def _live_tasks(self, cluster: Cluster) -> list[Task]:
        search = TaskSearch(workRequirementId=cluster.id, statuses=LIVE_TASK)
        return call(
            "describe",
            self.clusters.what(),
            lambda: all_items(self.api.sdk.work_client.get_tasks(search)),
        )

    def _confirm_vanished(self, listed: set[str]) -> tuple[list[Task], list[NodeInfo]]:
        """Read each node seen alive last time that the search left out. Ended: remembered
        with why. Alive after all (the search missed it): its task is returned. Unreadable
        now: returned as it was seen, to be read again next time."""
        alive: list[Task] = []
        unread: list[NodeInfo] = []
        for node_id, seen in self._seen.items():
            if node_id in listed:
                continue
            try:
                task: Task | None = self.api.sdk.work_client.get_task_by_id(node_id)
            except API_ERRORS as exc:
                if not is_refusal(exc):
                    logger.info("YellowDog: reading task %s: %s", node_id, reason(exc))
                    unread.append(seen)
                    continue
                task = None
            status = task.status if task is not None else None
            if task is not None and status is not None and not status.finished:
                alive.append(task)
                continue
            why = f"its task ended: {status}{errors_of(task)}" if task else "its task is gone"
            ended = replace(seen, state=NodeState.TERMINATED, detail=why)
            self._ended[node_id] = (ended, time.monotonic())
        return alive, unread

    def _check_nodes(self, cluster: Cluster, tasks: list[Task]) -> None:
        """One node search per node type (worker tag) that has a new node to learn or is due a
        liveness check; a node the search left out is read before it is declared lost."""
        now = time.monotonic()
        allocated: dict[str, list[Task]] = {}
        for task in tasks:
            group = cluster.groups.get(task.taskGroupId or "")
            if group is not None and task.status in ALLOCATED_TASK:
                allocated.setdefault(group.worker_tag, []).append(task)
        for tag, typed in allocated.items():
            unknown = any(self.addresses.needs_node(self.addresses.node_of(t)) for t in typed)
            due = now - self._nodes_checked.get(tag, float("-inf")) >= self.recheck_seconds
            if not (unknown or due):
                continue
            search = NodeSearch(workerTag=tag, statuses=LIVE_NODE)
            nodes = call(
                "find",
                f"nodes tagged {tag}",
                lambda search=search: all_items(  # type: ignore[misc]
                    self.api.sdk.worker_pool_client.get_nodes(search)
                ),
            )
            self.addresses.learn(nodes)
            listed = {node.id for node in nodes}
            for task in typed:
                node_id = self.addresses.node_of(task)
                if node_id not in listed and (node_id is None or node_id not in self._lost):
                    self._confirm_node(task, node_id)
            self._nodes_checked[tag] = now

    def _confirm_node(self, task: Task, node_id: str | None) -> None:
        """Read the node of a task that a node search left out: lost only if it says so."""
        client = self.api.sdk.worker_pool_client
        try:
            if node_id is not None:
                node = client.get_node_by_id(node_id)
            elif task.workerId is not None:
                node = client.get_node_by_worker_id(task.workerId)
            else:
                return
        except API_ERRORS as exc:
            if is_refusal(exc) and node_id is not None:
                self._lost[node_id] = f"YellowDog node {node_id} no longer exists"
            else:
                logger.info("YellowDog: reading the node of task %s: %s", task.id, reason(exc))
            return
        if node.status is None or node.status.active:
            self.addresses.learn([node])
        elif node.id is not None:
            self._lost[node.id] = f"YellowDog node {node.id} is {node.status}"

    def _learn_public_addresses(self, tasks: list[Task]) -> None:
        nodes = [
            node_id
            for task in tasks
            if task.status is TaskStatus.EXECUTING
            and (node_id := self.addresses.node_of(task)) is not None
            and not self.addresses.public_known(node_id)
        ]
        if nodes:
            self.addresses.learn_public(nodes)

    def _check_waiting(self, cluster: Cluster, tasks: list[Task]) -> None:
        """Tasks waiting for a node for ``node_recheck_seconds``: can their pool still start
        them? If it ended, or its compute requirement did, they end with the reason.

        A process's first look (``raydog status``, a restarted autoscaler) checks at once: it
        cannot know how long they have waited, and ``raydog status`` looks only once."""
        now = time.monotonic()
        first_seen = now if self._watched else float("-inf")
        self._watched = True
        waiting: dict[tuple[str, str], list[str]] = {}
        for task in tasks:
            group = cluster.groups.get(task.taskGroupId or "")
            if group is not None and task.id and task.status in WAITING_TASK:
                waiting.setdefault((cluster.generation, group.node_type), []).append(task.id)
        self._waiting_since = {key: self._waiting_since.get(key, first_seen) for key in waiting}
        for key, task_ids in waiting.items():
            if now - self._waiting_since[key] < self.recheck_seconds:
                continue
            self._waiting_since[key] = now
            try:
                unable = self.pools.why_unable(*key)
            except BackendError as exc:
                logger.info("YellowDog: checking the pool of %s: %s", key[1], exc)
                continue
            if unable is not None:
                self._unable.update(dict.fromkeys(task_ids, unable))
        live = {task.id for task in tasks}
        self._unable = {t: why for t, why in self._unable.items() if t in live}

    def _info(self, cluster: Cluster, task: Task) -> NodeInfo | None:
        group = cluster.groups.get(task.taskGroupId or "")
        if group is None or task.id is None:
            return None
        node_id = self.addresses.node_of(task)
        address = self.addresses.known(node_id)
        status = task.status
        # The SDK's Task has no creation time; its startedTime is when a booted node's agent
        # took it (``model/task.py``). Its setup's end is the node's to know, not the platform's.
        steps = NodeSteps(booted=task.startedTime.timestamp() if task.startedTime else None)

        def info(state: NodeState, detail: str) -> NodeInfo:
            assert task.id is not None and group is not None
            return NodeInfo(
                task.id,
                group.node_type,
                group.is_head,
                state,
                address.private if address else None,
                address.public if address else None,
                detail,
                launch_config_of(task.tag),
                steps,
            )

        if node_id is not None and node_id in self._lost:
            return info(NodeState.TERMINATED, self._lost[node_id])
        if task.id in self._unable:
            return info(NodeState.TERMINATED, self._unable[task.id])
        if status is TaskStatus.UPLOADING:
            return info(NodeState.TERMINATED, "its task script ended")
        if status is TaskStatus.EXECUTING and address is not None and address.private:
            if group.is_head:
                self.heads.remember(cluster.id, address)
            return info(NodeState.RUNNING, f"task {status} on node {node_id}")
        return info(NodeState.PENDING, f"task {status}")

    def _with_ended(self, nodes: list[NodeInfo]) -> list[NodeInfo]:
        now = time.monotonic()
        self._ended = {
            n: (info, at)
            for n, (info, at) in self._ended.items()
            if now - at < ENDED_REPORT_SECONDS
        }
        current = {node.node_id for node in nodes}
        return nodes + [info for n, (info, _) in self._ended.items() if n not in current]
