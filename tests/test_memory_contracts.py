"""The memory plugins pass the contract suites, and the suites have teeth: broken plugins fail."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from raydog_backends.memory.compute import MemoryComputeBackend
from raydog_backends.memory.tag_store import MemoryTagStore
from raydog_core.interfaces import ClusterSpec, ComputeBackend, TagStore
from raydog_core.testing import ComputeBackendContract, TagStoreContract
from raydog_core.testing.tag_store_contract import (
    TagStoreChangesContract,
    TagStoreTombstoneContract,
    TagStoreValueLimitContract,
)
from tests.tag_store_checks import check_tombstones_are_bounded


class TestMemoryTagStore(TagStoreContract):
    @pytest.fixture
    def make_store(self) -> Iterator[Callable[[str], TagStore]]:
        made: list[MemoryTagStore] = []

        def make(cluster_name: str) -> TagStore:
            store = MemoryTagStore(cluster_name)
            store.connect(None)
            made.append(store)
            return store

        yield make
        for store in made:
            MemoryTagStore.forget(store.cluster_name)

    @pytest.fixture
    def restart_store(self, make_store: Callable[[str], TagStore]) -> Callable[[], None]:
        def restart() -> None:
            for cluster in list(MemoryTagStore._clusters):
                if cluster.startswith("contract-"):
                    MemoryTagStore.forget(cluster)

        return restart


class TestMemoryComputeBackend(ComputeBackendContract):
    settle_seconds = 5.0

    @pytest.fixture
    def make_backend(self) -> Iterator[Callable[[ClusterSpec], ComputeBackend]]:
        names: list[str] = []

        def make(spec: ClusterSpec) -> ComputeBackend:
            names.append(spec.cluster_name)
            return MemoryComputeBackend(spec, launch_delay=0.2)

        yield make
        for name in names:
            MemoryComputeBackend.forget(name)

    @pytest.fixture
    def lose_node(self) -> Callable[[str], None]:
        def lose(node_id: str) -> None:
            for cluster in list(MemoryComputeBackend._clusters.values()):
                if node_id in cluster.nodes:
                    cluster.lose(node_id)

        return lose


BROKEN_STORES = {
    "replaces instead of merging": """
    def update(self, updates):
        for node, tags in updates.items():
            self.data()[node] = dict(tags)
""",
    "leaks nodes between clusters": """
    def data(self):
        return SHARED.setdefault("all", {})
""",
    "loses a node": """
    def load_all(self):
        everything = {n: dict(t) for n, t in self.data().items()}
        if len(everything) > 1:
            everything.pop(sorted(everything)[-1])
        return everything
""",
    "deletes nothing": """
    def delete(self, node_ids):
        pass
""",
}

STORE_TEMPLATE = """
import pytest
from raydog_core.interfaces import TagStore
from raydog_core.testing import TagStoreContract

SHARED = {{}}

class Store(TagStore):
    def connect(self, endpoint):
        pass
    def data(self):
        return SHARED.setdefault(self.cluster_name, {{}})
    def load_all(self):
        return {{n: dict(t) for n, t in self.data().items()}}
    def update(self, updates):
        for node, tags in updates.items():
            self.data().setdefault(node, {{}}).update(tags)
    def delete(self, node_ids):
        for node in node_ids:
            self.data().pop(node, None)
    def close(self):
        pass

class Broken(Store):
{override}

class TestBroken(TagStoreContract):
    @pytest.fixture
    def make_store(self):
        return lambda name: Broken(name)
