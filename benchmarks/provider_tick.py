"""The provider's own cost of one autoscaler tick on the memory backends.

A tick is what Ray's StandardAutoscaler asks each update: ``non_terminated_nodes({})`` and then
``node_tags``, ``is_running`` and ``internal_ip`` for every node. Target: under 100 ms at 10,000
nodes. Run: ``python benchmarks/provider_tick.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray.autoscaler._private.providers import _get_node_provider

from raydog_core import config as raydog_config
from raydog_core.provider import RayDogNodeProvider
from tests.conftest import memory_cluster_config
from tests.ray_helpers import head_tags, worker_tags


def tick(provider: RayDogNodeProvider) -> int:
    nodes = provider.non_terminated_nodes({})
    for node in nodes:
        provider.node_tags(node)
        provider.is_running(node)
        provider.internal_ip(node)
    return len(nodes)


def measure(count: int, repeats: int = 7) -> tuple[float, float, float]:
    config = memory_cluster_config()
    config["available_node_types"]["cpu"]["max_workers"] = count
    config["max_workers"] = count
    bootstrapped = raydog_config.bootstrap(config)
    provider = _get_node_provider(bootstrapped["provider"], config["cluster_name"], use_cache=False)
    provider.create_node({}, head_tags(), 1)
    provider.create_node({}, worker_tags(), count - 1)
    assert tick(provider) == count
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        tick(provider)
        times.append((time.perf_counter() - started) * 1000)
    tracemalloc.start()
    tick(provider)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), min(times), peak / 1e6


def main() -> None:
    os.environ.setdefault("RAYDOG_HOME", tempfile.mkdtemp(prefix="raydog-bench-"))
    print(f"{'nodes':>7}  {'median ms/tick':>14}  {'best ms':>8}  {'peak MB/tick':>12}")
    for count in (100, 1_000, 10_000):
        median, best, peak = measure(count)
        print(f"{count:>7}  {median:>14.1f}  {best:>8.1f}  {peak:>12.1f}")


if __name__ == "__main__":
    main()
