"""The provider's view of the tag store: cached, buffered, batched and thread-safe.

Every plugin gets this for free: reads answer from memory; writes land in the cache at once and
reach the store in batches (concurrent writers share one round trip: whoever holds the store
sends everything pending). While the store cannot be reached (a first ``ray up`` before the head
exists, a dropped tunnel) writes wait in memory and are sent once it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import TypeVar

from raydog_core.errors import UnreachableError
from raydog_core.interfaces import Endpoint, Tags, TagStore

logger = logging.getLogger(__name__)
T = TypeVar("T")


class NotReady(Exception):
    """The store's location is not known yet (the head node does not run yet)."""


Locate = Callable[[], "Endpoint | None"]


class TagCache:
    def __init__(self, store: TagStore, locate: Locate, retry_seconds: float = 5.0) -> None:
        self._store = store
        self._locate = locate
        self._retry_seconds = retry_seconds
        self._state_lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._tags: dict[str, Tags] = {}
        self._pending_updates: dict[str, Tags] = {}
        self._pending_deletes: set[str] = set()
        self._connected = False
        self._next_attempt = 0.0
        self._last_problem: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    def get(self, node_id: str) -> Tags:
        with self._state_lock:
            return dict(self._tags.get(node_id, {}))

    def all(self) -> dict[str, Tags]:
        with self._state_lock:
            return {node: dict(tags) for node, tags in self._tags.items()}

    def unsent(self) -> int:
        """How many nodes have writes that have not reached the store yet."""
        with self._state_lock:
            return len(self._pending_updates.keys() | self._pending_deletes)

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        with self._state_lock:
            for node_id, tags in updates.items():
                self._tags.setdefault(node_id, {}).update(tags)
                self._pending_updates.setdefault(node_id, {}).update(tags)
        self.flush()

    def delete(self, node_ids: Collection[str]) -> None:
        with self._state_lock:
            for node_id in node_ids:
                self._tags.pop(node_id, None)
                self._pending_updates.pop(node_id, None)
                self._pending_deletes.add(node_id)
        self.flush()

    def flush(self) -> bool:
        """Send every pending write if the store is reachable; True when nothing is left."""
        with self._io_lock:
            return self._flush_locked()

    def refresh(self) -> dict[str, Tags]:
        """Reload every node's tags from the store (one ``load_all``), keeping unsent writes."""
        with self._io_lock:
            remote = None
            if self._flush_locked():
                _, remote = self._with_retry(self._store.load_all)
            with self._state_lock:
                if remote is not None:
                    for node_id in self._pending_deletes:
                        remote.pop(node_id, None)
                    for node_id, tags in self._pending_updates.items():
                        remote.setdefault(node_id, {}).update(tags)
                    self._tags = remote
                return {node: dict(tags) for node, tags in self._tags.items()}

    def close(self) -> None:
        with self._io_lock:
            if self._connected:
                self._flush_locked()
            self._disconnect()

    def _flush_locked(self) -> bool:
        if not self._ensure_connected():
            return False
        with self._state_lock:
            updates, self._pending_updates = self._pending_updates, {}
            deletes, self._pending_deletes = self._pending_deletes, set()
        if not updates and not deletes:
            return True
        sent_deletes = not deletes or self._with_retry(lambda: self._store.delete(deletes))[0]
        sent_updates = sent_deletes and (
            not updates or self._with_retry(lambda: self._store.update(updates))[0]
        )
        if sent_updates:
            return True
        with self._state_lock:
            deleted_meanwhile = set(self._pending_deletes)
            if not sent_deletes:
                self._pending_deletes |= deletes
            for node_id, tags in updates.items():
                if node_id not in deleted_meanwhile:
                    self._pending_updates[node_id] = {
                        **tags,
                        **self._pending_updates.get(node_id, {}),
                    }
        return False

    def _with_retry(self, operation: Callable[[], T]) -> tuple[bool, T | None]:
        """Run a store call: (done, its result). On a dropped connection it reconnects (the
        transport reopens its path) and tries once more."""
        for attempt in (1, 2):
            try:
                return True, operation()
            except UnreachableError as exc:
                self._disconnect()
                self._note_problem(str(exc))
                if attempt == 2 or not self._ensure_connected(force=True):
                    break
        return False, None

    def _ensure_connected(self, force: bool = False) -> bool:
        if self._connected:
            return True
        if not force and time.monotonic() < self._next_attempt:
            return False
        try:
            endpoint = self._locate()
            self._store.connect(endpoint)
        except NotReady:
            return False
        except UnreachableError as exc:
            self._next_attempt = time.monotonic() + self._retry_seconds
            self._note_problem(str(exc))
            return False
        self._connected = True
        if self._last_problem is not None:
            logger.info("RayDog: tag store reachable again")
        self._last_problem = None
        return True

    def _disconnect(self) -> None:
        if self._connected:
            self._connected = False
            try:
                self._store.close()
            except UnreachableError:
                logger.debug("RayDog: closing an unreachable tag store", exc_info=True)

    def _note_problem(self, problem: str) -> None:
        if problem != self._last_problem:
            logger.warning(
                "RayDog: %s; tag writes are held in memory (%d nodes) and sent once it is back",
                problem,
                len(self._pending_updates.keys() | self._pending_deletes),
            )
        self._last_problem = problem