"""


@pytest.mark.parametrize("flaw", sorted(BROKEN_STORES))
def test_tag_store_contract_fails_a_broken_store(pytester: pytest.Pytester, flaw: str) -> None:
    failed = failed_tests(pytester, STORE_TEMPLATE.format(override=BROKEN_STORES[flaw]), flaw)
    assert CAUGHT_BY[flaw] in failed, f"a store that {flaw}: failed only {sorted(failed)}"


def test_tag_store_contract_passes_the_unbroken_template(pytester: pytest.Pytester) -> None:
    """A store with only the required methods passes; the optional interfaces' tests skip."""
    pytester.makepyfile(test_sound=STORE_TEMPLATE.format(override="    pass"))
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    optional = [
        name
        for contract in (
            TagStoreChangesContract,
            TagStoreTombstoneContract,
            TagStoreValueLimitContract,
        )
        for name in dir(contract)
        if name.startswith("test_")
    ]
    required = [n for n in dir(TagStoreContract) if n.startswith("test_")]
    assert optional
    result.assert_outcomes(passed=len(required) - len(optional), skipped=len(optional))


BROKEN_CHANGE_STORES = {
    "never reports a delete": """
    def changes_since(self, token):
        changes = super().changes_since(token)
        return Changes(changes.token, changes.full, changes.updated, [])
""",
    "reports changed tag values only": """
    seen = {}

    def changes_since(self, token):
        changes = super().changes_since(token)
        if changes.full:
            self.seen = {n: dict(t) for n, t in changes.updated.items()}
            return changes
        partial = {}
        for node, tags in changes.updated.items():
            old = self.seen.get(node, {})
            partial[node] = {k: v for k, v in tags.items() if old.get(k) != v}
            self.seen[node] = dict(tags)
        return Changes(changes.token, False, partial, changes.deleted)
""",
    "misses the writes of a racing writer": """
    def changes_since(self, token):
        changes = super().changes_since(token)
        if token is None or changes.full:
            return changes
        newest = {n: t for n, t in list(changes.updated.items())[:1]}
        return Changes(changes.token, False, newest, changes.deleted)
""",
    "keeps its epoch after a restart": """
    def changes_since(self, token):
        changes = super().changes_since(token)
        if token is not None and changes.full:
            kept = ChangeToken(token.epoch, changes.token.version)
            return Changes(kept, True, changes.updated)
        return changes
""",
}

CHANGE_STORE_TEMPLATE = """
import pytest
from raydog_backends.memory.tag_store import MemoryTagStore
from raydog_core.interfaces import Changes, ChangeToken
from raydog_core.testing import TagStoreContract

class Broken(MemoryTagStore):
{override}

class TestBroken(TagStoreContract):
    @pytest.fixture
    def make_store(self):
        def make(name):
            store = Broken(name)
            store.connect(None)
            return store
        return make

    @pytest.fixture
    def restart_store(self):
        def restart():
            for name in list(MemoryTagStore._clusters):
                MemoryTagStore.forget(name)
        return restart
"""


@pytest.mark.parametrize("flaw", sorted(BROKEN_CHANGE_STORES))
def test_changes_contract_fails_a_broken_store(pytester: pytest.Pytester, flaw: str) -> None:
    source = CHANGE_STORE_TEMPLATE.format(override=BROKEN_CHANGE_STORES[flaw])
    failed = failed_tests(pytester, source, flaw)
    assert CAUGHT_BY[flaw] in failed, f"a store that {flaw}: failed only {sorted(failed)}"


def test_changes_contract_passes_the_memory_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sound=CHANGE_STORE_TEMPLATE.format(override="    seen = {}"))
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    # Skipped: the value limit's tests (it has none) and the restore test (no fixture for it).
    limit = [n for n in dir(TagStoreValueLimitContract) if n.startswith("test_")]
    skipped = len(limit) + 1
    every = [n for n in dir(TagStoreContract) if n.startswith("test_")]
    result.assert_outcomes(passed=len(every) - skipped, skipped=skipped)


