"""End to end: the autoscaling lifecycle of test_local_cluster.py with ``compute: yellowdog``.

The YellowDog emulator (a process of its own) runs each node's task as a local process session
with its own loopback address (``--run-tasks --loopback-ips``); the backend drives it through the
real YellowDog SDK. There is no SSH server on an emulated node, so Ray's commands for the head go
through the local command runner of the emulator's compute plugin (``compute: yellowdog-emulated``,
examples/yellowdog/emulator).

`ray up` -> `ray get-head-ip`, `ray exec 'ray status'`, `ray attach` -> `ray submit` of a job that
needs more CPUs than the head offers -> the head's autoscaler launches workers as YellowDog tasks
-> the idle workers are removed -> `ray down` -> no live work requirement, pool, node, process,
temp folder or listening socket of the cluster is left.

    .venv/bin/python -m pytest -m e2e tests/e2e/test_yellowdog_emulator_cluster.py -s
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from yellowdog_client.model import TaskStatus

from raydog_backends.process_nodes.addresses import free_port, listening_sockets
from raydog_backends.process_nodes.processes import NodeProcess
from raydog_backends.yellowdog_emulator import EmulatorClient
from raydog_backends.yellowdog_emulator.processes import ENVIRONMENT_FILE, NODE_FILE
from raydog_core.interfaces import NodeInfo, NodeState
from raydog_core.testing.lifecycle import (
    LifecycleResult,
    RayCluster,
    check_tasks_ran_on_workers,
    run_lifecycle,
)
from tests.yellowdog_fixtures import KEY_ID, SECRET, EmulatorProcess, start_emulator_process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="local task processes"),
]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "yellowdog" / "emulator"
TIME_SCALE = "0.05"
"""The backend's idle node (1 min) and pool (10 min) shutdowns become 3 s and 30 s."""
CLEANUP_SECONDS = 60.0
"""How long `ray down`'s cancelled tasks and pools get to be gone (the emulator stops them)."""


