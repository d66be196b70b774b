"""Where each cluster's head runs: waited for when it is launched (``ray up`` shows it boot),
then remembered, since every worker's task is told the head's private address.

A describe that sees the head running records its address too, so a provider built after the
head's launch (the head's own autoscaler) finds it without a search.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from yellowdog_client.model import TaskSearch, TaskStatus

from raydog_backends.yellowdog.addresses import Address, Addresses
from raydog_backends.yellowdog.api import Api, all_items, call
from raydog_backends.yellowdog.api import task_errors as errors_of
from raydog_backends.yellowdog.cluster import Cluster, Clusters
from raydog_backends.yellowdog.options import DEFAULT_LIFETIME_HOURS, Options
from raydog_backends.yellowdog.pools import Pools
from raydog_core.errors import BackendError
from raydog_core.interfaces import ClusterSpec
from raydog_core.progress import report

PROGRESS_SECONDS = 30.0
MAX_POLL_SECONDS = 5.0


class Heads:
    """The heads of one backend's clusters: the wait for a new one, and their addresses."""

    def __init__(
        self,
        spec: ClusterSpec,
        options: Options,
        api: Api,
        clusters: Clusters,
        pools: Pools,
        addresses: Addresses,
    ) -> None:
        self.spec = spec
        self.options = options
        self.api = api
        self.clusters = clusters
        self.pools = pools
        self.addresses = addresses
        self._lock = threading.Lock()
        self._known: dict[str, Address] = {}
        """Work requirement id -> its head's addresses; taken without the launch lock, so
        that a describe may record them while a launch runs."""

    def wait_until_running(
        self, task_id: str, cluster: Cluster, node_type: str, deadline: float
    ) -> Address:
        """Poll the head's task (backing off) until it executes on a node whose addresses are
        known; fail early if its pool can never start it.

        A status line goes to Ray's CLI output when the task's status changes, and every
        ``PROGRESS_SECONDS`` while it does not, so `ray up` shows the instance booting.
        """
        delay = 0.1
        started = checked = time.monotonic()
        shown: tuple[object, float] = (None, started)
        what = f"the head node of {self.clusters.what()}"
        timeout = self.options.build_timeout.total_seconds()
        report("waiting for %s (task %s; up to %g minutes)", what, task_id, timeout / 60)
        while True:
            task = call(
                "read",
                f"head task {task_id}",
                lambda: self.api.sdk.work_client.get_task_by_id(task_id),
            )
            status = task.status
            if status is not None and (status.finished or status is TaskStatus.UPLOADING):
                raise BackendError("launch", what, f"its task is {status}{errors_of(task)}")
            if status is TaskStatus.EXECUTING:
                address = self.addresses.of_task(task, public=True)
                if address is not None and address.private:
                    if address.public is None and not self.spec.internal_ips:
                        raise BackendError("launch", what, self._no_public_address(node_type))
                    report("the head node runs at %s", address.public or address.private)
                    return address
            now = time.monotonic()
            if status is not TaskStatus.EXECUTING and now - checked >= min(
                self.options.node_recheck_seconds, PROGRESS_SECONDS
            ):
                checked = now
                unable = self.pools.why_unable(cluster.generation, node_type)
                if unable is not None:
                    raise BackendError("launch", what, unable)
            if status != shown[0] or now - shown[1] >= PROGRESS_SECONDS:
                report("head task %s after %.0f s", status, now - started)
                shown = (status, now)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(
                    "launch",
                    what,
                    f"not running after {timeout / 60:g} minutes "
                    f"(head_node_build_timeout_minutes); its task is {status}",
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_POLL_SECONDS)

    def report_lifetime(self) -> None:
        """Say how long the cluster lives, in ``ray up``'s output: each task's timeout is the
        cluster's lifetime, so the head's task ends by then (and the cluster with it)."""
        lifetime = self.options.lifetime
        ends = (datetime.now(timezone.utc) + lifetime).strftime("%Y-%m-%d %H:%M UTC")
        report(
            "cluster lifetime %g h (provider.cluster_lifetime_hours; default %g): YellowDog ends "
            "the head by %s at the latest, and each worker at most %g h after it starts",
            lifetime.total_seconds() / 3600,
            DEFAULT_LIFETIME_HOURS,
            ends,
            lifetime.total_seconds() / 3600,
        )

    def _no_public_address(self, node_type: str) -> str:
        template = self.options.node_types[node_type].template
        return (
            f"its instance runs without a public IP address: the compute sources of compute "
            f"requirement template {template} assign none (assignPublicIp), so Ray cannot reach "
            "it from outside their network. From inside that network, set "
            "`use_internal_ips: true` under `provider` (with `transport: direct`); from "
            f"outside, give node type {node_type!r} a template whose sources assign public IPs"
        )

    def private_ip(self, cluster: Cluster) -> str:
        with self._lock:
            known = self._known.get(cluster.id)
        if known is not None and known.private:
            return known.private
        head_groups = [g.id for g in cluster.groups.values() if g.is_head]
        for group_id in reversed(head_groups):
            search = TaskSearch(
                workRequirementId=cluster.id, taskGroupId=group_id, statuses=[TaskStatus.EXECUTING]
            )
            tasks = call(
                "find",
                f"the head node of {self.clusters.what()}",
                lambda search=search: all_items(self.api.sdk.work_client.get_tasks(search)),  # type: ignore[misc]
            )
            for task in tasks:
                address = self.addresses.of_task(task, public=False)
                if address is not None and address.private:
                    self.remember(cluster.id, address)
                    return address.private
        raise BackendError(
            "launch", f"workers of {self.clusters.what()}", "the head node is not running"
        )

    def remember(self, cluster_id: str, address: Address) -> None:
        with self._lock:
            self._known[cluster_id] = address

    def forget(self) -> None:
        with self._lock:
            self._known.clear()
