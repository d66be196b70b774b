"""The ``memory`` tag store: tags in this process, shared by all stores of one cluster name.

It offers ``changes_since`` as the valkey and redis stores do: every write takes the next version
of its cluster; each node remembers the version of its last change in an insertion-ordered dict
(moved to the end on every change), so the nodes changed since a version are read from the end,
in O(changes). Deleted nodes leave a tombstone; the oldest are dropped past ``TOMBSTONES``, and a
reader older than what was dropped gets a full reload.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from raydog_core.errors import RayDogError
from raydog_core.interfaces import Changes, ChangeToken, Endpoint, Tags, TagStore

TOMBSTONES = 10_000


@dataclass
class _Cluster:
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    version: int = 0
    horizon: int = 0
    """Deltas are complete only for readers at this version or later."""
    nodes: dict[str, Tags] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)

    def touch(self, log: dict[str, int], node_id: str) -> None:
        log.pop(node_id, None)
        log[node_id] = self.version


def _since(log: dict[str, int], version: int) -> list[str]:
    found = []
    for node_id, changed in reversed(log.items()):
        if changed <= version:
            break
        found.append(node_id)
    return found


class MemoryTagStore(TagStore):
    """Two stores made for one cluster name see the same data, as two clients of a server would."""

    head_port = None
    _clusters: ClassVar[dict[str, _Cluster]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, cluster_name: str) -> None:
        super().__init__(cluster_name)
        self._connected = False

    def connect(self, endpoint: Endpoint | None) -> None:
        self._connected = True

    def _cluster(self) -> _Cluster:
        if not self._connected:
            raise RayDogError("memory tag store used before connect()")
        return self._clusters.setdefault(self.cluster_name, _Cluster())

    def load_all(self) -> dict[str, Tags]:
        with self._lock:
            return {node: dict(tags) for node, tags in self._cluster().nodes.items()}

    def changes_since(self, token: ChangeToken | None) -> Changes:
        with self._lock:
            cluster = self._cluster()
            now = ChangeToken(cluster.epoch, cluster.version)
            if (
                token is None
                or token.epoch != cluster.epoch
                or not cluster.horizon <= token.version <= cluster.version
            ):
                nodes = {node: dict(tags) for node, tags in cluster.nodes.items()}
                return Changes(now, True, nodes)
            updated = {n: dict(cluster.nodes[n]) for n in _since(cluster.changed, token.version)}
            return Changes(now, False, updated, _since(cluster.deleted, token.version))

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        self._update(updates, None)

    def update_unless_deleted(
        self, updates: Mapping[str, Mapping[str, str]], launched: Collection[str]
    ) -> list[str]:
        return self._update(updates, launched)

    def _update(
        self, updates: Mapping[str, Mapping[str, str]], launched: Collection[str] | None
    ) -> list[str]:
        """Merge; with ``launched`` given, writes to tombstoned nodes not in it are dropped."""
        dropped: list[str] = []
        with self._lock:
            cluster = self._cluster()
            if not updates:
                return dropped
            cluster.version += 1
            for node_id, tags in updates.items():
                if launched is not None and node_id in cluster.deleted and node_id not in launched:
                    dropped.append(node_id)
                    continue
                cluster.nodes[node_id] = {**cluster.nodes.get(node_id, {}), **tags}
                cluster.touch(cluster.changed, node_id)
                cluster.deleted.pop(node_id, None)
        return dropped

    def delete(self, node_ids: Collection[str]) -> None:
        with self._lock:
            cluster = self._cluster()
            if not node_ids:
                return
            cluster.version += 1
            for node_id in node_ids:
                cluster.nodes.pop(node_id, None)
                cluster.changed.pop(node_id, None)
                cluster.touch(cluster.deleted, node_id)
            while len(cluster.deleted) > TOMBSTONES:
                oldest = next(iter(cluster.deleted))
                cluster.horizon = cluster.deleted.pop(oldest)

    def close(self) -> None:
        self._connected = False

    @classmethod
    def forget(cls, cluster_name: str) -> None:
        """Drop a cluster's tags, as a server restarted without persistence would (a new epoch);
        tests use it between runs and to model a restart."""
        with cls._lock:
            cls._clusters.pop(cluster_name, None)
