"""Finding a Ray cluster on YellowDog by its names: its work requirement, task groups and pools.

Every method works from nothing (a second ``ray up``, ``ray down``, the head's autoscaler, a
``raydog status`` in a fresh process) and remembers what it found, so that a steady tick costs no
look-up at all.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from yellowdog_client.model import (
    ComputeRequirementStatus,
    ComputeRequirementSummarySearch,
    ProvisionedWorkerPool,
    TaskGroupStatus,
    WorkerPoolSearch,
    WorkerPoolStatus,
    WorkRequirement,
    WorkRequirementSearch,
    WorkRequirementStatus,
)

from raydog_backends.yellowdog.api import Api, all_items, call
from raydog_backends.yellowdog.names import SEPARATOR, ClusterNames
from raydog_core.errors import BackendError

HEAD_GROUP_TAG = "ray-head"
WORKER_GROUP_TAG = "ray-worker"
LIVE_WORK_REQUIREMENT = [WorkRequirementStatus.RUNNING, WorkRequirementStatus.HELD]
UNFINISHED_WORK_REQUIREMENT = [s for s in WorkRequirementStatus if not s.finished]
OPEN_GROUP = {TaskGroupStatus.PENDING, TaskGroupStatus.RUNNING}
LIVE_POOL = [s for s in WorkerPoolStatus if not s.finished]
UNTERMINATED_POOL = [s for s in WorkerPoolStatus if s is not WorkerPoolStatus.TERMINATED]
"""A pool shutting down is finished, but its compute requirement may still hold instances."""
ENDED_REQUIREMENT = {ComputeRequirementStatus.TERMINATING, ComputeRequirementStatus.TERMINATED}
UNENDED_REQUIREMENT = [s for s in ComputeRequirementStatus if s not in ENDED_REQUIREMENT]


def find_work_requirements(
    api: Api, namespace: str, statuses: Collection[WorkRequirementStatus], what: str
) -> list[Any]:
    """Every work requirement of the namespace in these statuses, as summaries (of ``what``,
    for the error)."""
    search = WorkRequirementSearch(namespaces=[namespace], statuses=list(statuses))
    return call(
        "find",
        f"work requirements of {what}",
        lambda: all_items(api.sdk.work_client.get_work_requirements(search)),
    )


def find_pools(
    api: Api, namespace: str, statuses: Collection[WorkerPoolStatus] | None, what: str
) -> list[Any]:
    """Every worker pool of the namespace in these statuses (None: any), as summaries."""
    search = WorkerPoolSearch(namespaces=[namespace], statuses=list(statuses) if statuses else None)
    return call(
        "find",
        f"worker pools of {what}",
        lambda: all_items(api.sdk.worker_pool_client.get_worker_pools(search)),
    )


def find_compute_requirements(
    api: Api, namespace: str, statuses: Collection[ComputeRequirementStatus], what: str
) -> list[Any]:
    """Every compute requirement of the namespace in these statuses, as summaries."""
    search = ComputeRequirementSummarySearch(namespaces=[namespace], statuses=list(statuses))
    return call(
        "find",
        f"compute requirements of {what}",
        lambda: all_items(api.sdk.compute_client.get_compute_requirement_summaries(search)),
    )


@dataclass(frozen=True)
class Group:
    """One of the cluster's task groups: which node type's tasks it takes, on which workers."""

    id: str
    node_type: str
    is_head: bool
    is_open: bool
    worker_tag: str


@dataclass
class Cluster:
    """The cluster's work requirement as last read, and what its task groups are for."""

    work_requirement: WorkRequirement
    generation: str
    groups: dict[str, Group] = field(default_factory=dict)

    @property
    def id(self) -> str:
        assert self.work_requirement.id is not None
        return self.work_requirement.id


