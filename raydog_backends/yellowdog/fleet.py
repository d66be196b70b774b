"""Every RayDog cluster of one YellowDog namespace, found and ended without its config.

A cluster is known by its names (``names``): its work requirements ``<cluster>_<generation>``
whose task groups are RayDog's (tagged ``ray-head`` or ``ray-worker``), and its pools and their
compute requirements ``<cluster>_<generation>_<node type>_<stamp>``. Nothing else in the namespace
is read twice or touched. Each cluster is then looked at, and ended, by a backend built for its
names alone, so ``raydog shutdown`` runs the very teardown ``ray down`` runs; a compute
requirement whose pool is already gone is terminated after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from yellowdog_client.model import (
    ComputeRequirementStatus,
)

from raydog_backends.yellowdog.api import API_ERRORS, Api, call, is_refusal, reason
from raydog_backends.yellowdog.cluster import (
    HEAD_GROUP_TAG,
    LIVE_POOL,
    LIVE_WORK_REQUIREMENT,
    UNENDED_REQUIREMENT,
    UNFINISHED_WORK_REQUIREMENT,
    UNTERMINATED_POOL,
    WORKER_GROUP_TAG,
    find_compute_requirements,
    find_pools,
    find_work_requirements,
)
from raydog_backends.yellowdog.names import parse_name, slug, stamp_time
from raydog_backends.yellowdog.teardown import shutdown_everything
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import (
    ClusterSpec,
    ComputeBackend,
    Fleet,
    FleetCluster,
    NodeState,
    NodeTypeSpec,
)

NOT_USED = "(not used: this backend only looks at and ends a cluster)"
"""The template of the node types of a backend built from names: it never launches."""
UNTERMINATED_REQUIREMENT = [
    s for s in ComputeRequirementStatus if s is not ComputeRequirementStatus.TERMINATED
]
RAYDOG_GROUP_TAGS = {HEAD_GROUP_TAG, WORKER_GROUP_TAG}


@dataclass
class _Found:
    """One cluster's objects in the namespace."""

    cluster: str
    generations: set[str] = field(default_factory=set)
    node_types: set[str] = field(default_factory=set)
    work_requirements: list[Any] = field(default_factory=list)
    pools: list[Any] = field(default_factory=list)
    computes: list[Any] = field(default_factory=list)

    def add(self, generation: str, node_type: str | None) -> None:
        self.generations.add(generation)
        if node_type is not None:
            self.node_types.add(node_type)


