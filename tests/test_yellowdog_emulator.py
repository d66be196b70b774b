"""The YellowDog emulator, driven by the real yellowdog-sdk as any program would drive YellowDog."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import urllib3
from yellowdog_client.common.json import Json
from yellowdog_client.model import (
    ApiKey,
    AutoShutdown,
    ComputeRequirementStatus,
    ComputeRequirementSummarySearch,
    ComputeRequirementTemplateUsage,
    ComputeSource,
    ComputeSourceStatus,
    Instance,
    InstanceSearch,
    InstanceStatus,
    Node,
    NodeSearch,
    NodeStatus,
    NodeWorkerTarget,
    ProvisionedWorkerPoolProperties,
    RetryProperties,
    RunSpecification,
    ServicesSchema,
    SliceReference,
    Task,
    TaskGroup,
    TaskSearch,
    TaskStatus,
    WorkerPoolSearch,
    WorkerPoolStatus,
    WorkRequirement,
    WorkRequirementSearch,
    WorkRequirementStatus,
)
from yellowdog_client.model.exceptions import (
    InternalServerException,
    InvalidRequestException,
    NotAuthorisedException,
)
from yellowdog_client.platform_client import PlatformClient

from raydog_backends.process_nodes.processes import pid_alive
from raydog_backends.yellowdog import YellowDogComputeBackend
from raydog_backends.yellowdog_emulator import Emulator, EmulatorClient, EmulatorConfig
from raydog_backends.yellowdog_emulator.processes import SETUP_FINISHED_VARIABLE
from raydog_backends.yellowdog_emulator.runner import EmulatedTaskRunner
from raydog_core import cluster_plugins, config_parsing, plugins
from tests.conftest import memory_cluster_config
from tests.waiting import wait_until
from tests.yellowdog_fixtures import (
    KEY_ID,
    SECRET,
    TEMPLATE,
    make_spec,
    running_emulator,
    start_emulator_process,
)

NAMESPACE = "emulator-test"


def sdk(url: str, key_id: str = KEY_ID, secret: str = SECRET) -> PlatformClient:
    # No retries: the SDK gives maxAttempts to urllib3 as the number of retries.
    schema = ServicesSchema(defaultUrl=url, retry=RetryProperties(maxAttempts=0))
    return PlatformClient.create(schema, ApiKey(key_id, secret))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """Every platform fact, strict."""
    with running_emulator() as running:
        yield running


@pytest.fixture
def client(emulator: Emulator) -> Iterator[PlatformClient]:
    platform = sdk(emulator.url)
    yield platform
    platform.close()


def requirement(
    name: str, tag: str = "pool-tag", disable_preallocation: bool = True, **group: object
) -> WorkRequirement:
    return WorkRequirement(
        namespace=NAMESPACE,
        name=name,
        tag="emulator",
        taskGroups=[
            TaskGroup(
                name="group_1",
                runSpecification=RunSpecification(
                    taskTypes=["bash"],
                    workerTags=[tag],
                    namespaces=[NAMESPACE],
                    disablePreallocation=disable_preallocation,
                ),
                **group,  # type: ignore[arg-type]
            )
        ],
    )


def provision(
    client: PlatformClient,
    name: str,
    count: int,
    tag: str = "pool-tag",
    template: str = TEMPLATE,
    **props: object,
) -> str:
    usage = ComputeRequirementTemplateUsage(
        templateId=template,
        requirementName=name,
        requirementNamespace=NAMESPACE,
        targetInstanceCount=count,
        userData="#!/bin/bash\necho hello",
    )
    properties = ProvisionedWorkerPoolProperties(
        createNodeWorkers=NodeWorkerTarget.per_node(1),
        workerTag=tag,
        **props,  # type: ignore[arg-type]
    )
    pool = client.worker_pool_client.provision_worker_pool(usage, properties)
    assert pool.id is not None
    return pool.id


def public_addresses(client: PlatformClient, pool_id: str) -> set[str | None]:
    """Where the platform publishes them now: the instances of the pool's compute requirement."""
    pool = client.worker_pool_client.get_worker_pool_by_id(pool_id)
    search = InstanceSearch(computeRequirementId=pool.computeRequirementId)  # type: ignore[attr-defined]
    return {i.publicIpAddress for i in client.compute_client.get_instances(search).list_all()}


def first_group(made: WorkRequirement) -> str:
    assert made.taskGroups and made.taskGroups[0].id
    return made.taskGroups[0].id


def bash(script: str, **environment: str) -> Task:
    return Task(
        taskType="bash", taskData=script, arguments=["taskdata.txt"], environment=environment
    )


def task_status(client: PlatformClient, task_id: str) -> TaskStatus | None:
    return client.work_client.get_task_by_id(task_id).status


def test_work_requirement_round_trip_with_the_sdk_json(client: PlatformClient) -> None:
    made = client.work_client.add_work_requirement(requirement("round-trip"))
    assert made.id and made.status is WorkRequirementStatus.RUNNING
    assert made.taskGroups and made.taskGroups[0].id
    by_id = client.work_client.get_work_requirement_by_id(made.id)
    by_name = client.work_client.get_work_requirement_by_name(NAMESPACE, "round-trip")
    assert Json.dump(by_id) == Json.dump(by_name) == Json.dump(made)
    assert by_id.taskGroups and by_id.taskGroups[0].runSpecification.workerTags == ["pool-tag"]


def test_a_task_group_is_added_by_updating_the_work_requirement(client: PlatformClient) -> None:
    made = client.work_client.add_work_requirement(requirement("grows"))
    made.taskGroups = [
        *(made.taskGroups or []),
        TaskGroup(name="group_2", runSpecification=RunSpecification(taskTypes=["bash"])),
    ]
    updated = client.work_client.update_work_requirement(made)
    assert [g.name for g in updated.taskGroups or []] == ["group_1", "group_2"]
    assert all(g.id for g in updated.taskGroups or [])


def test_names_follow_yellowdog_rules(client: PlatformClient) -> None:
    with pytest.raises(InvalidRequestException, match="invalid"):
        client.work_client.add_work_requirement(requirement("Upper_Case"))
    with pytest.raises(InvalidRequestException, match="invalid"):
        client.work_client.add_work_requirement(requirement("trailing-newline\n"))
    client.work_client.add_work_requirement(requirement("taken"))
    with pytest.raises(InvalidRequestException, match="already exists"):
        client.work_client.add_work_requirement(requirement("taken"))


