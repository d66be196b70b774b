"""A Ray cluster on the YellowDog emulator (``--run-tasks --loopback-ips``), watched through the
emulator's own view: shared by the emulator's end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from yellowdog_client.model import TaskStatus

from raydog_backends.process_nodes.addresses import (
    LoopbackAddresses,
    free_port,
    listening_sockets,
)
from raydog_backends.process_nodes.processes import NodeProcess
from raydog_backends.yellowdog_emulator import EmulatorClient
from raydog_backends.yellowdog_emulator.processes import ENVIRONMENT_FILE, NODE_FILE
from raydog_core.interfaces import NodeInfo, NodeState
from raydog_core.testing.lifecycle import RayCluster
from tests.yellowdog_fixtures import KEY_ID, SECRET, EmulatorProcess, start_emulator_process

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "yellowdog" / "emulator"
CLEANUP_SECONDS = 60.0
"""How long `ray down`'s cancelled tasks and pools get to be gone (the emulator stops them)."""
TIME_SCALE = "0.05"
"""The backend's idle node (1 min) and pool (10 min) shutdowns become 3 s and 30 s."""
LIFETIME_HOURS = 100.0
"""``cluster_lifetime_hours`` of these clusters: the emulator scales every platform timeout, a
task's and a compute requirement's lifetime too, so the example's 1 h would end the head's task
after 3 minutes, in the middle of a test on a loaded machine; 100 h is 5 hours at TIME_SCALE."""


@contextlib.contextmanager
def emulator_running_tasks(
    work_dir: Path, *arguments: str, time_scale: str = TIME_SCALE
) -> Iterator[EmulatorProcess]:
    """The emulator as a process of its own that runs each node's task as a local process with
    its own loopback address, in ``work_dir``; stopped (with every task process) on exit."""
    with pytest.MonkeyPatch.context() as patch:
        # Inherited by the head's autoscaler (a task process of the emulator): shorter ticks,
        # and 2 s, not 30, for a worker's raylet to report once Ray sees the worker up to date.
        # A worker's Ray joins later than that here (as on YellowDog its task starts before
        # its setup ends), so workers that Ray's liveness check judged would never join.
        patch.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")
        patch.setenv("AUTOSCALER_HEARTBEAT_TIMEOUT_S", "2")
        process = start_emulator_process(
            "--run-tasks",
            "--loopback-ips",
            "--work-dir",
            str(work_dir),
            "--time-scale",
            time_scale,
            *arguments,
        )
    try:
        yield process
    finally:
        process.stop()


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
        config["provider"]["cluster_lifetime_hours"] = LIFETIME_HOURS
        config["provider"]["tag_store"] = {"type": "valkey", "port": free_port()}
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
        # An address given back may already be leased to a node of another cluster on this
        # machine (tests run side by side): what listens there is that node's. The emulator
        # keeps its nodes' leases beside their task folders.
        emulator_folders = {folder.parents[1] for folder in self.task_folders.values()}
        loopback = LoopbackAddresses()
        for address, port in sorted(listening_sockets()):
            holder = loopback.holder(address)
            if holder is not None and not any(map(holder.is_relative_to, emulator_folders)):
                continue
            if address in addresses or port in ports:
                found.append(f"listening socket {address}:{port}")
        return found

    def destroy(self) -> None:
        """Cancel everything on the emulator, which stops every task process it started."""
        self.emulator.reset()
