"""The parts of Ray's private modules RayDog uses, pinned: when Ray changes one, this says which
and what RayDog uses it for, before a user meets the change as a traceback or a wrong behaviour.

The list, with why no public interface serves, is in docs/architecture.md ("Ray's private
modules"); each test here is one row of it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest


def attribute(module: str, name: str, used_for: str) -> Any:
    """``module.name``, or a failure saying what RayDog lost."""
    try:
        found = importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"Ray no longer has {module} ({exc}); RayDog uses it for {used_for}")
    if not hasattr(found, name):
        pytest.fail(f"Ray's {module} no longer has {name}; RayDog uses it for {used_for}")
    return getattr(found, name)


def accepts(function: Callable[..., Any], *names: str, used_for: str) -> None:
    """``function`` still takes the parameters RayDog passes, by these names."""
    parameters = inspect.signature(function).parameters
    missing = [n for n in names if n not in parameters]
    assert not missing, (
        f"Ray's {function.__qualname__} no longer takes {missing} (it takes {list(parameters)}); "
        f"RayDog calls it for {used_for}"
    )


def test_cli_logger_prints_progress_and_runner_errors() -> None:
    used_for = "progress lines during `ray up` and the local command runner's messages"
    cli_logger = attribute("ray.autoscaler._private.cli_logger", "cli_logger", used_for)
    for method in ("print", "error"):
        assert callable(getattr(cli_logger, method, None)), f"cli_logger.{method}: {used_for}"
    assert isinstance(cli_logger.verbosity, int), f"cli_logger.verbosity: {used_for}"


def test_the_local_command_runner_fails_as_rays_ssh_runner_does() -> None:
    used_for = "a local node's command runner raising what Ray's updater handles"
    error = attribute(
        "ray.autoscaler._private.subprocess_output_util", "ProcessRunnerError", used_for
    )
    accepts(error.__init__, "msg", "msg_type", "code", "command", used_for=used_for)
    raised = error("Command failed", "ssh_command_failed", code=3, command="x")
    assert (raised.msg_type, raised.code) == ("ssh_command_failed", 3), used_for
    for module, name in (
        ("ray.autoscaler._private.subprocess_output_util", "does_allow_interactive"),
        ("ray.autoscaler._private.command_runner", "is_using_login_shells"),
    ):
        function = attribute(module, name, used_for)
        assert isinstance(function(), bool), f"{module}.{name}() no longer answers a bool"


def test_ray_stop_names_rays_processes_raylet_first_gcs_last() -> None:
    used_for = "`ray stop` on a local node: the same processes as Ray's, in Ray's order"
    processes = attribute("ray.autoscaler._private.constants", "RAY_PROCESSES", used_for)
    assert all(len(entry) == 2 and isinstance(entry[1], bool) for entry in processes), used_for
    assert "raylet" in processes[0][0] and "gcs_server" in processes[-1][0], used_for


def test_the_simulation_drives_rays_own_autoscaler() -> None:
    used_for = "`raydog simulate`: Ray's StandardAutoscaler, fed load as raylets would"
    autoscaler = attribute("ray.autoscaler._private.autoscaler", "StandardAutoscaler", used_for)
    accepts(
        autoscaler.__init__,
        "config_reader",
        "load_metrics",
        "gcs_client",
        "update_interval_s",
        used_for=used_for,
    )
    assert callable(getattr(autoscaler, "update", None)), used_for
    metrics = attribute("ray.autoscaler._private.load_metrics", "LoadMetrics", used_for)
    accepts(
        metrics.update,
        "ip",
        "node_id",
        "static_resources",
        "dynamic_resources",
        "node_idle_duration_s",
        used_for=used_for,
    )
    assert hasattr(metrics(), "waiting_bundles"), used_for
    loader = attribute("ray.autoscaler._private.providers", "_get_node_provider", used_for)
    accepts(loader, "provider_config", "cluster_name", "use_cache", used_for=used_for)


def test_config_checks_are_rays_own() -> None:
    used_for = "`raydog validate` and the simulation: Ray's own fill-in and schema check"
    for name in ("prepare_config", "validate_config"):
        accepts(
            attribute("ray.autoscaler._private.util", name, used_for), "config", used_for=used_for
        )


def test_the_startup_hook_finds_rays_legacy_field_warning_where_it_looks() -> None:
    import _raydog_startup

    used_for = "raydog-startup.pth: no warning about head_node/worker_nodes a config never had"
    module = _raydog_startup.RAY_UTIL
    warns = attribute(module, _raydog_startup.WARNING_FUNCTION, used_for)
    fills = attribute(module, _raydog_startup.FILLING_FUNCTION, used_for)
    assert attribute(module, "logger", used_for).name == module, used_for
    assert "field" in warns.__code__.co_varnames, f"{warns.__qualname__}'s `field`: {used_for}"
    accepts(fills, "config", used_for=used_for)
    assert warns.__name__ in fills.__code__.co_names, f"{fills.__qualname__} calls it: {used_for}"


def test_a_ray_node_reports_the_cloud_instance_id_it_was_started_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Autoscaler v2 matches Ray nodes to launched nodes by this variable (RayDog exports it)."""
    used_for = "autoscaler v2: RAY_CLOUD_INSTANCE_ID names the node RayDog launched"
    instance_id = attribute("ray._private.services", "get_node_instance_id", used_for)
    monkeypatch.setenv("RAY_CLOUD_INSTANCE_ID", "node-7")
    assert instance_id() == "node-7", used_for
    adapter = attribute(
        "ray.autoscaler.v2.instance_manager.node_provider", "NodeProviderAdapter", used_for
    )
    accepts(adapter.__init__, "v1_provider", "config_reader", used_for=used_for)


