"""The behaviour every TagStore must show; a plugin's tests subclass TagStoreContract."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from raydog_core.interfaces import TagStore

MakeStore = Callable[[str], TagStore]


class TagStoreContract:
    """Provide a fixture ``make_store``: ``make_store(cluster_name) -> TagStore``, connected.

    Two stores made for the same cluster name must see the same data (they model the client
    and the head); different names must be isolated. Each test uses fresh cluster names.
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