BROKEN_BACKENDS = {
    "forgets pending workers": """
    def describe(self):
        return [n for n in super().describe() if n.state is NodeState.RUNNING]
""",
    "does not attach to an existing cluster": """
    def __init__(self, spec):
        super().__init__(spec, launch_delay=0.1)
        self._cluster = SimulatedCluster(spec.cluster_name)
""",
    "shutdown leaves workers running": """
    def shutdown(self):
        with self._cluster.lock:
            for node in list(self._cluster.nodes.values()):
                if node.is_head:
                    del self._cluster.nodes[node.node_id]
""",
    "reports a lost node only once": """
    def describe(self):
        infos = super().describe()
        for info in infos:
            if info.state is NodeState.TERMINATED:
                self._cluster.nodes.pop(info.node_id, None)
        return infos
""",
    "never reports a lost node": """
    def describe(self):
        for node in self._cluster.nodes.values():
            node.lost = ""
        return super().describe()
""",
}

BACKEND_TEMPLATE = """
import pytest
from raydog_backends.memory.compute import MemoryComputeBackend, SimulatedCluster
from raydog_core.interfaces import NodeState
from raydog_core.testing import ComputeBackendContract

class Broken(MemoryComputeBackend):
    def __init__(self, spec):
        super().__init__(spec, launch_delay=0.1)
{override}

class TestBroken(ComputeBackendContract):
    settle_seconds = 2.0

    @pytest.fixture
    def make_backend(self):
        return Broken

    @pytest.fixture
    def lose_node(self):
        def lose(node_id):
            for cluster in MemoryComputeBackend._clusters.values():
                if node_id in cluster.nodes:
                    cluster.lose(node_id)
        return lose
"""


@pytest.mark.parametrize("flaw", sorted(BROKEN_BACKENDS))
def test_compute_contract_fails_a_broken_backend(pytester: pytest.Pytester, flaw: str) -> None:
    failed = failed_tests(pytester, BACKEND_TEMPLATE.format(override=BROKEN_BACKENDS[flaw]), flaw)
    assert CAUGHT_BY[flaw] in failed, f"a backend that {flaw}: failed only {sorted(failed)}"


def test_the_memory_store_bounds_its_tombstones(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the valkey and redis stores do: past the limit the oldest tombstones go, and a reader
    that could have missed one reloads everything."""
    monkeypatch.setattr("raydog_backends.memory.tag_store.TOMBSTONES", 4)
    store = MemoryTagStore("tombstones")
    store.connect(None)
    try:
        check_tombstones_are_bounded(store)
    finally:
        MemoryTagStore.forget("tombstones")


def failed_tests(pytester: pytest.Pytester, source: str, flaw: str) -> set[str]:
    """The names of the contract's tests that fail on ``source``'s broken plugin, running only
    the test meant to catch ``flaw`` (``CAUGHT_BY``): the others would only add their waits."""
    pytester.makepyfile(test_broken=source)
    recorded = pytester.inline_run("-p", "no:cacheprovider", "-k", CAUGHT_BY[flaw])
    return {report.nodeid.rsplit("::", 1)[-1].split("[")[0] for report in recorded.getfailures()}


CAUGHT_BY = {
    "replaces instead of merging": "test_update_merges_instead_of_replacing",
    "leaks nodes between clusters": "test_clusters_are_isolated",
    "loses a node": "test_no_node_is_lost_at_scale",
    "deletes nothing": "test_delete",
    "never reports a delete": "test_only_the_changed_nodes_with_all_their_tags",
    "reports changed tag values only": "test_only_the_changed_nodes_with_all_their_tags",
    "misses the writes of a racing writer": "test_two_writers_racing_lose_nothing_for_a_reader",
    "keeps its epoch after a restart": "test_a_restart_that_lost_the_data_is_a_new_epoch",
    "forgets pending workers": "test_workers_are_known_at_once_and_come_up_with_distinct_ips",
    "does not attach to an existing cluster": "test_another_instance_attaches_to_the_cluster",
    "shutdown leaves workers running": "test_shutdown_stops_everything_and_is_idempotent",
    "reports a lost node only once": "test_describe_reports_and_asking_twice_answers_the_same",
    "never reports a lost node": "test_a_lost_node_is_reported_terminated",
}
"""The contract test meant to catch each flaw: it must be among those that fail."""
