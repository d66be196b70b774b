"""``RayDogNodeProvider``: Ray's NodeProvider, assembled from three plugins.

One autoscaler tick is one snapshot: the tag store's changes since the last tick (``load_all``
for a store without ``changes_since``) followed by one batched ``describe`` from the compute
backend. Every query after that answers from memory, without copying any node's tags but the one
asked for; writes return at once (the tag cache sends them). The compute
backend decides which nodes exist; the tag store only annotates them, so a node the backend
reports gone leaves ``non_terminated_nodes`` (and Ray replaces it), and its tags are deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Collection, Mapping
from sys import intern
from types import ModuleType
from typing import Any

from ray.autoscaler.command_runner import CommandRunnerInterface
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from raydog_core import clock, cluster_plugins, config_parsing, node_setup, ray_defaults, state
from raydog_core import config as raydog_config
from raydog_core.errors import BackendError, RayDogError, TagValueError
from raydog_core.interfaces import (
    ComputeBackend,
    Endpoint,
    LaunchRequest,
    NodeInfo,
    NodeState,
    Tags,
    TagStore,
    Transport,
)
from raydog_core.launches import Launches
from raydog_core.metrics import (
    TICK_BUCKETS,
    ProviderMetrics,
    find_ray_autoscaler,
    serve_through_ray_autoscaler,
)
from raydog_core.node_setup import VERSIONS_TAG, Versions
from raydog_core.node_tags import NodeTags
from raydog_core.progress import report
from raydog_core.tag_cache import NotReady, TagCache
from raydog_core.why import FAILURES_TAG, REQUESTED_TAG, encode_failures

logger = logging.getLogger(__name__)

# NodeLaunchException's category (Ray asks for under 20 characters): a launch create_node took
# that ended before its node ran, as the compute backend reports it.
LATE_FAILURE_CATEGORY = "LaunchFailedLater"


class RayDogNodeProvider(NodeProvider):
    """``provider: {type: external, module: raydog_core.RayDogNodeProvider}``."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self.raydog_config = config_parsing.from_provider_section(provider_config, cluster_name)
        node_setup.stage_head_wheels(self.raydog_config)
        store, transport, compute = cluster_plugins.build_plugins(self.raydog_config)
        self.store: TagStore = store
        self.transport: Transport = transport
        self.compute: ComputeBackend = compute
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._nodes: dict[str, NodeInfo] = {}
        self.metrics = ProviderMetrics()
        # The last tick's time: node-hours are counted from it.
        self._last_tick: float | None = None
        # What holds Ray's autoscaler that builds this provider on the head: it serves the
        # figures and says which nodes joined Ray. None elsewhere.
        ray_monitor = find_ray_autoscaler() if self.raydog_config.on_head else None
        if ray_monitor is not None:
            serve_through_ray_autoscaler(self.metrics, ray_monitor)
        self._versions_reported = False
        self._filled_reload = 0
        self.tags = TagCache(
            self.store, self._store_endpoint, read_timeout=self.raydog_config.tag_store_read_timeout
        )
        self.metrics.gauge_of("raydog_tag_store_held_writes", self.tags.unsent)
        self.launches = Launches(
            self.metrics,
            clock.of_cluster(cluster_name),
            self.raydog_config.launch_failure_memory,
            self.tags.view,
            ray_monitor,
        )
        self.node_view = NodeTags(
            cluster_name,
            self.tags.view,
            self.launches.joining,
            bool(provider_config.get("disable_node_updaters", True)),
        )

    # --- Ray's queries: answered from the last snapshot, no I/O ---------------------------
    # Readers take no lock: ``_nodes`` entries and the cache's per-node dicts are replaced,
    # never changed in place, and one dict lookup is atomic.

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        self.refresh()
        with self._lock:
            live = [n for n, info in self._nodes.items() if info.state is not NodeState.TERMINATED]
        if not tag_filters:
            return live
        nodes = self._nodes
        return [n for n in live if self.node_view.matches(n, nodes.get(n), tag_filters)]

    def is_running(self, node_id: str) -> bool:
        info = self._nodes.get(node_id)
        return info is not None and info.state is NodeState.RUNNING

    def is_terminated(self, node_id: str) -> bool:
        info = self._nodes.get(node_id)
        return info is None or info.state is NodeState.TERMINATED

    def node_tags(self, node_id: str) -> dict[str, str]:
        """The stored tags over what the backend says; worker status from the backend."""
        return self.node_view.of(node_id, self._nodes.get(node_id))

    def internal_ip(self, node_id: str) -> str | None:  # type: ignore[override]
        info = self._nodes.get(node_id)
        return info.internal_ip if info is not None else None

    def external_ip(self, node_id: str) -> str | None:  # type: ignore[override]
        info = self._nodes.get(node_id)
        return info.external_ip if info is not None else None

    # --- Ray's actions -------------------------------------------------------------------

    def create_node(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int
    ) -> dict[str, Any]:
        is_head = tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD
        node_type = tags.get(TAG_RAY_USER_NODE_TYPE) or (
            self.raydog_config.head_node_type if is_head else ""
        )
        if node_type not in self.raydog_config.node_types:
            raise RayDogError(
                f"create_node: unknown node type {node_type!r} "
                f"(available_node_types: {', '.join(self.raydog_config.node_types)})"
            )
        self.raydog_config.check_files()
        if not is_head:
            failure = self.launches.recent_failure(node_type)
            if failure is not None:
                # Ray records this against the node type (``ray status``: Recent failures).
                raise NodeLaunchException(LATE_FAILURE_CATEGORY, failure.reason, src_exc_info=None)
        request = LaunchRequest(
            node_type, count, is_head, node_config, tags.get(TAG_RAY_LAUNCH_CONFIG, "")
        )
        try:
            with self.metrics.compute_call("launch"):
                node_ids = self.compute.launch(request)
        except BackendError as exc:
            self.metrics.count(
                "raydog_launch_failures_total", node_type=node_type, reason=type(exc).__name__
            )
            if is_head:
                raise
            raise NodeLaunchException("RayDog launch failed", str(exc), src_exc_info=None) from exc
        with self._lock:
            self.launches.launched(node_ids, node_type, is_head)
            for node_id in node_ids:
                self._nodes.setdefault(
                    node_id,
                    NodeInfo(
                        node_id,
                        node_type,
                        is_head,
                        NodeState.PENDING,
                        launch_config=request.launch_config,
                    ),
                )
        base = {
            **tags,
            TAG_RAY_CLUSTER_NAME: self.cluster_name,
            TAG_RAY_USER_NODE_TYPE: node_type,
            REQUESTED_TAG: f"{time.time():.3f}",
        }
        # The launch's own write: the only one that may bring back a node id deleted before.
        self.tags.update({node_id: base for node_id in node_ids}, launched=True)
        return {node_id: node_id for node_id in node_ids}

    def cleanup_cluster_resources(self, node_ids: Collection[str] = ()) -> None:
        """Shut the whole cluster down; Ray's ``ray down`` calls it last (a head that had
        already ended leaves the rest to it). Idempotent."""
        with self._lock:
            known = set(self._nodes)
        self.tags.delete(known | set(node_ids) | self.tags.node_ids())
        if self._head_store_ended():
            self.tags.store_ended()
        # Send the deletes (bounded) while the head's store still runs, then let go of it.
        self.tags.close()
        with self.metrics.compute_call("shutdown"):
            self.compute.shutdown()
        with self._lock:
            self._nodes.clear()
        self.transport.close()
        if not self.raydog_config.on_head:
            removed = state.forget_cluster(self.cluster_name)
            if removed:
                report(
                    "removed this cluster's saved credentials and secrets from %s (%s); set "
                    "%s=1 to keep them",
                    state.cluster_dir(self.cluster_name),
                    ", ".join(removed),
                    state.KEEP_VARIABLE,
                )

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        self.tags.update({node_id: tags})

    def terminate_node(self, node_id: str) -> dict[str, Any] | None:
        return self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> dict[str, Any] | None:
        """A batch that contains the head shuts the whole cluster down."""
        if not node_ids:
            return None
        if any(self._is_head(node_id) for node_id in node_ids):
            logger.info(
                "RayDog: the head is in the batch; shutting down cluster %s", self.cluster_name
            )
            self.cleanup_cluster_resources(node_ids)
            return None
        with self.metrics.compute_call("terminate"):
            self.compute.terminate(node_ids)
        with self._lock:
            for node_id in node_ids:
                info = self._nodes.get(node_id)
                if info is not None:
                    self._nodes[node_id] = _terminated(info, "terminated by Ray")
                self.node_view.forget(node_id)
        self.tags.delete(node_ids)
        return None

    # --- Ray's hooks ---------------------------------------------------------------------

    @staticmethod
    def fillout_available_node_types_resources(cluster_config: dict[str, Any]) -> dict[str, Any]:
        """Ray's only hook before its schema check: RayDog fills in what a config leaves out."""
        return ray_defaults.fill_defaults(cluster_config)

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        return raydog_config.bootstrap(cluster_config)

    def prepare_for_head_node(self, cluster_config: dict[str, Any]) -> dict[str, Any]:
        cluster_config["provider"] = raydog_config.for_head(
            cluster_config["provider"], cluster_config.get("auth", {})
        )
        return cluster_config

    def get_command_runner(
        self,
        log_prefix: str,
        node_id: str,
        auth_config: dict[str, Any],
        cluster_name: str,
        process_runner: ModuleType,
        use_internal_ip: bool,
        docker_config: dict[str, Any] | None = None,
    ) -> CommandRunnerInterface:
        runner = self.compute.command_runner(
            log_prefix=log_prefix,
            node_id=node_id,
            auth_config=auth_config,
            cluster_name=cluster_name,
            process_runner=process_runner,
            use_internal_ip=use_internal_ip,
        )
        if runner is not None:
            return runner
        return super().get_command_runner(
            log_prefix,
            node_id,
            auth_config,
            cluster_name,
            process_runner,
            use_internal_ip,
            docker_config,
        )

    # --- the snapshot --------------------------------------------------------------------

    def refresh(self, reconcile: bool = True) -> None:
        """Take one snapshot: tags first, then the backend's view; then act on what it shows.

        Reading the tags before describing means any node whose tags were seen had been
        launched before the describe started, so a node missing from it is really gone.
        ``describe()`` only reports: a node it shows terminated (or no longer shows) that this
        provider knew as live has its tags deleted and is terminated here, which stops what it
        left behind. ``reconcile=False`` only looks (``raydog status``).
        """
        with self._refresh_lock:
            started = time.monotonic()
            fresh = self.tags.refresh()
            tags = self.tags.node_ids()
            # Interned, as the tag cache's are: Ray's lookups then match by identity.
            with self.metrics.compute_call("describe"):
                reported = self.compute.describe()
            described = {intern(info.node_id): info for info in reported}
            with self._lock:
                previous = self._nodes
                kept = set()
                for node_id in self.launches.not_yet_described(described.keys(), started):
                    if node_id in previous:
                        described[node_id] = previous[node_id]
                        kept.add(node_id)
                self._nodes = described
                # Small sets only: what vanished or ended, among nodes with tags or known live.
                ended = {n for n, info in described.items() if info.state is NodeState.TERMINATED}
                vanished = (tags - described.keys()) | (tags & ended)
                for node_id in (previous.keys() - described.keys()) | (previous.keys() & ended):
                    if previous[node_id].state is not NodeState.TERMINATED:
                        vanished.add(node_id)
                gone = {node_id: _why_ended(described.get(node_id)) for node_id in vanished - kept}
                failures_changed, joined = self.launches.observe(previous, described, gone)
                for node_id in [*gone, *joined]:  # ended, or up to date now
                    self.node_view.forget(node_id)
                self._measure(described)
            if failures_changed and reconcile:
                self._record_failures_on_head(described)
            if gone and reconcile:
                self._reconcile(gone)
            if fresh and reconcile and self.tags.reloads != self._filled_reload:
                self._filled_reload = self.tags.reloads
                self._fill_derived(described.values())
            if not fresh and self.tags.waiting_for_location:
                # The head's address may be known from this describe: try the store once more.
                self.tags.refresh()
            self.metrics.observe(
                "raydog_tick_seconds", time.monotonic() - started, buckets=TICK_BUCKETS
            )
        if self.raydog_config.on_head and not self._versions_reported:
            self._report_versions()

    def _measure(self, described: Mapping[str, NodeInfo]) -> None:
        """This tick's figures: nodes by type and state, node-hours, the tag store's counts
        (the launches' own are ``Launches``'). Holds ``_lock``."""
        now = time.monotonic()
        by_state: dict[tuple[tuple[str, str], ...], float] = {}
        for info in described.values():
            key = (("node_type", info.node_type), ("state", info.state.value))
            by_state[key] = by_state.get(key, 0.0) + 1
            if info.state is NodeState.RUNNING and self._last_tick is not None:
                self.metrics.count(
                    "raydog_node_hours_total",
                    (now - self._last_tick) / 3600.0,
                    node_type=info.node_type,
                )
        self._last_tick = now
        self.metrics.set_gauge("raydog_nodes", by_state)
        store = self.tags.figures()
        self.metrics.set_total("raydog_tag_store_round_trips_total", store["round_trips"])
        self.metrics.set_total("raydog_tag_store_written_bytes_total", store["bytes_written"])

    def _record_failures_on_head(self, described: Mapping[str, NodeInfo]) -> None:
        """Keep the late failures' chains on the head node's tags, where ``raydog status
        --why`` finds them after the failed nodes and their tags are gone."""
        heads = [
            i.node_id
            for i in described.values()
            if i.is_head and i.state is not NodeState.TERMINATED
        ]
        chains = self.launches.failure_chains()
        if not heads:
            return
        try:
            self.tags.update({heads[0]: {FAILURES_TAG: encode_failures(chains)}})
        except TagValueError as exc:  # a store's size limit: the log line above keeps them
            logger.warning("RayDog: could not keep the late failures on the head's tags: %s", exc)

    def _reconcile(self, gone: Mapping[str, str]) -> None:
        """Nodes the backend reports ended: forget their tags, stop what they left.

        Why each ended is logged (one line, in the head's monitor log): once terminated, a
        backend may report the node no more, so this line is where a user finds the reason."""
        ids = sorted(gone)
        by_reason: dict[str, list[str]] = {}
        for node_id in ids:
            by_reason.setdefault(gone[node_id], []).append(node_id)
        logger.info(
            "RayDog: %d node(s) ended, as the compute backend reports: %s",
            len(ids),
            "; ".join(f"{', '.join(nodes)} ({why})" for why, nodes in by_reason.items()),
        )
        self.tags.delete(ids)
        if self._head_store_ended():
            self.tags.store_ended()
        try:
            with self.metrics.compute_call("terminate"):
                self.compute.terminate(ids)
        except BackendError as exc:
            logger.warning("RayDog: could not clean up ended node(s) %s: %s", ids, exc)

    def _fill_derived(self, nodes: Collection[NodeInfo]) -> None:
        """After a read that took the store whole (this provider's first, or the store came
        back empty): write what the backend says of each live node (its launch config, kind,
        type) where the store lacks it. The tag cache sends back what this process remembers;
        this restores what no running process remembers (a `ray up` whose writes never reached
        the store, an autoscaler restarted since), so the store holds it again."""
        missing: dict[str, Tags] = {}
        for info in nodes:
            if info.state is NodeState.TERMINATED:
                continue
            stored = self.tags.view(info.node_id) or {}
            lacking = {
                name: value
                for name, value in self.node_view.derived(info).items()
                if name != TAG_RAY_NODE_STATUS and name not in stored
            }
            if lacking:
                missing[info.node_id] = lacking
        if missing:
            logger.info(
                "RayDog: the tag store lacked what the compute backend records of %d node(s) "
                "(launch config, kind, type); writing it back",
                len(missing),
            )
            self.tags.update(missing)

    def _report_versions(self) -> None:
        """On the head: tag the head node with the versions it runs (``raydog doctor`` reads it)."""
        with self._lock:
            heads = [i.node_id for i in self._nodes.values() if i.is_head]
        if heads:
            self.tags.update({heads[0]: {VERSIONS_TAG: str(Versions.of_this_client())}})
            self._versions_reported = True

    def snapshot(self) -> dict[str, NodeInfo]:
        """Every node of the last snapshot, ended ones included, by id."""
        with self._lock:
            return dict(self._nodes)

    def _info(self, node_id: str) -> NodeInfo | None:
        return self._nodes.get(node_id)

    def _is_head(self, node_id: str) -> bool:
        info = self._info(node_id)
        if info is not None:
            return info.is_head
        return self.tags.get(node_id).get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD

    def _head_store_ended(self) -> bool:
        """Whether the tag store was the head's own and the head has ended (seen from a client:
        ``ray down`` after the head's `ray stop` ended its task), taking the store with it."""
        if self.store.head_port is None or self.raydog_config.on_head:
            return False
        with self._lock:
            return not any(
                info.is_head and info.state is not NodeState.TERMINATED
                for info in self._nodes.values()
            )

    def _store_endpoint(self) -> Endpoint | None:
        """Where the tag store answers from here; NotReady until the head runs."""
        port = self.store.head_port
        if port is None:
            return None
        if self.raydog_config.on_head:
            return Endpoint("127.0.0.1", port)
        with self._lock:
            heads = [
                info
                for info in self._nodes.values()
                if info.is_head and info.state is NodeState.RUNNING
            ]
        address = heads[0].external_ip or heads[0].internal_ip if heads else None
        if not address:
            raise NotReady
        return self.transport.open(address, port, self.raydog_config.auth)

    def close(self) -> None:
        """Send pending tag writes and release connections."""
        self.tags.close()
        self.transport.close()
        self.compute.close()


def _why_ended(info: NodeInfo | None) -> str:
    """The backend's reason for a node that ended, or what its absence says."""
    if info is None:
        return "no longer reported by the compute backend"
    return info.detail or "terminated, no reason given"


def _terminated(info: NodeInfo, detail: str) -> NodeInfo:
    return dataclasses.replace(info, state=NodeState.TERMINATED, detail=detail)
