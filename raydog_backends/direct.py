"""The ``direct`` transport: the head's port is reachable as it is (same network, on the head)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raydog_core.interfaces import Endpoint, Transport


class DirectTransport(Transport):
    def __init__(self, cluster_name: str) -> None:
        super().__init__(cluster_name)

    def open(self, host: str, port: int, auth: Mapping[str, Any]) -> Endpoint:
        return Endpoint(host, port)

    def close(self) -> None:
        """Nothing was opened."""
