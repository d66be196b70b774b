"""``sqlite``: a RayDog tag store in one SQLite file, with nothing but the standard library.

A worked example of a third-party plugin: the whole integration is this class and the entry
point in ``pyproject.toml``. RayDog's core caches, locks, batches and buffers, so the store only
moves tags in and out of one table::

    tags(cluster, node, tag, value)    primary key (cluster, node, tag)

Every call is one transaction. The file is in WAL mode and waits for a busy lock, so several
processes on one machine (the client's ``ray up`` and the head's autoscaler of a ``local``
cluster) can use it at once. It has no server (``head_port`` is None), so the core opens no
transport to it: client and head share tags when both open the same file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from raydog_core.errors import ConfigError, RayDogError, UnreachableError
from raydog_core.interfaces import Endpoint, Tags, TagStore

__all__ = ["SQLiteTagStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    cluster TEXT NOT NULL,
    node TEXT NOT NULL,
    tag TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (cluster, node, tag)
) WITHOUT ROWID
"""
_MERGE = """
INSERT INTO tags (cluster, node, tag, value) VALUES (?, ?, ?, ?)
ON CONFLICT (cluster, node, tag) DO UPDATE SET value = excluded.value
"""


class SQLiteTagStore(TagStore):
    """Every cluster's tags in one file, kept apart by the ``cluster`` column."""

    head_port = None

    def __init__(self, cluster_name: str, *, path: str, busy_timeout: float = 10.0) -> None:
        """Options, from the ``tag_store`` mapping of the cluster YAML (the core has checked
        their names and types against these hints; this checks their values, without I/O):

        - ``path``: the database file (absolute, or ``~/...``), created on first use. Client
          and head share tags when both open this same file.
        - ``busy_timeout``: seconds a call waits while another process writes; after that the
          store counts as unreachable and the core holds writes in memory until it is back.
        """
        super().__init__(cluster_name)
        file = Path(path).expanduser()
        if not file.is_absolute():
            # Client and head run in different folders: a relative path would mean two files.
            raise ConfigError("path", f"expected an absolute path or ~/..., got {path!r}")
        if not 0 < busy_timeout <= 3600:
            raise ConfigError("busy_timeout", f"expected seconds in (0, 3600], got {busy_timeout}")
        self.path = file
        self.busy_timeout = float(busy_timeout)
        self._db: sqlite3.Connection | None = None

    def connect(self, endpoint: Endpoint | None) -> None:
        """``endpoint`` is always None: with no ``head_port`` there is nothing to reach."""
        self.close()
        with self._errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (see _transaction).
            # check_same_thread=False: the core calls from Ray's threads, one call at a time.
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
        self._db = db

    def load_all(self) -> dict[str, Tags]:
        db = self._connected()
        with self._errors("load_all"):
            rows = db.execute(
                "SELECT node, tag, value FROM tags WHERE cluster = ?", (self.cluster_name,)
            ).fetchall()
        nodes: dict[str, Tags] = {}
        for node, tag, value in rows:
            nodes.setdefault(node, {})[tag] = value
        return nodes

    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        rows = [
            (self.cluster_name, node, tag, value)
            for node, tags in updates.items()
            for tag, value in tags.items()
        ]
        if rows:
            with self._transaction("update") as db:
                db.executemany(_MERGE, rows)

    def delete(self, node_ids: Collection[str]) -> None:
        rows = [(self.cluster_name, node) for node in node_ids]
        if rows:
            with self._transaction("delete") as db:
                db.executemany("DELETE FROM tags WHERE cluster = ? AND node = ?", rows)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _connected(self) -> sqlite3.Connection:
        if self._db is None:
            raise RayDogError("SQLite tag store used before connect()")
        return self._db

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction. BEGIN IMMEDIATE takes the write lock first, so a busy file
        makes the call wait (up to ``busy_timeout``) before it starts, never half way."""
        db = self._connected()
        with self._errors(action), db:  # ``with db``: COMMIT on success, ROLLBACK on error
            db.execute("BEGIN IMMEDIATE")
            yield db

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """SQLite's errors as RayDog's. A locked or unopenable file is unreachable: the core
        then keeps writes in memory and retries. A file that is not a database is not."""
        try:
            yield
        except (sqlite3.OperationalError, OSError) as exc:
            raise UnreachableError(
                "SQLite tag store", str(self.path), 0, f"{action}: {exc}"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise RayDogError(f"SQLite tag store {self.path}: {action} failed: {exc}") from exc
