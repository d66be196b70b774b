"""Every local cluster on this machine, found and ended without its config.

A local cluster is a folder of the base folder holding node records (``nodes``); anything else
there is not looked at. Each one is described and ended by a backend built for its name alone,
so ``raydog shutdown`` stops the same processes, frees the same addresses and removes the same
folders as ``ray down``.
"""

from __future__ import annotations

from pathlib import Path

from raydog_backends.local.nodes import ClusterFolder
from raydog_core.errors import BackendError
from raydog_core.interfaces import (
    ClusterSpec,
    ComputeBackend,
    Fleet,
    FleetCluster,
    NodeInfo,
    NodeState,
)


class LocalFleet(Fleet):
    """The local clusters under one base folder."""

    def __init__(self, backend: type[ComputeBackend], base: Path, grace_seconds: float) -> None:
        self.backend = backend
        """The local backend's class (given, so that this module does not import it)."""
        self.base = base
        self.grace_seconds = grace_seconds
        self.where = f"local clusters in {base}"

    def clusters(self) -> list[FleetCluster]:
        if not self.base.is_dir():
            return []
        found = []
        for root in sorted(self.base.iterdir()):
            if root.is_dir() and ClusterFolder(root).nodes_dir.is_dir():
                found.append(self._summary(root.name))
        return found

    def shutdown(self, name: str) -> list[str]:
        if "/" in name or name in ("", ".", ".."):
            raise BackendError("shut down", f"local cluster {name!r}", "not a cluster's name")
        folder = ClusterFolder(self.base / name)
        if not folder.nodes_dir.is_dir():
            return []
        backend = self._backend(name)
        ended = [f"node {info.node_id} ({info.state.value})" for info in backend.describe()]
        backend.shutdown()
        return [*ended, f"folder {folder.root}"]

    def _backend(self, name: str) -> ComputeBackend:
        spec = ClusterSpec(
            cluster_name=name, head_node_type="", node_types={}, head_script="", worker_script=""
        )
        return self.backend(spec, base_dir=str(self.base), grace_seconds=self.grace_seconds)

    def _summary(self, name: str) -> FleetCluster:
        backend = self._backend(name)
        infos = backend.describe()
        folder = ClusterFolder(self.base / name)
        records = {record.node_id: record for record in folder.records()}
        nodes: dict[str, dict[str, int]] = {}
        for info in infos:
            counts = nodes.setdefault(info.node_type, {})
            counts[info.state.value] = counts.get(info.state.value, 0) + 1
        head = _live_head(infos)
        address = None
        if head is not None:
            port = records[head.node_id].ports.get("gcs") if head.node_id in records else None
            address = f"{head.internal_ip}:{port}" if port else head.internal_ip
        started = [record.launched_at for record in records.values()]
        billable = [
            f"node {info.node_id} ({info.state.value}"
            + (f", pid {records[info.node_id].pid})" if info.node_id in records else ")")
            for info in infos
        ]
        return FleetCluster(
            name=name,
            state="running" if head is not None else "leftovers",
            head_address=address,
            nodes=nodes,
            started=min(started) if started else None,
            billable=(*billable, f"folder {folder.root}"),
        )


def _live_head(infos: list[NodeInfo]) -> NodeInfo | None:
    return next((i for i in infos if i.is_head and i.state is not NodeState.TERMINATED), None)
