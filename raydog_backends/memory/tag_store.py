"""The ``memory`` tag store: tags in this process, shared by all stores of one cluster name."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import ClassVar

from raydog_core.errors import RayDogError
from raydog_core.interfaces import Endpoint, Tags, TagStore


class MemoryTagStore(TagStore):
    """Two stores made for one cluster name see the same data, as two clients of a server would."""

    head_port = None
    _clusters: ClassVar[dict[str, dict[str, Tags]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, cluster_name: str) -> None:
        super().__init__(cluster_name)
        self._connected = False

    def connect(self, endpoint: Endpoint | None) -> None:
        self._connected = True

    def _data(self) -> dict[str, Tags]:
        if not self._connected:
            raise RayDogError("memory tag store used before connect()")
        return self._clusters.setdefault(self.cluster_name, {})

    def load_all(self) -> dict[str, Tags]:
        with self._lock:
            return {node: dict(tags) for node, tags in self._data().items()}

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        with self._lock:
            data = self._data()
            for node_id, tags in updates.items():
                data.setdefault(node_id, {}).update(tags)

    def delete(self, node_ids: Collection[str]) -> None:
        with self._lock:
            data = self._data()
            for node_id in node_ids:
                data.pop(node_id, None)

    def close(self) -> None:
        self._connected = False

    @classmethod
    def forget(cls, cluster_name: str) -> None:
        """Drop a cluster's tags, as if its server had gone (tests use it between runs)."""
        with cls._lock:
            cls._clusters.pop(cluster_name, None)
