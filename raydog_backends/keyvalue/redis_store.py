"""The ``redis`` tag store: the shared key-value store through redis-py (``raydog[redis]``)."""

from __future__ import annotations

import redis

from raydog_backends.keyvalue.store import ClientLibrary, KeyValueTagStore


class RedisTagStore(KeyValueTagStore):
    """Speaks to Redis and to Valkey; URLs ``redis://``, ``rediss://`` (TLS) and ``unix://``."""

    library = ClientLibrary(
        module=redis,
        client_class=redis.Redis,
        base_error=redis.exceptions.RedisError,
        url_schemes=("redis", "rediss", "unix"),
    )
