"""The core's tag cache: writes return at once, are never lost, and reach the store in batches;
reads follow the store's changes and answer from memory when it is slow or away."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import pytest

from raydog_backends.memory.tag_store import MemoryTagStore
from raydog_core.errors import RayDogError, TagValueError, UnreachableError
from raydog_core.interfaces import Changes, ChangeToken, Endpoint, Tags, TagStore
from raydog_core.tag_cache import NotReady, TagCache


class FlakyStore(MemoryTagStore):
    """A memory store whose server can go away, refuse writes, or stall, as a real one can."""

    def __init__(self, cluster_name: str) -> None:
        super().__init__(cluster_name)
        self.up = True
        self.refusal: str | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[str] = []
        self.read_nodes: list[int] = []

    def _check(self, call: str) -> None:
        self.calls.append(call)
        self.gate.wait()
        if not self.up:
            raise UnreachableError("tag store", "127.0.0.1", 1)

    def connect(self, endpoint: Endpoint | None) -> None:
        self._check("connect")
        super().connect(endpoint)

    def load_all(self) -> dict[str, Tags]:
        self._check("load_all")
        return super().load_all()

    def changes_since(self, token: ChangeToken | None) -> Changes:
        self._check("changes_since")
        changes = super().changes_since(token)
        self.read_nodes.append(len(changes.updated))
        return changes

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        self.update_unless_deleted(updates, updates.keys())

    def update_unless_deleted(
        self, updates: Mapping[str, Mapping[str, str]], launched: Collection[str]
    ) -> list[str]:
        self._check("update")
        if self.refusal is not None:
            raise RayDogError(f"redis tag store at 127.0.0.1:1: update failed: {self.refusal}")
        return super().update_unless_deleted(updates, launched)

    def delete(self, node_ids: Collection[str]) -> None:
        self._check("delete")
        super().delete(node_ids)


class LoadAllOnly(TagStore):
    """A third party's store with the required methods only, over a memory store."""

    def __init__(self, cluster_name: str) -> None:
        super().__init__(cluster_name)
        self.inner = MemoryTagStore(cluster_name)

    def connect(self, endpoint: Endpoint | None) -> None:
        self.inner.connect(endpoint)

    def load_all(self) -> dict[str, Tags]:
        return self.inner.load_all()

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        self.inner.update(updates)

    def delete(self, node_ids: Collection[str]) -> None:
        self.inner.delete(node_ids)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def store() -> Iterator[FlakyStore]:
    name = f"cache-{uuid.uuid4().hex[:8]}"
    yield FlakyStore(name)
    MemoryTagStore.forget(name)


@pytest.fixture
def caches() -> Iterator[list[TagCache]]:
    made: list[TagCache] = []
    yield made
    for cache in made:
        cache.close(timeout=5)


def cache_of(caches: list[TagCache], store: TagStore, **options: Any) -> TagCache:
    caches.append(TagCache(store, options.pop("locate", lambda: None), **options))
    return caches[-1]


def server_view(store: TagStore) -> dict[str, Tags]:
    reader = MemoryTagStore(store.cluster_name)
    reader.connect(None)
    return reader.load_all()


def test_writes_before_the_store_exists_are_sent_when_it_appears(
    store: FlakyStore, caches: list[TagCache]
) -> None:
    head_known = False

    def locate() -> Endpoint | None:
        if not head_known:
            raise NotReady
        return None

    cache = cache_of(caches, store, locate=locate, retry_seconds=0)
    cache.update({"head": {"status": "waiting-for-ssh"}})
    cache.update({"head": {"status": "syncing-files", "name": "h"}})
    assert cache.get("head") == {"status": "syncing-files", "name": "h"}
    assert not cache.refresh(timeout=10)
    assert cache.unsent() == 1
    assert server_view(store) == {}
    head_known = True
    assert cache.refresh(timeout=10)
    assert cache.all() == {"head": {"status": "syncing-files", "name": "h"}}
    assert server_view(store) == {"head": {"status": "syncing-files", "name": "h"}}
    assert cache.unsent() == 0


def test_a_store_that_ended_with_its_head_is_not_called_again(
    store: FlakyStore, caches: list[TagCache]
) -> None:
    """`ray down` after the head's task ended: the head's own store went with it, so the deletes
    held for it have nothing to delete, and the next use locates the store anew."""
    head_running = True

    def locate() -> Endpoint | None:
        if not head_running:
            raise NotReady
        return None

    cache = cache_of(caches, store, locate=locate, retry_seconds=0)
    cache.update({"head": {"kind": "head"}})
    assert cache.flush(timeout=10)
    store.up = head_running = False
    cache.delete(["head"])
    cache.store_ended()
    store.calls.clear()

    assert not cache.refresh(timeout=10)
    assert cache.flush(timeout=10), "a delete held for the ended store is still to be sent"
    assert store.calls == [], "the ended store's address was called again"


