"""The provider's figures move as it works, and Prometheus' own parser reads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raydog_backends.memory.compute import MemoryComputeBackend
from raydog_core import RayDogNodeProvider
from raydog_core import config as raydog_config
from raydog_core.errors import BackendError
from raydog_core.metrics import ProviderMetrics
from tests.ray_helpers import bootstrap, head_tags, load_provider, worker_tags


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def headed(
    cluster_config: Callable[..., dict[str, Any]],
    forget_memory_clusters: Callable[[str], None],
) -> tuple[str, RayDogNodeProvider]:
    """A provider on the memory backends with its head launched, and its cluster's name."""
    config = cluster_config()
    forget_memory_clusters(config["cluster_name"])
    provider: RayDogNodeProvider = load_provider(config)
    provider.create_node({}, head_tags(), 1)
    return config["cluster_name"], provider


def test_ticks_writes_and_launches_move_the_figures(headed: tuple[str, RayDogNodeProvider]) -> None:
    _, provider = headed
    workers = provider.create_node({}, worker_tags(), 2)
    provider.non_terminated_nodes({})
    provider.tags.flush(timeout=10)
    provider.non_terminated_nodes({})
    figures = _samples(provider.metrics.render())

    assert figures[("raydog_tick_seconds_count", ())] >= 2
    assert figures[("raydog_tag_store_round_trips_total", ())] > 0
    assert figures[("raydog_tag_store_written_bytes_total", ())] > 0
    assert figures[("raydog_nodes", (("node_type", "cpu"), ("state", "running")))] == len(workers)
    assert figures[("raydog_launch_to_running_seconds_count", (("node_type", "cpu"),))] == 2
    assert figures[("raydog_node_hours_total", (("node_type", "cpu"),))] > 0


def test_every_call_to_the_compute_backend_is_counted_by_kind_and_outcome(
    headed: tuple[str, RayDogNodeProvider],
) -> None:
    """Counted where the core calls its backend: the memory backend, which counts nothing
    itself, gets the figure like every other."""
    name, provider = headed
    (worker,) = provider.create_node({}, worker_tags(), 1)
    MemoryComputeBackend.cluster(name).fail_next_launch("quota exceeded")
    with pytest.raises(BackendError):
        provider.create_node({}, head_tags(), 1)
    provider.non_terminated_nodes({})
    provider.terminate_nodes([worker])
    figures = _samples(provider.metrics.render())

    def calls(kind: str, outcome: str) -> float:
        key = (("kind", kind), ("outcome", outcome))
        return figures.get(("raydog_compute_api_calls_total", key), 0.0)

    assert calls("launch", "ok") == 2
    assert calls("launch", "BackendError") == 1
    assert calls("describe", "ok") >= 1
    assert calls("terminate", "ok") == 1
    failure = (("node_type", "head"), ("reason", "BackendError"))
    assert figures[("raydog_launch_failures_total", failure)] == 1


def test_a_worker_that_ends_before_it_runs_counts_as_its_types_launch_failure(
    headed: tuple[str, RayDogNodeProvider],
) -> None:
    name, provider = headed
    MemoryComputeBackend.cluster(name).make_unavailable("cpu", 'quota "x"')
    provider.create_node({}, worker_tags(), 1)
    provider.non_terminated_nodes({})
    figures = _samples(provider.metrics.render())
    failure = (("node_type", "cpu"), ("reason", 'quota "x"'))
    assert figures[("raydog_launch_failures_total", failure)] == 1


class _PromMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()


class _LoadMetrics:
    """Like Ray's LoadMetrics: the IPs of the Ray nodes the GCS reports."""

    def __init__(self) -> None:
        self.node_id_by_ip: dict[str, bytes] = {}


class _Autoscaler:
    """Like what holds Ray's autoscaler on the head (Ray's Monitor): prom_metrics and
    load_metrics set before the provider is built."""

    def __init__(self) -> None:
        self.prom_metrics = _PromMetrics()
        self.load_metrics = _LoadMetrics()

    def reset(self, provider_config: dict[str, Any], cluster_name: str) -> RayDogNodeProvider:
        return RayDogNodeProvider(provider_config, cluster_name)


