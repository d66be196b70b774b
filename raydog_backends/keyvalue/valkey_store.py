"""The ``valkey`` tag store: the shared key-value store through valkey-py (the default)."""

from __future__ import annotations

import valkey

from raydog_backends.keyvalue.store import ClientLibrary, KeyValueTagStore


class ValkeyTagStore(KeyValueTagStore):
    """Speaks to Valkey and to Redis; URLs ``valkey://``, ``valkeys://`` (TLS), ``redis://``,
    ``rediss://`` (TLS) and ``unix://``."""

    library = ClientLibrary(
        module=valkey,
        client_class=valkey.Valkey,
        base_error=valkey.exceptions.ValkeyError,
        url_schemes=("valkey", "valkeys", "redis", "rediss", "unix"),
    )
