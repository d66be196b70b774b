"""The ``valkey`` and ``redis`` tag stores: one implementation (``store.py``), two client libraries.

Each class is imported on first use, so naming one never imports the other's library, and a
missing library surfaces when the plugin is loaded (the core then says what to install).
``server.py`` runs the store's server on the head node.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raydog_backends.keyvalue.redis_store import RedisTagStore
    from raydog_backends.keyvalue.valkey_store import ValkeyTagStore

__all__ = ["RedisTagStore", "ValkeyTagStore"]

_MODULES = {
    "ValkeyTagStore": "raydog_backends.keyvalue.valkey_store",
    "RedisTagStore": "raydog_backends.keyvalue.redis_store",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
