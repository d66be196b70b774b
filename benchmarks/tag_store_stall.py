"""How long Ray's threads wait, and what is lost, while the tag store's server is stopped.

A real valkey-server (or redis-server) runs under RayDog's launcher, as on a head node, and a
provider configured as the head's autoscaler has it (``compute: memory``, the store at 127.0.0.1,
default options: ``command_timeout`` 10 s, ``tag_store_read_timeout`` 2 s) holds a head and
workers. Ray's threads are played by: 8 threads calling ``set_node_tags`` without pause, one
calling ``create_node`` then ``terminate_nodes`` every 0.5 s, and the autoscaler's tick
(``non_terminated_nodes``, then ``node_tags`` of every node) every second. The server is stopped
with SIGSTOP for ``--stop-seconds`` (it neither answers nor closes connections: the worst case),
then continued. Printed: the longest time each kind of call took while the server was stopped,
the writes made meanwhile and the most held at once, and, once everything is sent, the writes
lost (compared with what the server holds).

Run: ``python benchmarks/tag_store_stall.py [--server valkey-server] [--stop-seconds 15]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shutil

from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

from benchmarks.provider_tick import cluster_config, launch
from benchmarks.tag_store_tick import Server
from raydog_backends.keyvalue.server import find_server_binary
from raydog_core import config as raydog_config
from raydog_core import state
from raydog_core.provider import RayDogNodeProvider

WORKERS = 200
KINDS = ("set_node_tags", "create_node", "terminate_nodes", "non_terminated_nodes", "node_tags")


class Calls:
    """The longest time each kind of call took, split by whether the server was stopped."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.longest: dict[tuple[str, bool], float] = defaultdict(float)
        self.count: dict[tuple[str, bool], int] = defaultdict(int)
        self._lock = threading.Lock()

    def timed(self, kind: str, call: object, *args: object) -> object:
        stopped = self.stopped.is_set()
        started = time.perf_counter()
        result = call(*args)  # type: ignore[operator]
        took = time.perf_counter() - started
        stopped = stopped or self.stopped.is_set()
        with self._lock:
            self.longest[kind, stopped] = max(self.longest[kind, stopped], took)
            self.count[kind, stopped] += 1
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server", default="valkey-server", choices=["valkey-server", "redis-server"]
    )
    parser.add_argument("--stop-seconds", type=float, default=15.0)
    args = parser.parse_args()
    os.environ["RAYDOG_HOME"] = tempfile.mkdtemp(prefix="raydog-bench-")
    binary = find_server_binary(None) if args.server == "valkey-server" else None
    binary = binary or shutil.which(args.server)
    if binary is None:
        sys.exit(f"needs {args.server}")
    config = cluster_config(WORKERS + 1)
    cluster = config["cluster_name"]
    server = Server(binary, cluster)
    config["provider"]["tag_store"] = {"type": "valkey", "port": server.port}
    section = raydog_config.bootstrap(config)["provider"]
    provider = _get_node_provider(
        raydog_config.for_head(section, config["auth"]), cluster, use_cache=False
    )
    assert isinstance(provider, RayDogNodeProvider)
    launch(provider, WORKERS + 1)
    assert provider.tags.flush(timeout=60)
    nodes = provider.non_terminated_nodes({})
    workers = [n for n in nodes if provider.node_tags(n)[TAG_RAY_NODE_KIND] == NODE_KIND_WORKER]
    server_pid = int((state.cluster_dir(cluster) / "tag-store" / "server.pid").read_text())

    calls = Calls()
    done = threading.Event()
    last_written: dict[str, str] = {}
    created: list[str] = []
    terminated: list[str] = []
    held = [0]

    def writer(index: int) -> None:
        round_ = 0
        while not done.is_set():
            node = workers[index * 10 + round_ % 10]
            value = f"{index}-{round_}"
            calls.timed("set_node_tags", provider.set_node_tags, node, {"bench": value})
            last_written[node] = value
            round_ += 1
            time.sleep(0.001)

    def launcher() -> None:
        tags = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "cpu"}
        while not done.wait(0.5):
            new = calls.timed("create_node", provider.create_node, {}, tags, 1)
            created.extend(new)  # type: ignore[arg-type]
            victim = workers[100 + len(terminated)]
            calls.timed("terminate_nodes", provider.terminate_nodes, [victim])
            terminated.append(victim)

    def autoscaler() -> None:
        while not done.wait(1.0):
            live = calls.timed("non_terminated_nodes", provider.non_terminated_nodes, {})
            for node in live:  # type: ignore[attr-defined]
                calls.timed("node_tags", provider.node_tags, node)
            held[0] = max(held[0], provider.tags.unsent())

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=launcher), threading.Thread(target=autoscaler)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    calls.stopped.set()
    os.kill(server_pid, signal.SIGSTOP)
    time.sleep(args.stop_seconds)
    os.kill(server_pid, signal.SIGCONT)
    calls.stopped.clear()
    time.sleep(5)
    done.set()
    for thread in threads:
        thread.join()
    sent = provider.tags.flush(timeout=120)

    there = type(provider.store)(cluster, port=server.port)
    there.connect(provider.tags._locate())
    stored = there.load_all()
    there.close()
    lost = [n for n, value in last_written.items() if stored.get(n, {}).get("bench") != value]
    lost += [n for n in created if n not in stored and n not in terminated]
    lost += [n for n in terminated if n in stored]
    provider.close()
    server.stop()

    print(
        f"{args.server} stopped (SIGSTOP) for {args.stop_seconds:.0f} s under a provider with "
        f"{WORKERS} workers; load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)"
    )
    print(f"{'call':<22} {'calls while stopped':>19} {'longest while stopped':>22} {'else':>12}")
    for kind in KINDS:
        stopped, otherwise = calls.longest[kind, True] * 1000, calls.longest[kind, False] * 1000
        print(f"{kind:<22} {calls.count[kind, True]:>19,} {stopped:>19.1f} ms {otherwise:>9.1f} ms")
    writes = sum(calls.count[kind, True] for kind in KINDS[:3])
    print(f"writes made while stopped: {writes:,}; most nodes held unsent at once: {held[0]:,}")
    print(f"every held write sent after SIGCONT: {'yes' if sent else 'NO'}; lost: {len(lost)}")


if __name__ == "__main__":
    main()
