"""The behaviour every TagStore must show; a plugin's tests subclass TagStoreContract."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest

from raydog_core.interfaces import (
    Changes,
    ChangeToken,
    Tags,
    TagStore,
    offers_changes,
    offers_tombstones,
)

MakeStore = Callable[[str], TagStore]
RestartStore = Callable[[], None]
SaveCopy = Callable[[], Callable[[], None]]


class Mirror:
    """What a reader following ``changes_since`` believes the store holds."""

    def __init__(self, store: TagStore) -> None:
        self.store = store
        self.token: ChangeToken | None = None
        self.nodes: dict[str, Tags] = {}

    def follow(self) -> Changes:
        changes = self.store.changes_since(self.token)
        if changes.full:
            self.nodes = {node: dict(tags) for node, tags in changes.updated.items()}
        else:
            for node in changes.deleted:
                self.nodes.pop(node, None)
            self.nodes.update({node: dict(tags) for node, tags in changes.updated.items()})
        self.token = changes.token
        return changes


class TagStoreChangesContract:
    """The optional ``changes_since`` (TagStore interface 2); these tests skip for a store
    without it. Part of :class:`TagStoreContract`."""

    @pytest.fixture
    def restart_store(self) -> RestartStore:
        """Override: make the store's server lose every cluster's data, as a restart without
        persistence does (stores made before keep working, reconnecting if they must)."""
        pytest.skip("no restart_store fixture: the restart test of changes_since does not run")

    @pytest.fixture
    def restore_store(self) -> SaveCopy:
        """Override: a callable that saves a copy of the store's data and returns one that puts
        it back, as a restore from a backup does (same epoch, older data and version)."""
        pytest.skip(
            "no restore_store fixture: the restored-copy test of changes_since does not run"
        )

    @pytest.fixture
    def changes_store(self, make_store: MakeStore, cluster: str) -> TagStore:
        store = make_store(cluster)
        if not offers_changes(store):
            pytest.skip(f"{type(store).__name__} does not offer changes_since")
        return store

    def test_no_token_is_a_full_reload(self, changes_store: TagStore) -> None:
        changes_store.update({"n1": {"a": "1"}, "n2": {}})
        changes = changes_store.changes_since(None)
        assert changes.full
        assert changes.updated == {"n1": {"a": "1"}, "n2": {}}
        assert list(changes.deleted) == []

    def test_nothing_changed_answers_nothing(self, changes_store: TagStore) -> None:
        changes_store.update({f"n{i}": {"i": str(i)} for i in range(100)})
        token = changes_store.changes_since(None).token
        again = changes_store.changes_since(token)
        assert (again.full, dict(again.updated), list(again.deleted)) == (False, {}, [])
        assert again.token == token

    def test_only_the_changed_nodes_with_all_their_tags(
        self, make_store: MakeStore, changes_store: TagStore, cluster: str
    ) -> None:
        changes_store.update({f"n{i}": {"i": str(i), "kind": "worker"} for i in range(100)})
        token = changes_store.changes_since(None).token
        other = make_store(cluster)
        other.update({"n3": {"status": "up-to-date"}, "new": {"x": "1"}})
        other.delete(["n5", "never-existed"])
        changes = changes_store.changes_since(token)
        assert not changes.full
        assert changes.updated == {
            "n3": {"i": "3", "kind": "worker", "status": "up-to-date"},
            "new": {"x": "1"},
        }
        assert set(changes.deleted) - {"never-existed"} == {"n5"}
        assert changes.token != token

    def test_deleted_then_created_again_is_an_update(self, changes_store: TagStore) -> None:
        changes_store.update({"n1": {"a": "1"}})
        token = changes_store.changes_since(None).token
        changes_store.delete(["n1"])
        changes_store.update({"n1": {"b": "2"}})
        changes = changes_store.changes_since(token)
        assert changes.updated == {"n1": {"b": "2"}}
        assert "n1" not in set(changes.deleted)

    def test_a_token_of_another_epoch_is_a_full_reload(self, changes_store: TagStore) -> None:
        changes_store.update({"n1": {"a": "1"}})
        token = changes_store.changes_since(None).token
        stranger = ChangeToken(token.epoch + "-not", token.version)
        changes = changes_store.changes_since(stranger)
        assert changes.full and changes.updated == {"n1": {"a": "1"}}

    def test_clusters_have_their_own_changes(
        self, make_store: MakeStore, changes_store: TagStore, cluster: str
    ) -> None:
        changes_store.update({"n1": {"a": "1"}})
        token = changes_store.changes_since(None).token
        make_store(cluster + "-other").update({"n2": {"b": "2"}})
        assert dict(changes_store.changes_since(token).updated) == {}

    def test_two_writers_racing_lose_nothing_for_a_reader(
        self, make_store: MakeStore, changes_store: TagStore, cluster: str
    ) -> None:
        """Two writers (each its own connection) and a reader following changes as they go:
        what the reader ends with is what the store holds."""
        reader = Mirror(changes_store)
        reader.follow()
        failures: list[BaseException] = []

        def write(name: str, store: TagStore) -> None:
            try:
                for round_ in range(40):
                    store.update({f"{name}-{i}": {"round": str(round_)} for i in range(10)})
                    store.update({"shared": {name: str(round_)}})
                    if round_ % 3 == 0:
                        store.delete([f"{name}-{round_ % 10}"])
            except BaseException as exc:  # the test thread's failure is the test's
                failures.append(exc)

        writers = [
            threading.Thread(target=write, args=(name, make_store(cluster))) for name in "ab"
        ]
        for writer in writers:
            writer.start()
        while any(writer.is_alive() for writer in writers):
            reader.follow()
        for writer in writers:
            writer.join()
        assert not failures, failures
        reader.follow()
        assert reader.nodes == make_store(cluster).load_all()
        assert reader.nodes["shared"] == {"a": "39", "b": "39"}

    def test_a_restart_that_lost_the_data_is_a_new_epoch(
        self,
        make_store: MakeStore,
        changes_store: TagStore,
        cluster: str,
        restart_store: RestartStore,
    ) -> None:
        changes_store.update({"n1": {"a": "1"}, "n2": {"b": "2"}})
        token = changes_store.changes_since(None).token
        restart_store()
        empty = make_store(cluster).changes_since(token)
        assert empty.full and dict(empty.updated) == {}
        assert empty.token.epoch != token.epoch
        make_store(cluster).update({"n3": {"c": "3"}})
        after = changes_store.changes_since(empty.token)
        assert dict(after.updated) == {"n3": {"c": "3"}}
        stale = changes_store.changes_since(token)
        assert stale.full and stale.updated == {"n3": {"c": "3"}}
        assert stale.token.epoch != token.epoch

    def test_a_store_restored_from_an_older_copy_is_rewound_for_a_reader_past_it(
        self, changes_store: TagStore, make_store: MakeStore, cluster: str, restore_store: SaveCopy
    ) -> None:
        """Interface 4: restored, then written past the reader's version by another writer, the
        store still tells the reader it went back (``rewound``) and gives it everything."""
        reader = Mirror(changes_store)
        changes_store.update({"n1": {"a": "old"}})
        reader.follow()
        put_back = restore_store()
        changes_store.update({"n1": {"a": "new"}})
        changes_store.delete(["n1"])
        reader.follow()
        put_back()
        writer = make_store(cluster)
        for round_ in range(5):
            writer.update({"n2": {"b": str(round_)}})
        changes = reader.follow()
        assert changes.full and changes.rewound
        assert reader.nodes == {"n1": {"a": "old"}, "n2": {"b": "4"}}


class TagStoreTombstoneContract:
    """The optional ``update_unless_deleted`` (TagStore interface 5); skips for a store without
    it. Part of :class:`TagStoreContract`."""

    @pytest.fixture
    def tombstone_store(self, make_store: MakeStore, cluster: str) -> TagStore:
        store = make_store(cluster)
        if not offers_tombstones(store):
            pytest.skip(f"{type(store).__name__} does not offer update_unless_deleted")
        return store

    def test_a_late_write_to_a_deleted_node_is_dropped_and_named(
        self, tombstone_store: TagStore
    ) -> None:
        tombstone_store.update({"gone": {"a": "1"}, "kept": {"a": "1"}})
        tombstone_store.delete(["gone"])
        dropped = tombstone_store.update_unless_deleted(
            {"gone": {"a": "late"}, "kept": {"a": "2"}, "new": {"a": "1"}}, ()
        )
        assert list(dropped) == ["gone"]
        assert tombstone_store.load_all() == {"kept": {"a": "2"}, "new": {"a": "1"}}

    def test_the_nodes_own_launch_brings_it_back(self, tombstone_store: TagStore) -> None:
        tombstone_store.update({"n1": {"a": "1"}})
        tombstone_store.delete(["n1"])
        assert not tombstone_store.update_unless_deleted({"n1": {"b": "2"}}, ["n1"])
        assert tombstone_store.load_all() == {"n1": {"b": "2"}}
        assert not tombstone_store.update_unless_deleted({"n1": {"c": "3"}}, ())
        assert tombstone_store.load_all() == {"n1": {"b": "2", "c": "3"}}


class TagStoreValueLimitContract:
    """The optional ``max_value_bytes`` (TagStore interface 3); skips for a store without it.
    Part of :class:`TagStoreContract`."""

    def test_values_as_long_as_max_value_bytes_round_trip(
        self, make_store: MakeStore, cluster: str
    ) -> None:
        """Interface 3: the limit a store declares is one it can hold (two bytes a character)."""
        store = make_store(cluster)
        limit = store.max_value_bytes
        if limit is None:
            pytest.skip(f"{type(store).__name__} declares no max_value_bytes")
        name, value = "\u00e9" * (limit // 2) + "n" * (limit % 2), "v" * limit
        store.update({"n1": {name: value}})
        assert store.load_all() == {"n1": {name: value}}


class TagStoreContract(
    TagStoreChangesContract, TagStoreTombstoneContract, TagStoreValueLimitContract
):
    """Provide a fixture ``make_store``: ``make_store(cluster_name) -> TagStore``, connected.

    Two stores made for the same cluster name must see the same data (they model the client
    and the head); different names must be isolated. Each test uses fresh cluster names.
    A store that offers ``changes_since`` is held to its contract too; provide
    ``restart_store`` to run the restart test.
    """

    @pytest.fixture
    def cluster(self) -> str:
        return f"contract-{uuid.uuid4().hex[:10]}"

    def test_new_cluster_is_empty(self, make_store: MakeStore, cluster: str) -> None:
        assert make_store(cluster).load_all() == {}

    def test_update_then_load(self, make_store: MakeStore, cluster: str) -> None:
        store = make_store(cluster)
        store.update({"n1": {"ray-node-kind": "head", "x": "1"}, "n2": {"ray-node-kind": "worker"}})
        assert store.load_all() == {
            "n1": {"ray-node-kind": "head", "x": "1"},
            "n2": {"ray-node-kind": "worker"},
        }

    def test_update_merges_instead_of_replacing(self, make_store: MakeStore, cluster: str) -> None:
        store = make_store(cluster)
        store.update({"n1": {"a": "1", "b": "2"}})
        store.update({"n1": {"b": "3", "c": "4"}})
        assert store.load_all() == {"n1": {"a": "1", "b": "3", "c": "4"}}

    def test_update_leaves_other_nodes_alone(self, make_store: MakeStore, cluster: str) -> None:
        store = make_store(cluster)
        store.update({"n1": {"a": "1"}, "n2": {"a": "2"}})
        store.update({"n2": {"a": "two"}})
        assert store.load_all() == {"n1": {"a": "1"}, "n2": {"a": "two"}}

    def test_values_round_trip_exactly(self, make_store: MakeStore, cluster: str) -> None:
        awkward = {
            "empty": "",
            "spaces": " a b ",
            "unicode": "nœud-ノード",
            "json": '{"k": [1, 2]}',
            "colon:key": "x:y",
            "newline": "a\nb",
        }
        node = "ydid:task:ABC:1:head/0"
        store = make_store(cluster)
        store.update({node: awkward})
        assert make_store(cluster).load_all() == {node: awkward}

    def test_delete(self, make_store: MakeStore, cluster: str) -> None:
        store = make_store(cluster)
        store.update({"n1": {"a": "1"}, "n2": {"a": "2"}, "n3": {"a": "3"}})
        store.delete(["n1", "n3"])
        assert store.load_all() == {"n2": {"a": "2"}}

    def test_delete_unknown_and_empty_is_harmless(
        self, make_store: MakeStore, cluster: str
    ) -> None:
        store = make_store(cluster)
        store.update({"n1": {"a": "1"}})
        store.delete([])
        store.delete(["nope"])
        store.update({})
        assert store.load_all() == {"n1": {"a": "1"}}

    def test_deleted_node_comes_back_fresh(self, make_store: MakeStore, cluster: str) -> None:
        store = make_store(cluster)
        store.update({"n1": {"a": "1", "b": "2"}})
        store.delete(["n1"])
        store.update({"n1": {"c": "3"}})
        assert store.load_all() == {"n1": {"c": "3"}}

    def test_two_stores_of_one_cluster_share_data(
        self, make_store: MakeStore, cluster: str
    ) -> None:
        client, head = make_store(cluster), make_store(cluster)
        client.update({"n1": {"a": "1"}})
        head.update({"n1": {"b": "2"}, "n2": {"c": "3"}})
        assert (
            client.load_all() == head.load_all() == {"n1": {"a": "1", "b": "2"}, "n2": {"c": "3"}}
        )
        head.delete(["n1"])
        assert client.load_all() == {"n2": {"c": "3"}}

    def test_clusters_are_isolated(self, make_store: MakeStore, cluster: str) -> None:
        one, other = make_store(cluster), make_store(cluster + "-other")
        one.update({"n1": {"a": "1"}})
        other.update({"n2": {"b": "2"}})
        other.delete(["n1"])
        assert one.load_all() == {"n1": {"a": "1"}}
        assert other.load_all() == {"n2": {"b": "2"}}

    def test_cluster_names_that_prefix_each_other_are_isolated(
        self, make_store: MakeStore, cluster: str
    ) -> None:
        short, longer = make_store(cluster), make_store(cluster + ":n1")
        short.update({"n1:x": {"a": "1"}})
        longer.update({"x": {"b": "2"}})
        assert short.load_all() == {"n1:x": {"a": "1"}}
        assert longer.load_all() == {"x": {"b": "2"}}

    def test_no_node_is_lost_at_scale(self, make_store: MakeStore, cluster: str) -> None:
        store = make_store(cluster)
        expected = {f"node-{i}": {"i": str(i), "kind": "worker"} for i in range(2000)}
        store.update(expected)
        store.update({f"node-{i}": {"status": "up-to-date"} for i in range(0, 2000, 2)})
        for i in range(0, 2000, 2):
            expected[f"node-{i}"]["status"] = "up-to-date"
        store.delete([f"node-{i}" for i in range(0, 2000, 7)])
        for i in range(0, 2000, 7):
            del expected[f"node-{i}"]
        assert make_store(cluster).load_all() == expected

    def test_close_then_reconnect_keeps_data(self, make_store: MakeStore, cluster: str) -> None:
        store = make_store(cluster)
        store.update({"n1": {"a": "1"}})
        store.close()
        assert make_store(cluster).load_all() == {"n1": {"a": "1"}}

    def test_load_all_returns_a_copy(self, make_store: MakeStore, cluster: str) -> None:
        store = make_store(cluster)
        store.update({"n1": {"a": "1"}})
        snapshot = store.load_all()
        snapshot["n1"]["a"] = "changed"
        snapshot["n2"] = {}
        assert store.load_all() == {"n1": {"a": "1"}}