RAY_LAUNCH_HASH = "0c1ouvf7d1nkms2bhs0m4ejm4uuj3d5uthb7eehuf7bj5q12cg5g"
"""What Ray's launch config hash looks like (52 base32hex characters): often a leading digit."""
BROKEN_NAMES = [RAY_LAUNCH_HASH, "Upper", "ends-", "has.dot", "a" * 61]


@pytest.mark.parametrize("name", BROKEN_NAMES)
def test_every_name_and_tag_follows_yellowdog_rules(client: PlatformClient, name: str) -> None:
    """The rules cover tags too (yellowdog-cli README, "Naming Rules"): a task's tag, a task
    group's, a compute requirement's and its instance tags are refused like names."""
    made = client.work_client.add_work_requirement(requirement("named"))
    group_id = first_group(made)
    refused = pytest.raises(InvalidRequestException, match="invalid")
    with refused:
        client.work_client.add_tasks_to_task_group_by_id(
            group_id, [Task(taskType="bash", tag=name)]
        )
    with refused:
        client.work_client.add_tasks_to_task_group_by_id(
            group_id, [Task(taskType="bash", name=name)]
        )
    tagged_group = requirement("other").taskGroups[0]  # type: ignore[index]
    tagged_group.name, tagged_group.tag = "group_2", name
    made.taskGroups = [*(made.taskGroups or []), tagged_group]
    with refused:
        client.work_client.update_work_requirement(made)
    usage = ComputeRequirementTemplateUsage(
        templateId=TEMPLATE, requirementName="pool", requirementNamespace=NAMESPACE
    )
    properties = ProvisionedWorkerPoolProperties(workerTag="pool-tag", maxNodes=1)
    for field, value in (
        ("requirementName", name),
        ("requirementTag", name),
        ("requirementNamespace", name),
        ("instanceTags", {"raydog-cluster": name}),
        ("instanceTags", {name: "value"}),
    ):
        with refused:
            client.worker_pool_client.provision_worker_pool(
                dataclasses.replace(usage, **{field: value}), properties
            )
    with refused:
        client.worker_pool_client.provision_worker_pool(
            usage, dataclasses.replace(properties, workerTag=name)
        )
    assert client.work_client.add_tasks_to_task_group_by_id(
        group_id, [Task(taskType="bash", name="a" * 60, tag=f"h{RAY_LAUNCH_HASH}")]
    )


def test_searches_come_in_slices_the_sdk_follows(
    emulator: Emulator, client: PlatformClient
) -> None:
    emulator.platform.config.slice_size = 2
    for number in range(5):
        client.work_client.add_work_requirement(requirement(f"sliced-{number}"))
    search = client.work_client.get_work_requirements(
        WorkRequirementSearch(namespaces=[NAMESPACE], statuses=[WorkRequirementStatus.RUNNING])
    )
    first = search.slice(SliceReference())
    assert len(first.items or []) == 2 and first.nextSliceId
    assert sorted(str(s.name) for s in search.list_all()) == [f"sliced-{n}" for n in range(5)]
    other = client.work_client.get_work_requirements(
        WorkRequirementSearch(namespaces=["elsewhere"])
    )
    assert other.list_all() == []


def test_pools_boot_nodes_that_take_matching_tasks(client: PlatformClient) -> None:
    made = client.work_client.add_work_requirement(requirement("runs"))
    group_id = first_group(made)
    pool_id = provision(client, "runs-pool", 2)
    elsewhere = provision(client, "other-pool", 1, tag="other-tag")
    tasks = client.work_client.add_tasks_to_task_group_by_id(group_id, [bash("sleep 60")] * 2)
    ids = [t.id for t in tasks]
    assert all(t.status is TaskStatus.READY for t in tasks)
    wait_until(
        lambda: all(task_status(client, i) is TaskStatus.EXECUTING for i in ids if i), "execution"
    )
    nodes = client.worker_pool_client.get_nodes(NodeSearch(workerPoolId=pool_id)).list_all()
    assert len(nodes) == 2
    ips = {n.details.privateIpAddress for n in nodes if n.details}
    assert len(ips) == 2 and all(n.details and n.details.publicIpAddress is None for n in nodes)
    executed_on = {client.work_client.get_task_by_id(i).nodeId for i in ids if i}
    assert executed_on == {n.id for n in nodes}
    by_tag = client.worker_pool_client.get_nodes(NodeSearch(workerTag="pool-tag")).list_all()
    assert {n.id for n in by_tag} == {n.id for n in nodes}
    other = client.worker_pool_client.get_nodes(NodeSearch(workerPoolId=elsewhere)).list_all()
    assert all(node.id not in executed_on for node in other)
    worker = (nodes[0].workers or [])[0].id
    assert client.worker_pool_client.get_node_by_worker_id(worker).id == nodes[0].id  # type: ignore[arg-type]


def test_tasks_run_until_cancelled_and_searches_filter_them(client: PlatformClient) -> None:
    made = client.work_client.add_work_requirement(requirement("cancels"))
    group_id = first_group(made)
    provision(client, "cancels-pool", 2)
    first, second = client.work_client.add_tasks_to_task_group_by_id(group_id, [bash("x")] * 2)
    assert first.id and second.id
    wait_until(lambda: task_status(client, first.id) is TaskStatus.EXECUTING, "execution")  # type: ignore[arg-type]
    client.work_client.cancel_task_by_id(first.id, True)
    assert task_status(client, first.id) is TaskStatus.CANCELLED
    live = client.work_client.get_tasks(
        TaskSearch(workRequirementId=made.id, statuses=[s for s in TaskStatus if not s.finished])
    ).list_all()
    assert [t.id for t in live] == [second.id]


def test_a_task_group_finishes_when_its_tasks_have_and_takes_no_more(
    client: PlatformClient,
) -> None:
    made = client.work_client.add_work_requirement(requirement("finishes"))
    group_id = first_group(made)
    (task,) = client.work_client.add_tasks_to_task_group_by_id(group_id, [bash("x")])
    client.work_client.cancel_task_by_id(task.id, True)  # type: ignore[arg-type]
    wait_until(
        lambda: (
            client.work_client.get_work_requirement_by_id(made.id).status  # type: ignore[arg-type]
            is WorkRequirementStatus.COMPLETED
        ),
        "the work requirement to complete",
    )
    with pytest.raises(InvalidRequestException):
        client.work_client.add_tasks_to_task_group_by_id(group_id, [bash("x")])


