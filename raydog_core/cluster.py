"""A RayDog cluster from Python code, over Ray's public autoscaler SDK (``ray.autoscaler.sdk``)::

    with Cluster("cluster.yaml", workers={"cpu_worker": 2}) as cluster:
        ray.init(cluster.address)
        cluster.request(CPU=8)
        cluster.wait_for_workers(3, timeout=300)

The config is read and checked as ``raydog validate`` does (the same defaults, validation and
errors as ``ray up``) before anything is created; ``up()`` is Ray's ``create_or_update_cluster``,
``down()`` its ``teardown_cluster``. A ``with`` block brings the cluster down when it ends, by an
error too, and so does an ``up()`` that fails half way.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ray.autoscaler import sdk

from raydog_core import validation
from raydog_core.errors import ConfigError, RayDogError

HEAD_ADDRESS_COMMAND = 'cat "${RAY_TMPDIR:-/tmp}/ray/ray_current_cluster"'
"""Where Ray writes the head's address once it runs (as RayDog's worker task script reads it)."""
_ADDRESS = re.compile(r"^\S+:\d+$")


class Cluster:
    """An autoscaling Ray cluster of a RayDog config: a path to its YAML, or the mapping.

    ``workers`` keeps that many workers of each node type named from the start (their
    ``min_workers``); the autoscaler adds more as Ray asks, up to each type's ``max_workers``.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, Any],
        workers: Mapping[str, int] | None = None,
    ) -> None:
        loaded = (
            validation.load_file(Path(config))
            if isinstance(config, (str, os.PathLike))
            else copy.deepcopy(dict(config))
        )
        types = loaded.get("available_node_types")
        for node_type, count in (workers or {}).items():
            if not isinstance(types, Mapping) or node_type not in types:
                raise ConfigError(
                    f"available_node_types.{node_type}", "no such node type", sorted(types or {})
                )
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ConfigError(f"workers.{node_type}", f"expected a count, got {count!r}")
            types[node_type]["min_workers"] = count
            types[node_type]["max_workers"] = max(count, types[node_type].get("max_workers", 0))
        validation.validate(loaded)
        self.config: dict[str, Any] = loaded
        self.name: str = loaded["cluster_name"]
        self._address: str | None = None

    # --- life ---------------------------------------------------------------------------

    def up(self) -> Cluster:
        """``ray up``: the head, and the workers asked for; returns once Ray runs on the head.
        If it fails half way, what it made is brought down before the error is raised."""
        try:
            sdk.create_or_update_cluster(self.config, no_config_cache=True)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """``ray down``: every node of the cluster ends. Safe to call again."""
        self._address = None
        sdk.teardown_cluster(self.config)

    def __enter__(self) -> Cluster:
        return self.up()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()

    # --- while it runs ------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The head's Ray address (``host:port``), for ``ray.init`` on a machine that reaches
        the head's address: this one, on the ``local`` backend."""
        if self._address is None:
            output = self._on_head(HEAD_ADDRESS_COMMAND)
            found = [word for word in output.split() if _ADDRESS.match(word)]
            if not found:
                raise RayDogError(f"cluster {self.name!r}: Ray does not run on its head")
            self._address = found[-1]
        return self._address

    def request(self, **resources: int) -> None:
        """Ask Ray's autoscaler for this much of each resource in all (``CPU=8``): Ray's
        ``request_resources``, so it scales for them, and the request stays until the next.
        Ray's request goes through the driver: a process not yet connected to Ray connects to
        this cluster (``ray.init(cluster.address)``)."""
        import ray

        if not ray.is_initialized():
            ray.init(self.address)
        sdk.request_resources(
            bundles=[{name: 1} for name, amount in resources.items() for _ in range(amount)]
        )

    def workers(self) -> list[str]:
        """The addresses of the workers the compute backend runs now."""
        return list(sdk.get_worker_node_ips(self.config))

    def wait_for_workers(self, count: int, timeout: float = 300.0) -> list[str]:
        """Wait until at least ``count`` workers run (as the compute backend reports them);
        their addresses. A RayDogError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(running := self.workers()) < count:
            if time.monotonic() > deadline:
                raise RayDogError(
                    f"cluster {self.name!r}: {len(running)} of {count} workers after {timeout:g} s"
                )
            time.sleep(1.0)
        return running

    def status(self) -> str:
        """``ray status`` on the head: the nodes, resources in use and pending demands."""
        return self._on_head("ray status")

    def _on_head(self, command: str) -> str:
        """What ``command`` printed on the head (Ray's runners give text or bytes)."""
        output = sdk.run_on_cluster(self.config, cmd=command, with_output=True) or ""
        return output.decode(errors="replace") if isinstance(output, bytes) else output
