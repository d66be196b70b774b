"""The SQLite store passes RayDog's tag store contract, plus what is particular to a file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from raydog_core import plugins
from raydog_core.errors import ConfigError, UnreachableError
from raydog_core.interfaces import TagStore
from raydog_core.testing import TagStoreContract

from raydog_sqlite import SQLiteTagStore


class TestSQLiteTagStore(TagStoreContract):
    """All stores of a test open one file, as the client and the head of a local cluster do,
    so the contract's isolation tests check the ``cluster`` column, not separate files."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[Callable[[str], TagStore]]:
        made: list[SQLiteTagStore] = []

        def make(cluster_name: str) -> TagStore:
            store = SQLiteTagStore(cluster_name, path=str(tmp_path / "tags.sqlite"))
            store.connect(None)
            made.append(store)
            return store

        yield make
        for store in made:
            store.close()


def test_raydog_finds_the_store_by_its_entry_point_name() -> None:
    assert plugins.load("tag_store", "sqlite", "provider.tag_store") is SQLiteTagStore


def test_another_process_shares_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "tags.sqlite")
    client = SQLiteTagStore("c1", path=path)
    client.connect(None)
    client.update({"head": {"ray-node-kind": "head"}})
    head_side = (
        "from raydog_sqlite import SQLiteTagStore\n"
        f"store = SQLiteTagStore('c1', path={path!r})\n"
        "store.connect(None)\n"
        "assert store.load_all() == {'head': {'ray-node-kind': 'head'}}\n"
        "store.update({'worker': {'ray-node-kind': 'worker'}})\n"
        "store.close()\n"
    )
    subprocess.run([sys.executable, "-c", head_side], check=True, timeout=60)
    assert client.load_all() == {
        "head": {"ray-node-kind": "head"},
        "worker": {"ray-node-kind": "worker"},
    }
    client.close()


def test_a_file_locked_by_another_writer_is_unreachable_after_the_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tags.sqlite"
    store = SQLiteTagStore("c1", path=str(path), busy_timeout=0.2)
    store.connect(None)
    other_writer = sqlite3.connect(path, isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")
    with pytest.raises(UnreachableError, match="database is locked"):
        store.update({"n1": {"a": "1"}})
    other_writer.execute("ROLLBACK")
    store.update({"n1": {"a": "1"}})
    assert store.load_all() == {"n1": {"a": "1"}}
    other_writer.close()
    store.close()


def test_a_path_that_cannot_be_a_file_is_unreachable(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    store = SQLiteTagStore("c1", path=str(tmp_path / "plain-file" / "tags.sqlite"))
    with pytest.raises(UnreachableError, match="plain-file"):
        store.connect(None)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"path": "relative/tags.sqlite"}, "path"),
        ({"path": "/tmp/tags.sqlite", "busy_timeout": 0}, "busy_timeout"),
    ],
)
def test_bad_option_values_name_the_option(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        SQLiteTagStore("c1", **options)  # type: ignore[arg-type]
    assert raised.value.key_path == key