def test_a_worker_is_timed_from_launch_to_running_and_to_ray_joined_on_the_head(
    cluster_config: Callable[..., dict[str, Any]],
    forget_memory_clusters: Callable[[str], None],
) -> None:
    """The head's provider finds the autoscaler building it, serves its figures in the
    autoscaler's registry and times a worker until Ray's monitor reports its IP."""
    from prometheus_client import generate_latest

    config = cluster_config()
    forget_memory_clusters(config["cluster_name"])
    bootstrapped = bootstrap(config)
    section = raydog_config.for_head(bootstrapped["provider"], {})
    autoscaler = _Autoscaler()
    provider = autoscaler.reset(section, config["cluster_name"])
    provider.create_node({}, head_tags(), 1)
    (worker,) = provider.create_node({}, worker_tags(), 1)
    provider.non_terminated_nodes({})
    joined = ("raydog_launch_to_ray_joined_seconds_count", (("node_type", "cpu"),))
    assert joined not in _samples(provider.metrics.render())

    ip = provider.internal_ip(worker)
    assert ip is not None
    autoscaler.load_metrics.node_id_by_ip[ip] = b"ray-node"
    provider.non_terminated_nodes({})
    provider.non_terminated_nodes({})
    served = generate_latest(autoscaler.prom_metrics.registry).decode()
    figures = _samples(served)
    assert figures[joined] == 1
    assert figures[("raydog_launch_to_running_seconds_count", (("node_type", "cpu"),))] == 1


def test_the_docs_and_the_dashboard_name_only_the_figures_the_provider_exports() -> None:
    """docs/observability.md's table lists every figure the provider writes, and the Grafana
    dashboard's expressions use only those."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    written = {
        name
        for module in ("provider", "launches", "metrics")
        for name in re.findall(
            r'"(raydog_[a-z_]+)"', (root / f"raydog_core/{module}.py").read_text()
        )
    }
    doc = (root / "docs/observability.md").read_text()
    documented = set(re.findall(r"^\| `(raydog_[a-z_]+)` \|", doc, re.MULTILINE))
    assert documented == written
    dashboard = json.loads((root / "docs/grafana-raydog.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in expressions
        for name in re.findall(r"\braydog_[a-z_]+", expr)
    }
    assert used == documented


def test_on_the_head_a_worker_that_ends_before_its_ray_joined_is_a_launch_failure(
    cluster_config: Callable[..., dict[str, Any]],
    forget_memory_clusters: Callable[[str], None],
) -> None:
    """Running is not enough: a task that failed in its setup never gave Ray a node. A worker
    lost after it joined is no launch failure."""
    config = cluster_config()
    forget_memory_clusters(config["cluster_name"])
    section = raydog_config.for_head(bootstrap(config)["provider"], {})
    autoscaler = _Autoscaler()
    provider = autoscaler.reset(section, config["cluster_name"])
    provider.create_node({}, head_tags(), 1)
    failed, joined = provider.create_node({}, worker_tags(), 2)
    provider.non_terminated_nodes({})
    assert provider.is_running(failed) and provider.is_running(joined)
    autoscaler.load_metrics.node_id_by_ip[str(provider.internal_ip(joined))] = b"ray-node"
    provider.non_terminated_nodes({})
    cluster = MemoryComputeBackend.cluster(config["cluster_name"])
    cluster.lose(failed, "task FAILED: ray: command not found")
    provider.non_terminated_nodes({})
    cluster.lose(joined, "spot reclaim")
    provider.non_terminated_nodes({})
    failures = {
        key[1]: count
        for key, count in _samples(provider.metrics.render()).items()
        if key[0] == "raydog_launch_failures_total"
    }
    reason = "task FAILED: ray: command not found"
    assert failures == {(("node_type", "cpu"), ("reason", reason)): 1}


def test_held_writes_are_read_when_the_figures_are_rendered() -> None:
    """Not at the last tick: a scrape between ticks sees what is held then."""
    metrics = ProviderMetrics()
    held = [0]
    metrics.gauge_of("raydog_tag_store_held_writes", lambda: held[0])
    assert _samples(metrics.render())[("raydog_tag_store_held_writes", ())] == 0
    held[0] = 3
    assert _samples(metrics.render())[("raydog_tag_store_held_writes", ())] == 3
