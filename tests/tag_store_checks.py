"""Checks every tag store with tombstones passes, whatever keeps them (the memory store, the
valkey and redis scripts)."""

from __future__ import annotations

from raydog_core.interfaces import TagStore


def check_tombstones_are_bounded(store: TagStore) -> None:
    """With the store's ``TOMBSTONES`` set to 4: past the limit the oldest tombstones go, and a
    reader that could have missed one of them reloads everything instead of keeping a deleted
    node."""
    store.update({f"n{i}": {"i": str(i)} for i in range(10)})
    old = store.changes_since(None).token
    store.delete(["n0"])
    recent = store.changes_since(old).token
    for i in range(1, 5):
        store.delete([f"n{i}"])
    behind = store.changes_since(old)
    assert behind.full and set(behind.updated) == {f"n{i}" for i in range(5, 10)}
    kept = store.changes_since(recent)
    assert not kept.full and set(kept.deleted) == {"n1", "n2", "n3", "n4"}
