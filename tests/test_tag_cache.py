"""The core's tag cache: writes held while the store is away, sent once it is back."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

import pytest

from raydog_backends.memory.tag_store import MemoryTagStore
from raydog_core.errors import UnreachableError
from raydog_core.interfaces import Endpoint, Tags
from raydog_core.tag_cache import NotReady, TagCache


class FlakyStore(MemoryTagStore):
    """A memory store whose server can go away, as a real one behind a tunnel can."""

    def __init__(self, cluster_name: str) -> None:
        super().__init__(cluster_name)
        self.up = True
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if not self.up:
            raise UnreachableError("tag store", "127.0.0.1", 1)

    def connect(self, endpoint: Endpoint | None) -> None:
        self._check()
        super().connect(endpoint)

    def load_all(self) -> dict[str, Tags]:
        self._check()
        return super().load_all()

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        self._check()
        super().update(updates)

    def delete(self, node_ids: Collection[str]) -> None:
        self._check()
        super().delete(node_ids)


@pytest.fixture
def store() -> FlakyStore:
    import uuid

    name = f"cache-{uuid.uuid4().hex[:8]}"
    yield FlakyStore(name)
    MemoryTagStore.forget(name)


def server_view(store: FlakyStore) -> dict[str, Tags]:
    reader = MemoryTagStore(store.cluster_name)
    reader.connect(None)
    return reader.load_all()


def test_writes_before_the_store_exists_are_sent_when_it_appears(store: FlakyStore) -> None:
    head_known = False

    def locate() -> Endpoint | None:
        if not head_known:
            raise NotReady
        return None

    cache = TagCache(store, locate, retry_seconds=0)
    cache.update({"head": {"status": "waiting-for-ssh"}})
    cache.update({"head": {"status": "syncing-files", "name": "h"}})
    assert cache.get("head") == {"status": "syncing-files", "name": "h"}
    assert cache.unsent() == 1
    assert server_view(store) == {}
    head_known = True
    assert cache.refresh() == {"head": {"status": "syncing-files", "name": "h"}}
    assert server_view(store) == {"head": {"status": "syncing-files", "name": "h"}}
    assert cache.unsent() == 0


def test_an_outage_loses_no_write_and_keeps_delete_order(store: FlakyStore) -> None:
    cache = TagCache(store, lambda: None, retry_seconds=0)
    cache.update({"a": {"x": "1"}, "b": {"x": "1"}})
    store.up = False
    cache.update({"a": {"y": "2"}})
    cache.delete(["b"])
    cache.update({"b": {"fresh": "yes"}})
    assert cache.unsent() == 2
    store.up = True
    cache.flush()
    assert server_view(store) == {"a": {"x": "1", "y": "2"}, "b": {"fresh": "yes"}}


def test_a_dropped_connection_is_reopened_within_the_same_call(store: FlakyStore) -> None:
    opened: list[int] = []

    def locate() -> Endpoint | None:
        opened.append(1)
        return None

    cache = TagCache(store, locate, retry_seconds=60)
    cache.update({"a": {"x": "1"}})
    original = store.load_all
    failures = iter([True])

    def drop_once() -> dict[str, Tags]:
        if next(failures, False):
            raise UnreachableError("tag store", "127.0.0.1", 1, "connection reset")
        return original()

    store.load_all = drop_once  # type: ignore[method-assign]
    assert cache.refresh() == {"a": {"x": "1"}}
    assert len(opened) == 2, "the path to the store was not reopened"


def test_reads_survive_an_outage(store: FlakyStore) -> None:
    cache = TagCache(store, lambda: None, retry_seconds=0)
    cache.update({"a": {"x": "1"}})
    store.up = False
    assert cache.refresh() == {"a": {"x": "1"}}


def test_concurrent_writers_share_round_trips_and_lose_nothing(store: FlakyStore) -> None:
    cache = TagCache(store, lambda: None)
    cache.refresh()
    store.calls = 0

    def write(index: int) -> None:
        for round_ in range(50):
            cache.update({f"n{index}": {"round": str(round_), f"k{round_}": "v"}})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    view = server_view(store)
    for index in range(8):
        assert view[f"n{index}"]["round"] == "49"
        assert len(view[f"n{index}"]) == 51
    assert store.calls <= 8 * 50