def test_cancelling_a_work_requirement_aborts_its_tasks(client: PlatformClient) -> None:
    made = client.work_client.add_work_requirement(requirement("aborts"))
    assert made.id
    group_id = first_group(made)
    provision(client, "aborts-pool", 1)
    (task,) = client.work_client.add_tasks_to_task_group_by_id(group_id, [bash("x")])
    wait_until(lambda: task_status(client, task.id) is TaskStatus.EXECUTING, "execution")  # type: ignore[arg-type]
    client.work_client.cancel_work_requirement_by_id(made.id, True)
    wait_until(
        lambda: (
            client.work_client.get_work_requirement_by_id(made.id).status  # type: ignore[arg-type]
            is WorkRequirementStatus.CANCELLED
        ),
        "cancellation",
    )
    assert task_status(client, task.id) is TaskStatus.CANCELLED  # type: ignore[arg-type]


def test_pools_resize_and_shut_down(client: PlatformClient) -> None:
    pool_id = provision(client, "resized", 1, maxNodes=3)
    wait_until(
        lambda: (
            len(client.worker_pool_client.get_nodes(NodeSearch(workerPoolId=pool_id)).list_all())
            == 1
        ),
        "one node",
    )
    client.worker_pool_client.resize_worker_pool_by_id(pool_id, 3)
    running = NodeSearch(workerPoolId=pool_id, statuses=[NodeStatus.RUNNING])
    wait_until(
        lambda: len(client.worker_pool_client.get_nodes(running).list_all()) == 3, "three nodes"
    )
    client.worker_pool_client.shutdown_worker_pool_by_id(pool_id)
    pool = client.worker_pool_client.get_worker_pool_by_id(pool_id)
    assert pool.status is not None and pool.status.finished
    wait_until(lambda: client.worker_pool_client.get_nodes(running).list_all() == [], "no node")
    live = WorkerPoolSearch(
        namespaces=[NAMESPACE], statuses=[s for s in WorkerPoolStatus if not s.finished]
    )
    assert client.worker_pool_client.get_worker_pools(live).list_all() == []


def test_idle_nodes_then_idle_pools_shut_themselves_down(
    emulator: Emulator, client: PlatformClient
) -> None:
    emulator.platform.config.time_scale = 0.005  # a minute becomes 0.3 s
    idle = AutoShutdown(enabled=True, timeout=timedelta(minutes=1))
    pool_id = provision(client, "idles", 2, idleNodeShutdown=idle, idlePoolShutdown=idle)
    wait_until(
        lambda: (
            client.worker_pool_client.get_worker_pool_by_id(pool_id).status
            is WorkerPoolStatus.TERMINATED
        ),
        "the idle pool to shut down",
    )
    nodes = client.worker_pool_client.get_nodes(NodeSearch(workerPoolId=pool_id)).list_all()
    assert len(nodes) == 2 and all(n.status is NodeStatus.TERMINATED for n in nodes)


def test_a_lost_node_fails_its_task(emulator: Emulator, client: PlatformClient) -> None:
    made = client.work_client.add_work_requirement(requirement("loses"))
    provision(client, "loses-pool", 1)
    (task,) = client.work_client.add_tasks_to_task_group_by_id(first_group(made), [bash("x")])
    assert task.id
    wait_until(lambda: task_status(client, task.id) is TaskStatus.EXECUTING, "execution")  # type: ignore[arg-type]
    EmulatorClient(emulator.url).lose_node_of_task(task.id)
    after = client.work_client.get_task_by_id(task.id)
    assert after.status is TaskStatus.FAILED and after.errors
    assert client.worker_pool_client.get_node_by_id(after.nodeId).status is NodeStatus.LOST  # type: ignore[arg-type]


def test_large_bodies_arrive_gzipped(emulator: Emulator, client: PlatformClient) -> None:
    made = client.work_client.add_work_requirement(requirement("big"))
    script = "#!/bin/bash\n" + "echo padding\n" * 2000
    tasks = client.work_client.add_tasks_to_task_group_by_id(first_group(made), [bash(script)] * 3)
    assert [client.work_client.get_task_by_id(t.id).taskData for t in tasks] == [script] * 3  # type: ignore[arg-type]


def test_only_the_configured_key_and_templates_are_accepted() -> None:
    config = EmulatorConfig(api_key=f"{KEY_ID}:{SECRET}", templates=[TEMPLATE])
    with running_emulator(config) as emulator:
        wrong = sdk(emulator.url, secret="not-the-secret")
        with pytest.raises(NotAuthorisedException):
            wrong.work_client.get_work_requirement_by_name(NAMESPACE, "x")
        right = sdk(emulator.url)
        usage = ComputeRequirementTemplateUsage(templateId="ydid:crt:unknown", requirementName="p")
        with pytest.raises(InvalidRequestException, match="template"):
            right.worker_pool_client.provision_worker_pool(usage, ProvisionedWorkerPoolProperties())
        assert provision(right, "known-template", 0)


def test_faults_fail_the_nth_call_or_every_call(emulator: Emulator, client: PlatformClient) -> None:
    control = EmulatorClient(emulator.url)
    control.fail(r"^/work/requirements$", 400, method="POST", nth=2)
    client.work_client.add_work_requirement(requirement("first"))
    with pytest.raises(InvalidRequestException, match="injected"):
        client.work_client.add_work_requirement(requirement("second"))
    client.work_client.add_work_requirement(requirement("third"))
    control.fail(r"/workerPools", 503)
    with pytest.raises(InternalServerException, match="injected"):
        client.worker_pool_client.get_worker_pool_by_id("ydid:wrkrpool:x")
    control.clear_faults()
    control.delay(r"/work/requirements", 0.01)
    assert client.work_client.get_work_requirement_by_name(NAMESPACE, "first").name == "first"
    statuses = [(r["method"], r["path"], r["status"]) for r in control.requests()]
    assert statuses[:4] == [
        ("POST", "/work/requirements", 200),
        ("POST", "/work/requirements", 400),
        ("POST", "/work/requirements", 200),
        ("GET", "/workerPools/ydid:wrkrpool:x", 503),
    ]
    assert all(r["key_id"] == KEY_ID for r in control.requests())
    assert SECRET not in str(control.requests()), "the request log must not keep the secret"


