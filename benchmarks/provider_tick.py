"""The provider's own cost of one autoscaler tick on the memory backends.

A tick is what Ray's StandardAutoscaler asks each update: ``non_terminated_nodes({})`` and then
``node_tags``, ``is_running`` and ``internal_ip`` for every node. Printed: wall time (sensitive to
whatever else the machine runs) and CPU time (the ticking thread and the tag cache's sender), the
median and best of 7 ticks where nothing changed, and the memory a tick allocates at its peak.
Target: under 20 ms of CPU at 10,000 nodes. Run: ``python benchmarks/provider_tick.py``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_USER_NODE_TYPE,
)

from raydog_core import config as raydog_config
from raydog_core.provider import RayDogNodeProvider


def tick(provider: RayDogNodeProvider) -> int:
    """What Ray's StandardAutoscaler asks of a provider each update."""
    nodes = provider.non_terminated_nodes({})
    for node in nodes:
        provider.node_tags(node)
        provider.is_running(node)
        provider.internal_ip(node)
    return len(nodes)


def cluster_config(count: int, tag_store: Any = "memory") -> dict[str, Any]:
    """A cluster of ``count`` nodes on the memory compute backend."""
    return {
        "cluster_name": f"bench-{uuid.uuid4().hex[:8]}",
        "max_workers": count,
        "provider": {
            "type": "external",
            "module": "raydog_core.RayDogNodeProvider",
            "compute": "memory",
            "tag_store": tag_store,
            "transport": "direct",
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": count},
        },
        "head_node_type": "head",
    }


def launch(provider: RayDogNodeProvider, count: int) -> None:
    """A head and ``count - 1`` workers, tagged as Ray's launcher tags them."""
    batches = ((NODE_KIND_HEAD, "head", 1), (NODE_KIND_WORKER, "cpu", count - 1))
    for kind, node_type, number in batches:
        if number:
            tags = {
                TAG_RAY_NODE_KIND: kind,
                TAG_RAY_USER_NODE_TYPE: node_type,
                TAG_RAY_NODE_NAME: f"ray-bench-{node_type}",
                TAG_RAY_LAUNCH_CONFIG: "0123456789abcdef0123456789abcdef01234567",
            }
            provider.create_node({}, tags, number)


def cpu_clocks() -> list[int]:
    """CPU clocks of this thread and of the tag cache's sender threads."""
    threads = [threading.current_thread()]
    threads += [t for t in threading.enumerate() if t.name == "raydog-tag-sender"]
    return [time.pthread_getcpuclockid(t.ident) for t in threads if t.ident is not None]


def cpu_seconds(clocks: list[int]) -> float:
    total = 0.0
    for clock in clocks:
        with contextlib.suppress(OSError):  # a thread that has ended
            total += time.clock_gettime(clock)
    return total


def measure(count: int, repeats: int = 7) -> dict[str, float]:
    config = cluster_config(count)
    bootstrapped = raydog_config.bootstrap(config)
    provider = _get_node_provider(bootstrapped["provider"], config["cluster_name"], use_cache=False)
    assert isinstance(provider, RayDogNodeProvider)
    launch(provider, count)
    assert tick(provider) == count
    walls, cpus = [], []
    for _ in range(repeats):
        clocks = cpu_clocks()
        cpu = cpu_seconds(clocks)
        started = time.perf_counter()
        tick(provider)
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((cpu_seconds(clocks) - cpu) * 1000)
    tracemalloc.start()
    tick(provider)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    provider.close()
    return {
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "best_cpu": min(cpus),
        "peak": peak / 1e6,
    }


def main() -> None:
    os.environ.setdefault("RAYDOG_HOME", tempfile.mkdtemp(prefix="raydog-bench-"))
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print(
        f"{'nodes':>7}  {'wall ms/tick':>12}  {'CPU ms/tick':>11}  {'best CPU ms':>11}  "
        f"{'peak MB/tick':>12}"
    )
    for count in (100, 1_000, 10_000):
        figures = measure(count)
        print(
            f"{count:>7}  {figures['wall']:>12.1f}  {figures['cpu']:>11.1f}  "
            f"{figures['best_cpu']:>11.1f}  {figures['peak']:>12.1f}"
        )


if __name__ == "__main__":
    main()