def test_v2_launches_through_create_node() -> None:
    """v2's adapter calls ``create_node_with_resources_and_labels``; RayDog implements
    ``create_node``, which Ray's default of the former calls (a public module, private habit)."""
    from ray.autoscaler.node_provider import NodeProvider

    calls = []

    class Recording(NodeProvider):
        def create_node(self, node_config: dict, tags: dict, count: int) -> None:
            calls.append((node_config, tags, count))

    Recording({}, "pin").create_node_with_resources_and_labels({"a": 1}, {"t": "v"}, 2, {}, {})
    assert calls == [({"a": 1}, {"t": "v"}, 2)], (
        "Ray's NodeProvider.create_node_with_resources_and_labels no longer calls create_node; "
        "autoscaler v2 launches RayDog's nodes through it"
    )


def test_the_autoscaler_takes_a_utilization_scorer_given_node_availability() -> None:
    from raydog_core import task_scripts

    used_for = "preferring node types whose launches did not fail (raydog_core.scheduling)"
    key = attribute(
        "ray.autoscaler._private.constants", "AUTOSCALER_UTILIZATION_SCORER_KEY", used_for
    )
    assert key == task_scripts.SCORER_VARIABLE
    scorer = attribute(
        "ray.autoscaler._private.resource_demand_scheduler", "_default_utilization_scorer", used_for
    )
    accepts(scorer, "node_availability_summary", used_for=used_for)


def test_the_heads_gcs_lists_each_live_nodes_address_and_start_time() -> None:
    used_for = "`raydog status --why`'s Ray joined step (raydog_core/ray_nodes.py, on the head)"
    attribute("ray._raylet", "GcsClient", used_for)
    # GcsClient hands its calls to InnerGcsClient (its __getattr__).
    inner = attribute("ray._raylet", "InnerGcsClient", used_for)
    assert callable(getattr(inner, "get_all_node_info", None)), (
        f"(Inner)GcsClient.get_all_node_info: {used_for}"
    )
    info = attribute("ray._private.gcs_utils", "GcsNodeInfo", used_for)
    fields = set(info.DESCRIPTOR.fields_by_name)
    assert {"node_manager_address", "start_time_ms", "state"} <= fields, used_for
    assert info.GcsNodeState.Name(info.GcsNodeState.ALIVE) == "ALIVE", used_for
    canonical = attribute(
        "ray._private.services", "canonicalize_bootstrap_address_or_die", used_for
    )
    accepts(canonical, "addr", used_for=used_for)