def test_inspection_lists_live_objects(emulator: Emulator, client: PlatformClient) -> None:
    control = EmulatorClient(emulator.url)
    made = client.work_client.add_work_requirement(requirement("inspected"))
    pool_id = provision(client, "inspected-pool", 1)
    assert [r["name"] for r in control.live_work_requirements()] == ["inspected"]
    assert [p["id"] for p in control.live_pools()] == [pool_id]
    wait_until(lambda: len(control.live_nodes()) == 1, "the node")
    kinds = [" ".join(leak.split()[:2]) for leak in control.leaks()]
    assert kinds == ["work requirement", "worker pool", "compute requirement", "instance of"]
    client.work_client.cancel_work_requirement_by_id(made.id, True)  # type: ignore[arg-type]
    wait_until(lambda: control.state()["nodes"][0]["status"] == "RUNNING", "registration")
    client.worker_pool_client.shutdown_worker_pool_by_id(pool_id)
    wait_until(lambda: control.leaks() == [], "nothing live")
    control.reset()
    assert control.state()["work_requirements"] == [] and control.request_count() == 0


def test_task_scripts_run_as_processes_with_their_environment(tmp_path: Path) -> None:
    config = EmulatorConfig(run_tasks=True, work_dir=str(tmp_path / "work"), stop_grace_seconds=2)
    with running_emulator(config) as emulator:
        client = sdk(emulator.url)
        made = client.work_client.add_work_requirement(requirement("processes"))
        group_id = first_group(made)
        provision(client, "processes-pool", 3)
        out = tmp_path / "out"
        out.mkdir()
        script = f'#!/bin/bash\necho "$YD_TASK_ID $GREETING" > {out}/$YD_TASK_ID.txt\nexit $CODE\n'
        ok, failing = client.work_client.add_tasks_to_task_group_by_id(
            group_id,
            [bash(script, GREETING="hello", CODE="0"), bash(script, GREETING="x", CODE="3")],
        )
        pid_file = tmp_path / "sleeper.pid"
        (sleeper,) = client.work_client.add_tasks_to_task_group_by_id(
            group_id, [bash(f"#!/bin/bash\necho $$ > {pid_file}\nsleep 300\n")]
        )
        wait_until(lambda: task_status(client, ok.id) is TaskStatus.COMPLETED, "success")  # type: ignore[arg-type]
        wait_until(lambda: task_status(client, failing.id) is TaskStatus.FAILED, "failure")  # type: ignore[arg-type]
        assert (out / f"{ok.id}.txt").read_text().split() == [ok.id, "hello"]
        wait_until(pid_file.exists, "the sleeper to start")
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        client.work_client.cancel_task_by_id(sleeper.id, True)  # type: ignore[arg-type]
        wait_until(lambda: not pid_alive(pid), "the cancelled task's process to stop")
        client.close()


@pytest.mark.parametrize(
    "module", ["raydog_backends.yellowdog_emulator", "raydog_backends.yellowdog.emulator"]
)
def test_runs_as_a_module_and_stops_on_sigterm(module: str) -> None:
    """Its own command, and the older one kept as an alias."""
    process = start_emulator_process("--boot-delay", "0.01", module=module)
    try:
        client = sdk(process.url)
        made = client.work_client.add_work_requirement(requirement("as-a-process"))
        assert made.id
        assert EmulatorClient(process.url).live_work_requirements()[0]["id"] == made.id
        client.close()
    finally:
        code = process.stop()
    assert code == 0 or code == -signal.SIGTERM


def test_loopback_addresses_are_distinct_and_given_back(tmp_path: Path) -> None:
    config = EmulatorConfig(loopback_ips=True, public_ip="127.0.0.1", work_dir=str(tmp_path))
    with running_emulator(config) as emulator:
        client = sdk(emulator.url)
        pool_id = provision(client, "loopback-pool", 3)
        search = NodeSearch(workerPoolId=pool_id, statuses=[NodeStatus.RUNNING])

        def running() -> list[Node]:
            return client.worker_pool_client.get_nodes(search).list_all()

        wait_until(lambda: len(running()) == 3, "three nodes")
        nodes = running()
        private = {n.details.privateIpAddress for n in nodes if n.details}
        assert len(private) == 3 and all(ip and ip.startswith("127.") for ip in private)
        wait_until(
            lambda: public_addresses(client, pool_id) == {"127.0.0.1"}, "the instances' addresses"
        )
        client.worker_pool_client.shutdown_worker_pool_by_id(pool_id)
        wait_until(lambda: running() == [], "the nodes to stop")
        assert not (tmp_path / "leases").exists() or not any((tmp_path / "leases").iterdir())
        client.close()


