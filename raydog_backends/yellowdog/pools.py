"""The cluster's worker pools: one per node type and generation, which the platform scales.

A provisioned pool "automatically scales ... up and down to meet Task demand, and shuts it
down when idle" (yellowdog-cli README, "Worker Pools vs. Compute Requirements"): so a pool is
provisioned once, for its first launch, with ``minNodes`` 0 and ``maxNodes`` set (yellowdog-ray
and the YellowDog CLI always set it: the platform's own default is not to be relied on), and a
later launch only adds tasks, as yellowdog-ray does. The backend never resizes: resizing as
well as adding tasks would be a second scheduler for the same pool, and a scale-up could boot
more nodes than Ray asked for (e.g. while idle nodes could take the new tasks).

A provisioning failure (quota, template, image) shows on the pool's compute requirement: a
source ``ERRORED`` with its ``statusMessage`` (SDK ``ComputeSource``); the requirement need
not end. Ending a pool means shutting it down *and* terminating its compute requirement, as
yellowdog-ray does (commit 0794285): a pool shutdown is not immediate, and a node whose agent
never registered cannot be told to stop. And should the client be lost before it ends
anything, each compute requirement ends itself after the cluster's lifetime
(``ComputeRequirementTemplateUsage.autoShutdown``, SDK 15.9), as the cluster's tasks do (their
``taskTimeout``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from yellowdog_client.model import (
    AutoShutdown,
    ComputeRequirement,
    ComputeRequirementTemplateUsage,
    ComputeSource,
    ComputeSourceStatus,
    NodeWorkerTarget,
    ProvisionedWorkerPool,
    ProvisionedWorkerPoolProperties,
)

from raydog_backends.yellowdog.api import API_ERRORS, Api, call, is_refusal, reason
from raydog_backends.yellowdog.cluster import ENDED_REQUIREMENT, LIVE_POOL, Cluster, Clusters
from raydog_backends.yellowdog.names import stamp
from raydog_backends.yellowdog.options import Options
from raydog_core.errors import BackendError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CapacityChange:
    """The pool a launch's tasks go to, and whether the launch provisioned it (then a failed
    launch ends it)."""

    pool_id: str
    pool_name: str
    provisioned: bool


class Pools:
    """Provisions and ends the cluster's pools, and says why one cannot start its tasks;
    thread-safe."""

    def __init__(self, api: Api, clusters: Clusters, options: Options, head_setup: str) -> None:
        self.api = api
        self.clusters = clusters
        self.options = options
        self.head_setup = head_setup
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], str] = {}
        """(generation, node type) -> the id of its newest pool."""
        self._failures: dict[tuple[str, str], tuple[str, str]] = {}
        """(generation, node type) -> (pool id, why the platform could not provision it)."""

    def add_capacity(self, cluster: Cluster, node_type: str, count: int) -> CapacityChange:
        """A pool for ``count`` more tasks: the live one, which the platform grows to its
        tasks, or a new one sized for them. A live pool whose provisioning failed is ended
        and provisioned again (the quota or image may have been fixed since)."""
        pool = self.live(cluster, node_type)
        if pool is not None and self.failure(cluster.generation, node_type) is not None:
            assert pool.id is not None and pool.name is not None
            self.undo(CapacityChange(pool.id, pool.name, True))
            pool = None
        if pool is None:
            return self.provision(cluster, node_type, count)
        assert pool.id is not None and pool.name is not None
        return CapacityChange(pool.id, pool.name, False)

    def failure(self, generation: str, node_type: str) -> str | None:
        """Why the platform could not provision the node type's newest pool, as last seen by
        ``why_unable``; None if it has not failed (or was replaced since)."""
        with self._lock:
            found = self._failures.get((generation, node_type))
            newest = self._ids.get((generation, node_type))
        return found[1] if found is not None and found[0] == newest else None

    def provision(self, cluster: Cluster, node_type: str, count: int) -> CapacityChange:
        config = self.options.node_types[node_type]
        name = self.options.names.pool(cluster.generation, node_type, stamp())
        usage = ComputeRequirementTemplateUsage(
            templateId=config.template,
            requirementName=name,
            requirementNamespace=self.options.namespace,
            requirementTag=self.options.tag,
            targetInstanceCount=min(count, config.max_nodes),
            imagesId=config.images_id,
            userData=self._userdata(node_type, config.userdata),
            instanceTags={
                "raydog-cluster": self.options.names.cluster,
                "raydog-node-type": self.options.names.node_types[node_type],
            },
            autoShutdown=AutoShutdown(enabled=True, timeout=self.options.lifetime),
        )
        properties = ProvisionedWorkerPoolProperties(
            createNodeWorkers=NodeWorkerTarget.per_node(1),
            minNodes=0,
            maxNodes=config.max_nodes,
            nodeBootTimeout=self.options.build_timeout,
            idleNodeShutdown=AutoShutdown(enabled=True, timeout=self.options.idle_node_shutdown),
            idlePoolShutdown=AutoShutdown(enabled=True, timeout=self.options.idle_pool_shutdown),
            workerTag=self.options.names.worker_tag(cluster.generation, node_type),
            metricsEnabled=config.metrics_enabled,
        )
        try:
            pool = call(
                "provision",
                f"worker pool {name}",
                lambda: self.api.sdk.worker_pool_client.provision_worker_pool(usage, properties),
            )
        except BaseException:
            self.end_named(name)  # the pool may exist, its answer lost
            raise
        assert pool.id is not None
        logger.info("YellowDog: provisioned worker pool %s (%d node(s))", name, count)
        with self._lock:
            self._ids[(cluster.generation, node_type)] = pool.id
        return CapacityChange(pool.id, name, True)

    def _userdata(self, node_type: str, userdata: str | None) -> str | None:
        """The node type's userdata; the head's gains the tag store server's install."""
        if node_type != self.options.head_node_type or not self.head_setup:
            return userdata
        return "\n".join(part for part in (userdata or "#!/bin/bash", self.head_setup) if part)

    def live(self, cluster: Cluster, node_type: str) -> ProvisionedWorkerPool | None:
        """This generation's live pool for a node type, read now; None if there is none. A
        remembered pool that has ended is looked for again: another process may have
        provisioned its successor."""
        for fresh in (False, True):
            pool_id = self.newest(cluster.generation, node_type, LIVE_POOL, fresh)
            if pool_id is None:
                return None
            pool = self.clusters.pool(pool_id, refresh=True)
            if pool.status is None or not pool.status.finished:
                return pool
            self._forget(cluster.generation, node_type)
        return None

    def newest(
        self, generation: str, node_type: str, statuses: Any = None, fresh: bool = False
    ) -> str | None:
        """The id of a node type's newest pool in this generation: remembered (unless
        ``fresh``), else found."""
        key = (generation, node_type)
        with self._lock:
            known = self._ids.get(key)
        if known is not None and not fresh:
            return known
        candidates = sorted(
            (summary.name or "", summary.id)
            for summary in self.clusters.pools(statuses)
            if self.options.names.parse_pool(summary.name) == key
        )
        if not candidates:
            return None
        with self._lock:
            self._ids[key] = candidates[-1][1]
        return candidates[-1][1]

    def _forget(self, generation: str, node_type: str) -> None:
        with self._lock:
            self._ids.pop((generation, node_type), None)

    def why_unable(self, generation: str, node_type: str) -> str | None:
        """Why a node type's pool will never start a waiting task, or None while it may: a
        source of its compute requirement is ``ERRORED`` (a provisioning failure: quota,
        template, image; its ``statusMessage`` is the platform's reason), or the pool or its
        compute requirement ended before a node booted.

        Two reads while the pool is healthy; a search of live pools only when it is not known
        or has ended (another process may have provisioned its successor). A process that never
        knew the pool (``raydog status``) and finds none live searches every status once, so it
        reports the platform's reason too."""
        pool_id = self.newest(generation, node_type, LIVE_POOL) or self.newest(
            generation, node_type
        )
        if pool_id is None:
            return (
                f"no live worker pool of node type {node_type!r}: it ended before this node started"
            )
        pool = self.clusters.pool(pool_id, refresh=True)
        requirement_id = pool.computeRequirementId
        requirement = None
        if requirement_id is not None:
            requirement = call(
                "read",
                f"compute requirement of worker pool {pool.name}",
                lambda: self.api.sdk.compute_client.get_compute_requirement_by_id(requirement_id),
            )
        failed = requirement.status if requirement is not None else None
        ended = pool.status is not None and pool.status.finished
        errors = _source_errors(requirement)
        if failed not in ENDED_REQUIREMENT and not ended and not errors:
            return None
        successor = self.newest(generation, node_type, LIVE_POOL, fresh=True)
        if successor is not None and successor != pool_id:
            return None  # its tasks wait for the new pool's nodes
        with self._lock:
            self._ids[(generation, node_type)] = pool_id  # the same answer next time
        if errors:
            why = (
                f"YellowDog could not provision worker pool {pool.name}: {'; '.join(errors)}; "
                "check the template, image and quota"
            )
            with self._lock:
                self._failures[(generation, node_type)] = (pool_id, why)
            return why
        messages = [str(s.statusMessage) for s in _sources(requirement) if s.statusMessage]
        detail = f": {'; '.join(messages)}" if messages else ""
        if failed in ENDED_REQUIREMENT:
            return (
                f"YellowDog could not provision worker pool {pool.name} (its compute requirement "
                f"is {failed}){detail}; check the template, image and quota"
            )
        return f"worker pool {pool.name} is {pool.status} and never started this node{detail}"

    def undo(self, change: CapacityChange) -> list[str]:
        """End the pool a failed launch provisioned (a pool it only added tasks to shrinks by
        itself); never raises an API error."""
        if change.provisioned:
            with self._lock:
                self._ids = {k: p for k, p in self._ids.items() if p != change.pool_id}
            cleaned, failures = self.end(change.pool_id, change.pool_name, live=True)
            for failure in failures:
                logger.warning("YellowDog: %s (its idle shutdown will end it)", failure)
            return cleaned
        return []

    def end(self, pool_id: str, name: str, live: bool) -> tuple[list[str], list[str]]:
        """Shut a pool down (if ``live``) and terminate its compute requirement: what was
        ended, and what failed. Already ended is not a failure."""
        cleaned: list[str] = []
        failures: list[str] = []
        client = self.api.sdk
        if live:
            try:
                client.worker_pool_client.shutdown_worker_pool_by_id(pool_id)
                cleaned.append(f"worker pool {name}")
            except API_ERRORS as exc:
                if not is_refusal(exc):
                    failures.append(f"shut down worker pool {name}: {reason(exc)}")
        try:
            requirement_id = self.clusters.pool(pool_id).computeRequirementId
            if requirement_id is not None:
                client.compute_client.terminate_compute_requirement_by_id(requirement_id)
                cleaned.append(f"compute requirement {name}")
        except BackendError as exc:
            failures.append(f"terminate the compute requirement of worker pool {name}: {exc}")
        except API_ERRORS as exc:
            if not is_refusal(exc):
                failures.append(f"terminate the compute requirement {name}: {reason(exc)}")
        return cleaned, failures

    def end_named(self, name: str) -> None:
        """End a pool known only by name (a provisioning whose answer was lost)."""
        try:
            for summary in self.clusters.pools(LIVE_POOL):
                if summary.name == name and summary.id is not None:
                    _, failures = self.end(summary.id, name, live=True)
                    logger.info("YellowDog: ended worker pool %s after a failure", name)
                    for failure in failures:
                        logger.warning("YellowDog: %s", failure)
        except (BackendError, *API_ERRORS) as exc:
            logger.warning("YellowDog: could not look for worker pool %s: %s", name, exc)

    def forget(self) -> None:
        with self._lock:
            self._ids.clear()
            self._failures.clear()


def _sources(requirement: ComputeRequirement | None) -> list[ComputeSource]:
    strategy = requirement.provisionStrategy if requirement is not None else None
    return list((strategy.sources if strategy is not None else None) or [])


def _source_errors(requirement: ComputeRequirement | None) -> list[str]:
    """The platform's reasons for a provisioning failure: each ``ERRORED`` source's
    ``statusMessage`` (SDK ``ComputeSource``, ``ComputeSourceStatus.ERRORED``: "The last
    requested action ... resulted in an error")."""
    return [
        s.statusMessage or f"compute source {s.name} is ERRORED"
        for s in _sources(requirement)
        if s.status is ComputeSourceStatus.ERRORED
    ]
