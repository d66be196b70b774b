"""The provider's figures move as it works, and Prometheus' own parser reads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from raydog_core import RayDogNodeProvider
from raydog_core.metrics import ProviderMetrics
from tests.ray_helpers import head_tags, load_provider, worker_tags


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_ticks_writes_and_launches_move_the_figures(
    cluster_config: Callable[..., dict[str, Any]],
    forget_memory_clusters: Callable[[str], None],
) -> None:
    config = cluster_config()
    forget_memory_clusters(config["cluster_name"])
    provider: RayDogNodeProvider = load_provider(config)
    provider.create_node({}, head_tags(), 1)
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


def test_api_calls_and_failures_render_with_labels_prometheus_accepts() -> None:
    metrics = ProviderMetrics()
    metrics.record_api_call("add_work_requirement", "ok")
    metrics.record_api_call("add_work_requirement", "ok")
    metrics.count("raydog_launch_failures_total", node_type="gpu", reason='quota "x"\nexceeded')
    figures = _samples(metrics.render())
    api = (("kind", "add_work_requirement"), ("outcome", "ok"))
    assert figures[("raydog_compute_api_calls_total", api)] == 2
    failure = (("node_type", "gpu"), ("reason", 'quota "x"\nexceeded'))
    assert figures[("raydog_launch_failures_total", failure)] == 1


def test_the_figures_join_the_registry_ray_autoscaler_serves() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from raydog_core.metrics import serve_through_ray_autoscaler

    class _PromMetrics:
        registry = CollectorRegistry()

    class _Autoscaler:
        """Like Ray's StandardAutoscaler: prom_metrics set before the provider is built."""

        prom_metrics = _PromMetrics()

        def reset(self, metrics: ProviderMetrics) -> bool:
            return serve_through_ray_autoscaler(metrics)

    metrics = ProviderMetrics()
    metrics.observe("raydog_tick_seconds", 0.02)
    autoscaler = _Autoscaler()
    assert autoscaler.reset(metrics)
    served = generate_latest(autoscaler.prom_metrics.registry).decode()
    assert "raydog_tick_seconds_count 1.0" in served
    assert not serve_through_ray_autoscaler(ProviderMetrics())