def test_the_production_plugin_imports_no_emulator() -> None:
    code = (
        "import sys, raydog_backends.yellowdog; "
        "print(sorted(m for m in sys.modules if 'emulat' in m))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"


def test_the_emulated_plugin_runs_the_heads_commands_on_this_machine(yd_env: str) -> None:
    """``compute: yellowdog-emulated`` is the yellowdog backend plus a local command runner."""
    plugin = plugins.load("compute", "yellowdog-emulated", "provider.compute")
    assert issubclass(plugin, YellowDogComputeBackend)
    backend = plugin(make_spec(), cluster_namespace=NAMESPACE)
    runner = backend.command_runner(
        log_prefix="",
        node_id="ydid:task:e0000d:x",
        auth_config={},
        cluster_name=backend.spec.cluster_name,
        process_runner=subprocess,
        use_internal_ip=False,
    )
    assert isinstance(runner, EmulatedTaskRunner) and runner.emulator.url == yd_env


# --- the platform's facts (../shared/YELLOWDOG.md), each shown through the real SDK -----------


def node_of(client: PlatformClient, task_id: str) -> Node:
    node_id = client.work_client.get_task_by_id(task_id).nodeId
    assert node_id is not None
    return client.worker_pool_client.get_node_by_id(node_id)


def test_a_nodes_public_address_is_its_instances_only(client: PlatformClient) -> None:
    """yellowdog-ray 54e2599: ``Node.details.publicIpAddress`` is absent; the instance has it."""
    pool_id = provision(client, "addressed", 2, maxNodes=2)
    search = NodeSearch(workerPoolId=pool_id, statuses=[NodeStatus.RUNNING])
    nodes = wait_until(
        lambda: (
            (found := client.worker_pool_client.get_nodes(search).list_all())
            and len(found) == 2
            and found
        ),
        "two nodes",
    )
    pool = client.worker_pool_client.get_worker_pool_by_id(pool_id)
    requirement_id = pool.computeRequirementId  # type: ignore[attr-defined]
    requirement = client.compute_client.get_compute_requirement_by_id(requirement_id)
    assert (
        requirement.status is ComputeRequirementStatus.RUNNING and requirement.name == "addressed"
    )
    search = InstanceSearch(computeRequirementId=requirement_id, statuses=[InstanceStatus.RUNNING])
    instances = wait_until(
        lambda: (
            (found := client.compute_client.get_instances(search).list_all())
            and len(found) == 2
            and found
        ),
        "their instances to run",
    )
    by_id = {i.id.instanceId: i for i in instances if i.id}
    for node in nodes:
        assert node.details is not None and node.details.publicIpAddress is None
        instance = by_id[node.details.instanceId]  # type: ignore[index]
        assert instance.privateIpAddress == node.details.privateIpAddress
        assert instance.publicIpAddress and instance.publicIpAddress != instance.privateIpAddress


def test_instances_are_listed_while_booting_and_a_source_may_assign_no_public_ip(
    emulator: Emulator, client: PlatformClient
) -> None:
    """``InstanceStatus.PENDING``: an instance is listed before it has addresses, so "none yet"
    is not "none ever"; a source may assign no public IP at all (``assignPublicIp`` defaults
    to false in the SDK's source models)."""
    emulator.platform.config.boot_delay = 1.0
    emulator.platform.config.no_public_ip_templates = ["ydid:crt:private"]

    def instances(pool_id: str) -> list[Instance]:
        pool = client.worker_pool_client.get_worker_pool_by_id(pool_id)
        search = InstanceSearch(computeRequirementId=pool.computeRequirementId)  # type: ignore[attr-defined]
        return client.compute_client.get_instances(search).list_all()

    public = provision(client, "public", 1, maxNodes=1)
    (booting,) = wait_until(lambda: instances(public), "the instance to be listed")
    assert booting.status is InstanceStatus.PENDING
    assert (booting.privateIpAddress, booting.publicIpAddress) == (None, None)
    (running,) = wait_until(
        lambda: [i for i in instances(public) if i.status is InstanceStatus.RUNNING],
        "the instance to run",
    )
    assert running.privateIpAddress and running.publicIpAddress
    private = provision(client, "private", 1, template="ydid:crt:private", maxNodes=1)
    (running,) = wait_until(
        lambda: [i for i in instances(private) if i.status is InstanceStatus.RUNNING],
        "the instance to run",
    )
    assert running.privateIpAddress and running.publicIpAddress is None
    (node,) = client.worker_pool_client.get_nodes(NodeSearch(workerPoolId=private)).list_all()
    assert node.details and node.details.privateIpAddress == running.privateIpAddress


def test_a_namespace_policy_caps_autoscaling_and_templates_tell_their_sources_public_ips(
    emulator: Emulator, client: PlatformClient
) -> None:
    """``NamespacePolicy.autoscalingMaxNodes`` (SDK; yellowdog-cli README, "Namespace
    Policies") caps what the namespace's pools scale to; a static template lists its sources,
    whose templates say whether they assign public IPs (``assignPublicIp``)."""
    emulator.platform.config.namespace_policies = {NAMESPACE: 2}
    emulator.platform.config.no_public_ip_templates = ["ydid:crt:private"]
    policy = client.namespaces_client.get_namespace_policy(NAMESPACE)
    assert policy.autoscalingMaxNodes == 2
    with pytest.raises(InvalidRequestException):
        client.namespaces_client.get_namespace_policy("unrestricted")
    pool_id = provision(client, "capped", 0, maxNodes=5)
    made = client.work_client.add_work_requirement(requirement("capped"))
    tasks = client.work_client.add_tasks_to_task_group_by_id(first_group(made), [bash("x")] * 4)
    ids = [t.id for t in tasks if t.id]
    wait_until(
        lambda: sum(task_status(client, i) is TaskStatus.EXECUTING for i in ids) == 2,
        "two tasks to run",
    )
    time.sleep(0.3)
    nodes = client.worker_pool_client.get_nodes(NodeSearch(workerPoolId=pool_id)).list_all()
    assert len(nodes) == 2, "no more than the namespace's cap"
    for template, assigns in ((TEMPLATE, True), ("ydid:crt:private", False)):
        found = client.compute_client.get_compute_requirement_template_by_id(template)
        (usage,) = found.sources  # type: ignore[attr-defined]
        source = client.compute_client.get_compute_source_template(usage.sourceTemplateId).source
        assert source.assignPublicIp is assigns  # type: ignore[attr-defined]


def test_pool_sizes_are_limited_by_max_nodes(client: PlatformClient) -> None:
    """Every YellowDog client sets maxNodes (yellowdog-ray, yellowdog-cli); 10,000 at most."""
    pools = client.worker_pool_client
    limited = provision(client, "limited", 1, maxNodes=2)
    pools.resize_worker_pool_by_id(limited, 2)
    with pytest.raises(InvalidRequestException, match="cannot grow to 3 nodes: its maxNodes is 2"):
        pools.resize_worker_pool_by_id(limited, 3)
    # Without maxNodes the platform imposes a limit of its own: here, the initial size.
    unset = provision(client, "unset", 1)
    with pytest.raises(InvalidRequestException, match="pool without maxNodes is 1"):
        pools.resize_worker_pool_by_id(unset, 2)
    with pytest.raises(InvalidRequestException, match=r"outside 1\.\.10,000"):
        provision(client, "too-big", 1, maxNodes=10_001)
    with pytest.raises(InvalidRequestException, match="above maxNodes 2"):
        provision(client, "too-many", 3, maxNodes=2)


def test_tasks_queue_on_busy_nodes_unless_preallocation_is_disabled(
    client: PlatformClient,
) -> None:
    """``RunSpecification.disablePreallocation`` (SDK 13.1): without it, a task can be queued on
    a node that runs a never-ending task, and never start there."""
    provision(client, "queues", 1, maxNodes=2)
    queues = first_group(
        client.work_client.add_work_requirement(requirement("queues", disable_preallocation=False))
    )
    waits = first_group(client.work_client.add_work_requirement(requirement("waits")))
    (first,) = client.work_client.add_tasks_to_task_group_by_id(queues, [bash("x")])
    assert first.id
    wait_until(lambda: task_status(client, first.id) is TaskStatus.EXECUTING, "the first task")  # type: ignore[arg-type]
    (patient,) = client.work_client.add_tasks_to_task_group_by_id(waits, [bash("x")])
    (queued,) = client.work_client.add_tasks_to_task_group_by_id(queues, [bash("x")])
    assert patient.id and queued.id
    wait_until(lambda: task_status(client, queued.id) is TaskStatus.ALLOCATED, "pre-allocation")  # type: ignore[arg-type]
    busy = node_of(client, first.id).id
    assert node_of(client, queued.id).id == busy
    # The patient task waits for a node of its own, which the pool grows to give it.
    wait_until(lambda: task_status(client, patient.id) is TaskStatus.EXECUTING, "a new node")  # type: ignore[arg-type]
    assert node_of(client, patient.id).id != busy
    time.sleep(0.3)
    assert task_status(client, queued.id) is TaskStatus.ALLOCATED, "it waits behind the first"
    client.work_client.cancel_task_by_id(first.id, True)
    wait_until(lambda: task_status(client, queued.id) is TaskStatus.EXECUTING, "its turn")  # type: ignore[arg-type]


def test_a_pool_shutdown_takes_time_and_leaves_booting_nodes_to_the_compute_requirement(
    emulator: Emulator, client: PlatformClient
) -> None:
    """yellowdog-ray 0794285: a pool shutdown is not immediate, and a node whose agent never
    registered is stopped only by terminating the pool's compute requirement."""
    control = EmulatorClient(emulator.url)
    emulator.platform.config.node_shutdown_delay = 0.5
    pool_id = provision(client, "shuts", 1, maxNodes=2)
    running = NodeSearch(workerPoolId=pool_id, statuses=[NodeStatus.RUNNING])
    wait_until(lambda: client.worker_pool_client.get_nodes(running).list_all(), "a node")
    control.settings(boot_delay=3600)  # the second node's agent never registers
    client.worker_pool_client.resize_worker_pool_by_id(pool_id, 2)
    wait_until(lambda: len(control.state()["nodes"]) == 2, "a booting node")
    client.worker_pool_client.shutdown_worker_pool_by_id(pool_id)
    assert (
        client.worker_pool_client.get_worker_pool_by_id(pool_id).status is WorkerPoolStatus.SHUTDOWN
    )
    assert len(client.worker_pool_client.get_nodes(running).list_all()) == 1, "still running"
    wait_until(lambda: not client.worker_pool_client.get_nodes(running).list_all(), "the node")

    def instances_live() -> list[bool]:
        (requirement,) = control.live_compute_requirements()
        return [instance["live"] for instance in requirement["instances"]]

    # The stopped node's instance ends; the one that never registered stays.
    wait_until(lambda: instances_live() == [False, True], "the stopped node's instance to end")
    (left,) = control.live_compute_requirements()
    assert [leak.split()[:2] for leak in control.leaks()] == [
        ["compute", "requirement"],
        ["instance", "of"],
    ]
    client.compute_client.terminate_compute_requirement_by_id(left["id"])
    assert control.leaks() == []
    pool = client.worker_pool_client.get_worker_pool_by_id(pool_id)
    assert pool.status is WorkerPoolStatus.TERMINATED


def test_a_work_requirement_holds_at_most_1000_task_groups(client: PlatformClient) -> None:
    """``WorkRequirement.TASK_GROUPS_MAX`` (SDK model)."""
    groups = [
        TaskGroup(name=f"g{n}", runSpecification=RunSpecification(taskTypes=["bash"]))
        for n in range(WorkRequirement.TASK_GROUPS_MAX)
    ]
    made = client.work_client.add_work_requirement(
        WorkRequirement(namespace=NAMESPACE, name="full", taskGroups=groups)
    )
    assert len(made.taskGroups or []) == 1000
    made.taskGroups = [
        *(made.taskGroups or []),
        TaskGroup(name="one-more", runSpecification=RunSpecification(taskTypes=["bash"])),
    ]
    with pytest.raises(InvalidRequestException, match="at most 1000"):
        client.work_client.update_work_requirement(made)


def test_a_retried_add_whose_reply_was_lost_is_refused_as_a_duplicate(
    emulator: Emulator,
) -> None:
    """The SDK retries POSTs on 429/5xx (``platform_client.py``, ``full_jitter_retry.py``): a
    batch whose reply was lost is sent again, and refused because its task names are taken
    (yellowdog-cli ``submit.py``: "Task names must be unique within task group")."""
    retrying = PlatformClient.create(
        ServicesSchema(
            defaultUrl=emulator.url,
            retry=RetryProperties(
                maxAttempts=2,
                initialInterval=timedelta(milliseconds=10),
                maxInterval=timedelta(milliseconds=10),
            ),
        ),
        ApiKey(KEY_ID, SECRET),
    )
    made = retrying.work_client.add_work_requirement(requirement("retried"))
    EmulatorClient(emulator.url).fail(
        r"/work/taskGroups/[^/]+/tasks$", 503, method="POST", nth=1, after_apply=True
    )
    batch = [Task(taskType="bash", taskData="x", name="node-1")]
    with pytest.raises(InvalidRequestException, match="Task names must be unique within task"):
        retrying.work_client.add_tasks_to_task_group_by_id(first_group(made), batch)
    tasks = retrying.work_client.get_tasks(TaskSearch(workRequirementId=made.id)).list_all()
    assert [t.name for t in tasks] == ["node-1"]
    retrying.close()


def test_task_names_are_unique_within_a_group_and_a_batch_holds_at_most_10000(
    client: PlatformClient,
) -> None:
    """yellowdog-cli ``submit.py``: duplicate names are refused, and a batch holds 1-10,000."""
    made = client.work_client.add_work_requirement(requirement("unique"))
    group_id = first_group(made)
    duplicate = pytest.raises(InvalidRequestException, match="Task names must be unique")
    with duplicate:
        client.work_client.add_tasks_to_task_group_by_id(
            group_id, [Task(taskType="bash", name="twice"), Task(taskType="bash", name="twice")]
        )
    client.work_client.add_tasks_to_task_group_by_id(group_id, [Task(taskType="bash", name="a")])
    with duplicate:
        client.work_client.add_tasks_to_task_group_by_id(
            group_id, [Task(taskType="bash", name="b"), Task(taskType="bash", name="a")]
        )
    with pytest.raises(InvalidRequestException, match="at most 10,000"):
        client.work_client.add_tasks_to_task_group_by_id(
            group_id, [Task(taskType="bash") for _ in range(10_001)]
        )
    tasks = client.work_client.get_tasks(TaskSearch(workRequirementId=made.id)).list_all()
    assert [t.name for t in tasks] == ["a"], "a refused batch adds nothing"
    other = client.work_client.add_work_requirement(requirement("other"))
    client.work_client.add_tasks_to_task_group_by_id(
        first_group(other), [Task(taskType="bash", name="a")]
    )


def test_a_429_can_ask_the_client_to_wait(
    emulator: Emulator, client: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 with ``Retry-After`` reaches the caller as requests' HTTPError showing both; the
    SDK's own retry waits that long (urllib3's ``Retry``, under ``full_jitter_retry.py``)."""
    control = EmulatorClient(emulator.url)
    control.fail(r"^/work/requirements$", 429, method="POST", nth=1, retry_after=7)
    with pytest.raises(requests.HTTPError) as refused:
        client.work_client.add_work_requirement(requirement("limited"))
    assert refused.value.response.status_code == 429
    assert refused.value.response.headers["Retry-After"] == "7"
    slept: list[float] = []
    monkeypatch.setattr(urllib3.util.retry.time, "sleep", slept.append)
    retrying = PlatformClient.create(
        ServicesSchema(defaultUrl=emulator.url, retry=RetryProperties(maxAttempts=1)),
        ApiKey(KEY_ID, SECRET),
    )
    control.fail(r"^/work/requirements$", 429, method="POST", nth=1, retry_after=7)
    assert retrying.work_client.add_work_requirement(requirement("waited")).id
    retrying.close()
    assert slept == [7]


def test_a_provisioning_failure_shows_on_the_source_and_the_requirement_is_not_ended(
    emulator: Emulator, client: PlatformClient
) -> None:
    """Quota, wrong template or image: the compute requirement's source is ``ERRORED`` with the
    reason as its ``statusMessage`` and the summaries say ``healthy: false`` (SDK
    ``ComputeSource``, ``*Summary.healthy``); nothing is terminated, the task stays READY, and
    the pool provisions once the cause is gone."""
    control = EmulatorClient(emulator.url)
    control.fail_provisioning("quota exceeded for instance type emulated", template_id=TEMPLATE)
    made = client.work_client.add_work_requirement(requirement("unprovisioned"))
    (task,) = client.work_client.add_tasks_to_task_group_by_id(first_group(made), [bash("x")])
    pool_id = provision(client, "unprovisioned", 1, maxNodes=1)
    requirement_id = client.worker_pool_client.get_worker_pool_by_id(pool_id).computeRequirementId  # type: ignore[attr-defined]

    def errored_source() -> ComputeSource | None:
        compute = client.compute_client.get_compute_requirement_by_id(requirement_id)
        (source,) = compute.provisionStrategy.sources or []
        return source if source.status is ComputeSourceStatus.ERRORED else None

    source = wait_until(errored_source, "the source to be ERRORED")
    assert source.statusMessage == "quota exceeded for instance type emulated"
    compute = client.compute_client.get_compute_requirement_by_id(requirement_id)
    assert compute.status is not ComputeRequirementStatus.TERMINATED
    (summary,) = client.compute_client.get_compute_requirement_summaries(
        ComputeRequirementSummarySearch(namespace=NAMESPACE, name="unprovisioned")
    ).list_all()
    assert summary.healthy is False
    (pool_summary,) = client.worker_pool_client.get_worker_pools(
        WorkerPoolSearch(namespaces=[NAMESPACE], name="unprovisioned")
    ).list_all()
    assert pool_summary.healthy is False and not pool_summary.status.finished  # type: ignore[union-attr]
    assert client.worker_pool_client.get_nodes(NodeSearch(workerPoolId=pool_id)).list_all() == []
    assert task_status(client, task.id) is TaskStatus.READY  # type: ignore[arg-type]
    control.clear_faults()
    wait_until(lambda: task_status(client, task.id) is TaskStatus.EXECUTING, "a node at last")  # type: ignore[arg-type]
    (source,) = (
        client.compute_client.get_compute_requirement_by_id(
            requirement_id
        ).provisionStrategy.sources
        or []
    )
    assert source.status is not ComputeSourceStatus.ERRORED and source.statusMessage is None


def test_a_pool_grows_and_shrinks_with_its_tasks_between_min_and_max_nodes(
    emulator: Emulator, client: PlatformClient
) -> None:
    """ "The platform automatically scales the pool up and down to meet Task demand"
    (yellowdog-cli README, "Worker Pools vs. Compute Requirements"): tasks alone grow a pool,
    up to ``maxNodes``; idle nodes go, down to ``minNodes``."""
    emulator.platform.config.time_scale = 0.005  # a minute becomes 0.3 s
    idle = AutoShutdown(enabled=True, timeout=timedelta(minutes=1))
    pool_id = provision(client, "scales", 0, minNodes=1, maxNodes=3, idleNodeShutdown=idle)
    running = NodeSearch(workerPoolId=pool_id, statuses=[NodeStatus.RUNNING])

    def node_count() -> int:
        return len(client.worker_pool_client.get_nodes(running).list_all())

    wait_until(lambda: node_count() == 1, "minNodes")
    made = client.work_client.add_work_requirement(requirement("scales"))
    tasks = client.work_client.add_tasks_to_task_group_by_id(first_group(made), [bash("x")] * 5)
    ids = [t.id for t in tasks if t.id]
    wait_until(
        lambda: sum(task_status(client, i) is TaskStatus.EXECUTING for i in ids) == 3,
        "three tasks to run",
    )
    time.sleep(0.3)
    assert node_count() == 3, "no more than maxNodes"
    assert [task_status(client, i) for i in ids].count(TaskStatus.READY) == 2
    for task_id in ids:
        client.work_client.cancel_task_by_id(task_id, True)
    wait_until(lambda: node_count() == 1, "the pool to shrink back")
    time.sleep(0.5)
    assert node_count() == 1, "never below minNodes"
    every = NodeSearch(workerPoolId=pool_id)
    booted = len(client.worker_pool_client.get_nodes(every).list_all())
    client.worker_pool_client.resize_worker_pool_by_id(pool_id, 2)  # resizes still work
    wait_until(
        lambda: len(client.worker_pool_client.get_nodes(every).list_all()) == booted + 1,
        "a node for the resize",
    )


def test_a_compute_requirement_ends_itself_at_its_auto_shutdown(
    emulator: Emulator, client: PlatformClient
) -> None:
    """``ComputeRequirementTemplateUsage.autoShutdown`` (SDK 15.9): the platform terminates the
    instances after the timeout, whatever becomes of the client; a disabled one never does."""
    emulator.platform.config.time_scale = 0.005  # the hour below passes in 18 s; 1 min in 0.3 s
    pools = {}
    for name, timeout in (("ends", timedelta(minutes=1)), ("stays", timedelta(hours=1))):
        usage = ComputeRequirementTemplateUsage(
            templateId=TEMPLATE,
            requirementName=name,
            requirementNamespace=NAMESPACE,
            targetInstanceCount=1,
            autoShutdown=AutoShutdown(enabled=True, timeout=timeout),
        )
        properties = ProvisionedWorkerPoolProperties(workerTag="pool-tag", maxNodes=1)
        pools[name] = client.worker_pool_client.provision_worker_pool(usage, properties)
    computes = {
        name: client.compute_client.get_compute_requirement_by_id(pool.computeRequirementId)  # type: ignore[arg-type]
        for name, pool in pools.items()
    }
    assert computes["ends"].autoShutdown == AutoShutdown(True, timedelta(minutes=1))
    assert computes["ends"].autoShutdownTime is not None
    updated = client.compute_client.update_compute_requirement_auto_shutdown(
        computes["stays"].id,  # type: ignore[arg-type]
        AutoShutdown(enabled=False),
    )
    assert updated.autoShutdownTime is None
    wait_until(
        lambda: (
            client.worker_pool_client.get_worker_pool_by_id(pools["ends"].id).status  # type: ignore[arg-type]
            is WorkerPoolStatus.TERMINATED
        ),
        "the auto shutdown",
    )
    ended = client.compute_client.get_compute_requirement_by_id(computes["ends"].id)  # type: ignore[arg-type]
    assert ended.status is ComputeRequirementStatus.TERMINATED
    search = InstanceSearch(computeRequirementId=ended.id)
    assert all(
        i.status is not None and not i.status.alive
        for i in client.compute_client.get_instances(search).list_all()
    )
    stays = client.compute_client.get_compute_requirement_by_id(computes["stays"].id)  # type: ignore[arg-type]
    assert stays.status is not ComputeRequirementStatus.TERMINATED


def test_a_node_can_be_missing_from_one_search(emulator: Emulator, client: PlatformClient) -> None:
    """An inconsistent search result: the node is there, one search does not list it."""
    pool_id = provision(client, "glitches", 2, maxNodes=2)
    search = NodeSearch(workerPoolId=pool_id)

    def listed() -> set[str | None]:
        return {n.id for n in client.worker_pool_client.get_nodes(search).list_all()}

    both = wait_until(lambda: (ids := listed()) and len(ids) == 2 and ids, "two nodes")
    hidden = sorted(both)[0]
    EmulatorClient(emulator.url).hide_node_from_searches(hidden)
    assert listed() == both - {hidden}
    assert client.worker_pool_client.get_node_by_id(hidden).status is NodeStatus.RUNNING  # type: ignore[arg-type]
    assert listed() == both


def test_a_task_can_start_before_its_nodes_setup_has_finished(tmp_path: Path) -> None:
    """YellowDog agent installer README: the agent starts at once, before Python and Ray are
    installed. A task that does not wait finds no ``ray``; one that waits for the setup's
    marker (``$RAYDOG_SETUP_FINISHED``) does."""
    config = EmulatorConfig(
        run_tasks=True, loopback_ips=True, work_dir=str(tmp_path), setup_delay=1.5
    )
    with running_emulator(config) as emulator:
        client = sdk(emulator.url)
        made = client.work_client.add_work_requirement(requirement("sets-up"))
        provision(client, "sets-up", 2, maxNodes=2)
        hasty = bash("#!/bin/bash\ncommand -v ray\n")
        patient = bash(
            '#!/bin/bash\nuntil [ -e "$RAYDOG_SETUP_FINISHED" ]; do sleep 0.1; done\n'
            "command -v ray\n"
        )
        first, second = client.work_client.add_tasks_to_task_group_by_id(
            first_group(made), [hasty, patient]
        )
        wait_until(lambda: task_status(client, first.id) is TaskStatus.FAILED, "no ray")  # type: ignore[arg-type]
        wait_until(lambda: task_status(client, second.id) is TaskStatus.COMPLETED, "ray")  # type: ignore[arg-type]
        client.close()


def test_the_emulated_plugins_tasks_wait_for_their_nodes_setup() -> None:
    """The emulator emulates a node's setup (see ``processes``), so the core puts its wait for
    the setup's marker in front of the emulated plugin's task scripts, as for ``yellowdog``."""
    config = memory_cluster_config(ray_worker_node_task_script="#!/bin/bash\nray start\n")
    config["provider"]["compute"] = {"type": "yellowdog-emulated", "cluster_namespace": NAMESPACE}
    for node_type in config["available_node_types"].values():
        node_type["node_config"] = {"compute_requirement_template": TEMPLATE}
    parsed = config_parsing.parse(config)
    spec = cluster_plugins.cluster_spec(parsed, parsed.tag_store.build(parsed.cluster_name))
    assert SETUP_FINISHED_VARIABLE in spec.worker_script.split("ray start")[0]