def test_an_outage_loses_no_write_and_keeps_delete_order(
    store: FlakyStore, caches: list[TagCache]
) -> None:
    cache = cache_of(caches, store, retry_seconds=0)
    cache.update({"a": {"x": "1"}, "b": {"x": "1"}})
    assert cache.flush(timeout=10)
    store.up = False
    cache.update({"a": {"y": "2"}})
    cache.delete(["b"])
    cache.update({"b": {"fresh": "yes"}}, launched=True)  # launched again, under the same id
    assert not cache.flush(timeout=10)
    assert cache.unsent() == 2
    store.up = True
    assert cache.flush(timeout=10)
    assert server_view(store) == {"a": {"x": "1", "y": "2"}, "b": {"fresh": "yes"}}


@pytest.mark.parametrize(
    "reply",
    [
        "READONLY You can't write against a read only replica.",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "MISCONF Errors writing to the AOF file",
    ],
)
def test_a_refused_batch_goes_back_to_the_queue_whatever_the_error(
    store: FlakyStore, caches: list[TagCache], reply: str
) -> None:
    cache = cache_of(caches, store, retry_seconds=0)
    store.refusal = reply
    cache.update({"a": {"x": "1"}})
    cache.update({"b": {"x": "1"}})
    assert not cache.flush(timeout=10)
    cache.update({"a": {"y": "2"}})
    cache.delete(["b"])
    assert cache.unsent() == 2
    store.refusal = None
    assert cache.flush(timeout=10)
    assert server_view(store) == {"a": {"x": "1", "y": "2"}}


@pytest.mark.parametrize(
    ("updates", "named"),
    [
        ({"n2": {"ray-node-status": None}}, "node 'n2': tag 'ray-node-status': expected a str"),
        ({"n2": {"name": "a\udc80b"}}, "node 'n2': tag 'name': not valid text"),
        ({"n2": {7: "x"}}, "node 'n2': tag name 7: expected a str"),
        ({"n2": {"x": 1.5}}, "node 'n2': tag 'x': expected a str, got float"),
        ({"n\ud800": {"x": "1"}}, "node id 'n\\ud800': not valid text"),
        ({"n2": ["x"]}, "tags of node 'n2': expected a mapping"),
    ],
)
def test_a_bad_value_is_refused_to_its_caller_alone(
    store: FlakyStore, caches: list[TagCache], updates: dict[Any, Any], named: str
) -> None:
    cache = cache_of(caches, store, retry_seconds=0)
    store.up = False
    cache.update({"held": {"x": "1"}})
    with pytest.raises(TagValueError) as raised:
        cache.update({"n1": {"fine": "yes"}, **updates})
    assert named in str(raised.value)
    assert cache.get("n1") == {}, "part of a refused call was kept"
    store.up = True
    assert cache.flush(timeout=10)
    assert server_view(store) == {"held": {"x": "1"}}


def test_a_dropped_connection_is_reopened_within_the_same_read(
    store: FlakyStore, caches: list[TagCache]
) -> None:
    opened: list[int] = []

    def locate() -> Endpoint | None:
        opened.append(1)
        return None

    cache = cache_of(caches, store, locate=locate, retry_seconds=60)
    cache.update({"a": {"x": "1"}})
    assert cache.flush(timeout=10)
    original = store.changes_since
    failures = iter([True])

    def drop_once(token: ChangeToken | None) -> Changes:
        if next(failures, False):
            raise UnreachableError("tag store", "127.0.0.1", 1, "connection reset")
        return original(token)

    store.changes_since = drop_once  # type: ignore[method-assign]
    assert cache.refresh(timeout=10)
    assert cache.all() == {"a": {"x": "1"}}
    assert len(opened) == 2, "the path to the store was not reopened"


def test_reads_survive_an_outage(store: FlakyStore, caches: list[TagCache]) -> None:
    cache = cache_of(caches, store, retry_seconds=0)
    cache.update({"a": {"x": "1"}})
    assert cache.refresh(timeout=10)
    store.up = False
    assert not cache.refresh(timeout=10)
    assert cache.all() == {"a": {"x": "1"}}


def test_a_stalled_store_holds_no_writer_and_a_read_only_for_its_timeout(
    store: FlakyStore, caches: list[TagCache]
) -> None:
    """The store stops answering (a SIGSTOPped server): writes return at once, a read returns
    after its timeout with the cache's answer, and everything held is sent once it answers."""
    cache = cache_of(caches, store, read_timeout=0.2)
    cache.update({"a": {"x": "1"}})
    assert cache.refresh(timeout=10)
    store.gate.clear()
    cache.update({"a": {"y": "2"}})  # the sender takes this batch and stalls on it
    for i in range(100):
        cache.update({f"w{i}": {"i": str(i)}})
    cache.delete(["a"])
    assert not cache.refresh()
    assert cache.get("w5") == {"i": "5"} and cache.get("a") == {}
    store.gate.set()
    assert cache.flush(timeout=10)
    assert server_view(store) == {f"w{i}": {"i": str(i)} for i in range(100)}