class Clusters:
    """Finds the cluster's objects; remembers its work requirement and its pools' ids."""

    def __init__(self, api: Api, names: ClusterNames, namespace: str, node_types: list[str]):
        self.api = api
        self.names = names
        self.namespace = namespace
        self.node_types = node_types
        self._lock = threading.RLock()
        self._cluster: Cluster | None = None
        self._pools: dict[str, ProvisionedWorkerPool] = {}
        """Pool id -> the pool as read once (its name, worker tag and compute requirement)."""

    def what(self) -> str:
        return f"cluster {self.names.cluster!r} (YellowDog namespace {self.namespace})"

    def attach(self, refresh: bool) -> Cluster | None:
        """The cluster's live work requirement: remembered, re-read (``refresh``), or found."""
        with self._lock:
            cluster = self._cluster
        if cluster is not None and not refresh:
            return cluster
        if cluster is not None:
            known_id = cluster.id
            requirement = call(
                "read",
                f"work requirement {cluster.work_requirement.name}",
                lambda: self.api.sdk.work_client.get_work_requirement_by_id(known_id),
            )
            if requirement.status in LIVE_WORK_REQUIREMENT:
                return self.remember(requirement)
            self.forget()
        found = self.work_requirements(LIVE_WORK_REQUIREMENT)
        if not found:
            return None
        newest = max(found, key=lambda summary: self.names.generation_of(summary.name) or "")
        newest_id = newest.id
        requirement = call(
            "read",
            f"work requirement {newest.name}",
            lambda: self.api.sdk.work_client.get_work_requirement_by_id(newest_id),
        )
        return self.remember(requirement)

    def remember(self, requirement: WorkRequirement) -> Cluster:
        generation = self.names.generation_of(requirement.name)
        assert generation is not None
        types_by_tag = {
            self.names.worker_tag(generation, node_type): node_type for node_type in self.node_types
        }
        cluster = Cluster(requirement, generation)
        for group in requirement.taskGroups or []:
            tags = group.runSpecification.workerTags or []
            tag = next((t for t in tags if t in types_by_tag), None)
            node_type = types_by_tag.get(tag or "")
            if tag is None and tags and not self.node_types and group.name:
                # A provider Ray builds from the raw YAML (`ray get-head-ip`) knows no node
                # types; it only looks, so the type's YellowDog form (its group's name) will do.
                tag, node_type = tags[0], group.name.rsplit(SEPARATOR, 1)[0]
            if group.id is None or tag is None or node_type is None:
                continue
            is_open = group.status is None or group.status in OPEN_GROUP
            cluster.groups[group.id] = Group(
                group.id, node_type, group.tag == HEAD_GROUP_TAG, is_open, tag
            )
        with self._lock:
            self._cluster = cluster
        return cluster

    def forget(self) -> None:
        with self._lock:
            self._cluster = None
            self._pools.clear()

    def work_requirements(self, statuses: Collection[WorkRequirementStatus]) -> list[Any]:
        """This cluster's work requirements of every generation, as summaries."""
        found = find_work_requirements(self.api, self.namespace, statuses, self.what())
        return [s for s in found if s.id and self.names.generation_of(s.name) is not None]

    def pools(self, statuses: Collection[WorkerPoolStatus] | None) -> list[Any]:
        """This cluster's worker pools of every generation (None: in any status), as summaries."""
        found = find_pools(self.api, self.namespace, statuses, self.what())
        return [s for s in found if s.id and self.names.parse_pool(s.name) is not None]

    def compute_requirements(self, statuses: Collection[ComputeRequirementStatus]) -> list[Any]:
        """This cluster's compute requirements of every generation (each named as its pool), as
        summaries."""
        found = find_compute_requirements(self.api, self.namespace, statuses, self.what())
        return [s for s in found if s.id and self.names.parse_pool(s.name) is not None]

    def pool(self, pool_id: str, refresh: bool = False) -> ProvisionedWorkerPool:
        """A pool by id: read once (its compute requirement never changes), or re-read."""
        with self._lock:
            known = self._pools.get(pool_id)
        if known is not None and not refresh:
            return known
        pool = call(
            "read",
            f"worker pool {pool_id}",
            lambda: self.api.sdk.worker_pool_client.get_worker_pool_by_id(pool_id),
        )
        if not isinstance(pool, ProvisionedWorkerPool):
            raise BackendError("read", f"worker pool {pool_id}", "not a provisioned worker pool")
        with self._lock:
            self._pools[pool_id] = pool
        return pool