class YellowDogFleet(Fleet):
    """The RayDog clusters of one namespace, with the credentials ``ray up`` would use."""

    def __init__(
        self,
        backend: type[ComputeBackend],
        namespace: str,
        api_url: str | None,
        max_attempts: int = 3,
    ) -> None:
        self.backend = backend
        """The yellowdog backend's class (given, so that this module does not import it)."""
        self.namespace = namespace
        self.api_url = api_url
        self.where = f"YellowDog namespace {namespace}"
        self.max_attempts = max_attempts
        self.api = Api("", api_url, max_attempts)
        self.api.save_credentials = False

    def clusters(self) -> list[FleetCluster]:
        return [self._summary(found) for found in self._find().values()]

    def shutdown(self, name: str) -> list[str]:
        cluster = slug(name) or name
        found = self._find().get(cluster)
        if found is None:
            return []
        backend = self._backend(found)
        try:
            with backend.launcher.lock:
                cleaned, failures = shutdown_everything(
                    backend.api, backend.clusters, backend.pools
                )
            for compute in backend.clusters.compute_requirements(UNENDED_REQUIREMENT):
                if any(compute.name in line for line in cleaned):
                    continue
                try:
                    backend.api.sdk.compute_client.terminate_compute_requirement_by_id(compute.id)
                    cleaned.append(f"compute requirement {compute.name}")
                except API_ERRORS as exc:
                    if not is_refusal(exc):
                        failures.append(
                            f"terminate compute requirement {compute.name}: {reason(exc)}"
                        )
        finally:
            backend.close()
        if failures:
            raise BackendError(
                "shut down", f"cluster {cluster!r} ({self.where})", "; ".join(failures), cleaned
            )
        return cleaned

    def close(self) -> None:
        self.api.close()

    # --- finding ---------------------------------------------------------------------------

    def _find(self) -> dict[str, _Found]:
        found: dict[str, _Found] = {}

        def of(name: str | None) -> tuple[_Found, Any] | None:
            parsed = parse_name(name)
            if parsed is None:
                return None
            entry = found.setdefault(parsed.cluster, _Found(parsed.cluster))
            return entry, parsed

        for summary in find_work_requirements(
            self.api, self.namespace, UNFINISHED_WORK_REQUIREMENT, self.where
        ):
            hit = of(summary.name)
            if hit is not None and hit[1].node_type is None and self._is_raydogs(summary.id):
                hit[0].add(hit[1].generation, None)
                hit[0].work_requirements.append(summary)
        for pool in find_pools(self.api, self.namespace, UNTERMINATED_POOL, self.where):
            hit = of(pool.name)
            if hit is not None and hit[1].node_type is not None:
                hit[0].add(hit[1].generation, hit[1].node_type)
                hit[0].pools.append(pool)
        for compute in find_compute_requirements(
            self.api, self.namespace, UNTERMINATED_REQUIREMENT, self.where
        ):
            hit = of(compute.name)
            if hit is not None and hit[1].node_type is not None:
                hit[0].add(hit[1].generation, hit[1].node_type)
                hit[0].computes.append(compute)
        return {name: entry for name, entry in found.items() if entry.generations}

    def _is_raydogs(self, requirement_id: str | None) -> bool:
        """Names tell, and the task groups confirm: RayDog tags every group it makes."""
        if requirement_id is None:
            return False
        requirement = call(
            "read",
            f"work requirement {requirement_id}",
            lambda: self.api.sdk.work_client.get_work_requirement_by_id(requirement_id),
        )
        return all(group.tag in RAYDOG_GROUP_TAGS for group in requirement.taskGroups or [])

    # --- looking at one cluster --------------------------------------------------------------

    def _backend(self, found: _Found) -> Any:
        """A backend for the cluster's names alone: it finds every generation's objects."""
        types = {
            name: NodeTypeSpec(name, {"compute_requirement_template": NOT_USED})
            for name in sorted(found.node_types)
        }
        spec = ClusterSpec(
            cluster_name=found.cluster,
            head_node_type=next(iter(types), ""),
            node_types=types,
            head_script="",
            worker_script="",
        )
        backend: Any = self.backend(
            spec,
            cluster_namespace=self.namespace,
            api_url=self.api_url,
            api_max_attempts=self.max_attempts,
        )
        backend.api.save_credentials = False
        return backend

    def _summary(self, found: _Found) -> FleetCluster:
        nodes: dict[str, dict[str, int]] = {}
        head_address = None
        head_alive = False
        live_requirement = any(r.status in LIVE_WORK_REQUIREMENT for r in found.work_requirements)
        if live_requirement:
            backend = self._backend(found)
            try:
                infos = backend.describe()
            finally:
                backend.close()
            for info in infos:
                counts = nodes.setdefault(info.node_type, {})
                counts[info.state.value] = counts.get(info.state.value, 0) + 1
                if info.is_head and info.state is not NodeState.TERMINATED:
                    head_alive = True
                    head_address = info.external_ip or info.internal_ip
        live_pools = [p for p in found.pools if p.status in LIVE_POOL]
        unended = [c for c in found.computes if c.status in UNENDED_REQUIREMENT]
        if head_alive:
            state = "running"
        elif live_requirement or live_pools or unended:
            state = "leftovers"
        else:
            state = "shutting down"
        billable = [f"work requirement {r.name} ({_status(r)})" for r in found.work_requirements]
        billable += [f"worker pool {p.name} ({_status(p)})" for p in found.pools]
        billable += [
            f"compute requirement {c.name} ({_status(c)}, {c.aliveInstanceCount} instance(s))"
            for c in found.computes
        ]
        return FleetCluster(
            name=found.cluster,
            state=state,
            head_address=head_address,
            nodes=nodes,
            started=stamp_time(min(found.generations)),
            ends=self._ends(unended),
            billable=tuple(billable),
        )

    def _ends(self, computes: list[Any]) -> float | None:
        """The latest ``autoShutdownTime`` of the compute requirements still running: by then
        nothing of the cluster is left, whatever happens to RayDog."""
        times = []
        for summary in computes:
            try:
                requirement = self.api.sdk.compute_client.get_compute_requirement_by_id(summary.id)
            except API_ERRORS:
                continue
            when = getattr(requirement, "autoShutdownTime", None)
            if when is not None:
                times.append(when.timestamp())
        return max(times) if times else None


def _status(summary: Any) -> str:
    status = summary.status
    return str(status.value) if status is not None else "unknown"


def fleet(
    backend: type[ComputeBackend], namespace: str | None, options: Mapping[str, Any]
) -> YellowDogFleet:
    """The fleet of ``namespace`` (else the config's ``cluster_namespace``, else ``default``),
    with the config's ``api_url`` and ``api_max_attempts``."""
    chosen = namespace or options.get("cluster_namespace") or "default"
    api_url = options.get("api_url")
    attempts = options.get("api_max_attempts", 3)
    if not isinstance(attempts, int) or attempts < 1:
        raise ConfigError("api_max_attempts", f"must be at least 1, got {attempts!r}")
    return YellowDogFleet(backend, str(chosen), str(api_url) if api_url else None, attempts)