@dataclass
class EmulatedCluster(RayCluster):
    """A cluster of examples/yellowdog/emulator, watched through the emulator's own view."""

    emulator_url: str = ""
    task_folders: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.env.update(
            YD_API_URL=self.emulator_url, YD_API_KEY_ID=KEY_ID, YD_API_KEY_SECRET=SECRET
        )
        self.emulator = EmulatorClient(self.emulator_url)

    def write_config(self) -> Path:
        config: dict[str, Any] = yaml.safe_load((EXAMPLE / "cluster.yaml").read_text())
        config["cluster_name"] = self.cluster_name
        config["idle_timeout_minutes"] = self.idle_timeout_minutes
        provider = config["provider"]
        for key in ("ray_head_node_task_script", "ray_worker_node_task_script"):
            provider[key] = "file:" + str(EXAMPLE / provider[key].removeprefix("file:"))
        provider["tag_store"] = {"type": "valkey", "port": free_port()}
        path = self.folder / "cluster.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def nodes(self) -> dict[str, NodeInfo]:
        """Tasks not finished, as Ray nodes; remembers each task's folder to check cleanup."""
        state = self.emulator.state()
        addresses = {node["id"]: node for node in state["nodes"]}
        found = {}
        for task in state["tasks"]:
            if task["work_dir"]:
                self.task_folders[task["id"]] = Path(task["work_dir"])
            if TaskStatus[task["status"]].finished:
                continue
            environment = task["environment"]
            node = addresses.get(task["node_id"] or "", {})
            running = task["status"] == "EXECUTING"
            found[task["id"]] = NodeInfo(
                task["id"],
                environment["RAYDOG_NODE_TYPE"],
                "RAY_HEAD_IP" not in environment,
                NodeState.RUNNING if running else NodeState.PENDING,
                node.get("private_ip"),
                node.get("instance_public_ip"),  # the platform gives it on the instance
                task["status"],
            )
        return found

    def leftovers(self) -> list[str]:
        deadline = time.monotonic() + CLEANUP_SECONDS
        while (found := self._leftovers()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return found

    def _leftovers(self) -> list[str]:
        found = list(self.emulator.leaks())
        found += [f"node {node['id']} ({node['status']})" for node in self.emulator.live_nodes()]
        addresses, ports = set(), set()
        for task_id, folder in self.task_folders.items():
            with contextlib.suppress(OSError, ValueError):
                environment = json.loads((folder / ENVIRONMENT_FILE).read_text())
                addresses.add(environment["RAYDOG_NODE_IP"])
                ports.update(
                    int(environment[name])
                    for name in ("RAYDOG_GCS_PORT", "RAYDOG_CLIENT_PORT")
                    if "RAY_HEAD_IP" not in environment
                )
                ports.add(int(environment["RAYDOG_DASHBOARD_AGENT_PORT"]))
                if Path(environment["RAY_TMPDIR"]).exists():
                    found.append(f"Ray temp folder of {task_id}: {environment['RAY_TMPDIR']}")
            with contextlib.suppress(OSError, ValueError):
                node = json.loads((folder / NODE_FILE).read_text())
                members = NodeProcess.attach(node["pid"], node["start_ticks"], node["token"])
                if pids := members.members():
                    found.append(f"processes of {task_id}: {pids}")
        for address, port in sorted(listening_sockets()):
            if address in addresses or port in ports:
                found.append(f"listening socket {address}:{port}")
        return found

    def destroy(self) -> None:
        """Cancel everything on the emulator, which stops every task process it started."""
        self.emulator.reset()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    work_dir = tmp_path_factory.mktemp("e2e-yellowdog-emulator")
    with pytest.MonkeyPatch.context() as patch:
        # Inherited by the head's autoscaler (a task process of the emulator): shorter ticks.
        patch.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")
        process = start_emulator_process(
            "--run-tasks",
            "--loopback-ips",
            "--work-dir",
            str(work_dir),
            "--time-scale",
            TIME_SCALE,
        )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def cluster(
    emulator: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatedCluster]:
    cluster = EmulatedCluster(
        tmp_path_factory.mktemp("e2e-yellowdog"),
        f"e2e-yd-{uuid.uuid4().hex[:6]}",
        emulator_url=emulator.url,
    )
    try:
        yield cluster
    finally:
        cluster.destroy()
        print(f"\nyellowdog emulator cluster phases ({cluster.cluster_name}):\n{cluster.report()}")


@pytest.fixture(scope="module")
def lifecycle(cluster: EmulatedCluster) -> LifecycleResult:
    return run_lifecycle(cluster)


def test_ray_up_starts_a_head_task_that_ray_exec_and_attach_reach(
    lifecycle: LifecycleResult,
) -> None:
    head = lifecycle.head
    assert head.is_head and head.internal_ip and head.internal_ip.startswith("127.")
    assert "Autoscaler status" in lifecycle.status, lifecycle.status[-2000:]
    assert f"ATTACHED to {head.node_id} at " in lifecycle.attach, lifecycle.attach[-2000:]


def test_ray_get_head_ip_prints_the_heads_address(lifecycle: LifecycleResult) -> None:
    assert lifecycle.get_head_ip.strip().splitlines()[-1] == lifecycle.head.external_ip, (
        lifecycle.get_head_ip[-2000:]
    )


def test_a_job_needing_more_cpus_than_the_head_gets_worker_tasks(
    lifecycle: LifecycleResult,
) -> None:
    check_tasks_ran_on_workers(lifecycle)


def test_idle_workers_are_removed_and_the_head_stays(lifecycle: LifecycleResult) -> None:
    assert lifecycle.workers_during_job, "the autoscaler never launched a worker"
    assert list(lifecycle.nodes_after_idle) == [lifecycle.head.node_id]


def test_ray_down_leaves_nothing_on_the_platform_or_the_machine(
    lifecycle: LifecycleResult,
) -> None:
    assert lifecycle.leftovers == []


def test_ray_down_cancels_every_task_of_the_cluster(
    cluster: EmulatedCluster, lifecycle: LifecycleResult
) -> None:
    tasks = cluster.emulator.state()["tasks"]
    assert tasks, "the emulator ran no task"
    assert [t["id"] for t in tasks if not TaskStatus[t["status"]].finished] == []