def test_concurrent_writers_share_round_trips_and_lose_nothing(
    store: FlakyStore, caches: list[TagCache]
) -> None:
    """1,000 writes from 8 threads while one batch is on its way: one more batch carries them."""
    cache = cache_of(caches, store)
    assert cache.refresh(timeout=10)
    store.gate.clear()
    cache.update({"first": {"x": "1"}})

    def write(index: int) -> None:
        for round_ in range(125):
            cache.update({f"n{index}": {"round": str(round_), f"k{round_}": "v"}})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.calls.clear()
    store.gate.set()
    assert cache.flush(timeout=10)
    view = server_view(store)
    for index in range(8):
        assert view[f"n{index}"]["round"] == "124"
        assert len(view[f"n{index}"]) == 126
    assert store.calls.count("update") <= 2


def test_a_tick_reads_only_what_changed(store: FlakyStore, caches: list[TagCache]) -> None:
    head = cache_of(caches, store)
    client = cache_of(caches, FlakyStore(store.cluster_name))
    head.update({f"n{i}": {"i": str(i)} for i in range(500)})
    assert head.flush(timeout=10)
    assert client.refresh(timeout=10)
    assert client.refresh(timeout=10)
    head.update({"n1": {"status": "up"}, "n2": {"status": "up"}})
    head.delete(["n3"])
    assert head.flush(timeout=10)
    assert client.refresh(timeout=10)
    reads = client._store.read_nodes  # type: ignore[attr-defined]
    assert reads == [500, 0, 2]
    assert client.get("n1") == {"i": "1", "status": "up"}
    assert client.get("n3") == {}
    assert client.all() == server_view(store)


def test_a_store_that_came_back_empty_is_refilled(
    store: FlakyStore, caches: list[TagCache]
) -> None:
    """A restart without persistence (a new epoch): what this cache knows is sent back, and a
    node another writer created since is kept."""
    cache = cache_of(caches, store)
    known = {f"n{i}": {"ray-launch-config": "abc", "i": str(i)} for i in range(10)}
    cache.update(known)
    assert cache.refresh(timeout=10)
    MemoryTagStore.forget(store.cluster_name)
    other = MemoryTagStore(store.cluster_name)
    other.connect(None)
    other.update({"n1": {"i": "one"}, "late": {"x": "1"}})
    assert cache.refresh(timeout=10)
    assert cache.flush(timeout=10)
    expected = {**known, "n1": {"ray-launch-config": "abc", "i": "one"}, "late": {"x": "1"}}
    assert server_view(store) == expected
    assert cache.all() == expected


def test_a_store_with_load_all_only_works_and_is_refilled_when_it_comes_back_empty(
    caches: list[TagCache],
) -> None:
    name = f"cache-{uuid.uuid4().hex[:8]}"
    store = LoadAllOnly(name)
    cache = cache_of(caches, store)
    cache.update({"a": {"x": "1"}})
    assert cache.refresh(timeout=10)
    other = MemoryTagStore(name)
    other.connect(None)
    other.update({"b": {"y": "2"}})
    assert cache.refresh(timeout=10)
    assert cache.all() == {"a": {"x": "1"}, "b": {"y": "2"}}
    MemoryTagStore.forget(name)
    assert cache.refresh(timeout=10)
    assert cache.flush(timeout=10)
    assert server_view(store) == {"a": {"x": "1"}, "b": {"y": "2"}}
    MemoryTagStore.forget(name)


def test_writes_that_cannot_be_sent_before_exit_are_reported(
    store: FlakyStore, caches: list[TagCache], caplog: pytest.LogCaptureFixture
) -> None:
    """A command that ends while the store is away says what it could not send."""
    from raydog_core.tag_cache import _send_held_writes_at_exit

    cache = cache_of(caches, store)
    store.up = False
    cache.update({"node-1": {"a": "1"}, "node-2": {"b": "2"}})
    with caplog.at_level("WARNING", logger="raydog_core.tag_cache"):
        _send_held_writes_at_exit()
    assert "tag writes for 2 node(s) could not reach the tag store" in caplog.text
    assert store.cluster_name in caplog.text
    store.up = True


def test_a_queued_value_over_a_limit_that_fell_is_dropped_with_one_line(
    store: FlakyStore, caches: list[TagCache], caplog: pytest.LogCaptureFixture
) -> None:
    """A store may learn a lower limit once connected: what it can no longer take is dropped,
    named, and the rest of the batch goes through at once."""
    cache = cache_of(caches, store, retry_seconds=60)
    store.up = False
    cache.update({f"n{i}": {"fine": "yes"} for i in range(50)})
    cache.update({"n7": {"long": "x" * 100}})
    store.max_value_bytes = 99
    store.up = True
    caplog.set_level("ERROR", logger="raydog_core.tag_cache")
    assert cache.flush(timeout=10)
    assert server_view(store) == {f"n{i}": {"fine": "yes"} for i in range(50)}
    assert caplog.text.count("tag 'long' of node n7 dropped") == 1
    with pytest.raises(TagValueError, match="tag 'long': its value is 100 bytes"):
        cache.update({"n7": {"long": "x" * 100}})
