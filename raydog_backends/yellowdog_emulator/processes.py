"""Node processes: task scripts as real local processes, and what a node "has installed".

With ``run_tasks`` each task's bash script runs as a process session in its own folder. With
``loopback_ips`` too, each node is a Ray node sharing this machine, as the ``local`` backend's
nodes are: its own address (``RAYDOG_NODE_IP``), Ray temp folder (``RAY_TMPDIR``) and dashboard
agent port, the Ray ports of its cluster (``RAYDOG_GCS_PORT``, ``RAYDOG_CLIENT_PORT`` and the
autoscaler's metrics port ``AUTOSCALER_METRIC_PORT``: one set per work requirement, as Ray binds
them on every address), ``RAY_ADDRESS``, and the
``ray``/``sudo`` shims that scope ``ray stop`` to the node. A task's folder holds ``node.json``
and ``environment.json`` (0600), for the shims and for the emulator's command runner.

A node's setup is emulated: the agent registers (and takes tasks) at once, and Python and Ray
appear in the node's ``bin`` folder, first on its tasks' ``PATH``, only ``setup_delay`` seconds
later, when the setup-finished marker ``raydog node-setup`` would write (``RAYDOG_SETUP_FINISHED``,
in the node's folder) appears too. A task that does not wait for its node's setup finds no
``ray``, as on YellowDog (the agent installer starts the agent at once: agent installer README).
The node's userdata itself is kept, not run: it would install software on this machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from yellowdog_client.model import Node

from raydog_backends.process_nodes.addresses import LoopbackAddresses, free_port
from raydog_backends.process_nodes.processes import TOKEN_VARIABLE, NodeProcess, stop_all
from raydog_backends.process_nodes.shims import NODE_DIR_VARIABLE, write_shims
from raydog_backends.yellowdog_emulator.records import EmulatorConfig, NodeRecord, TaskRecord
from raydog_core import node_setup

NOT_INHERITED = ("HOME", "PWD", "OLDPWD")
NOT_INHERITED_PREFIXES = ("RAY_", "RAYDOG_", "YD_API_")
"""What a local node does not get from the emulator's environment: the identity, Ray settings
and YellowDog key of whoever started the emulator (a real node has none of them)."""
NODE_FILE = "node.json"
ENVIRONMENT_FILE = "environment.json"
SETUP_FINISHED_VARIABLE = "RAYDOG_SETUP_FINISHED"
"""Where ``raydog node-setup``'s marker goes on a machine that runs several nodes."""
SETUP_FINISHED_FILE = "setup-finished"
AGENT_INSTALLER = "yd-agent-installer"
"""What a setup that installs the YellowDog agent runs (github yellowdog/resources,
``agent-install/linux/yd-agent-installer.sh``)."""


class NodeProcesses:
    """Starts and stops task processes; owns the scratch folder and the loopback addresses."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._loopback = LoopbackAddresses()
        self._scratch: Path | None = None
        self._stopping: list[NodeProcess] = []
        self._ray_ports: dict[str, tuple[int, int, int]] = {}
        self._ray_tmp_dirs: list[Path] = []

    # --- a node's place on this machine ---------------------------------------------------

    def lease_address(self, node: NodeRecord) -> str:
        """A loopback address of its own for a node (released when the node ends)."""
        lease = self.work_root() / "leases" / _short(node.id)
        lease.mkdir(parents=True, exist_ok=True)
        node.lease = lease
        return self._loopback.allocate(lease)

    def release_address(self, node: NodeRecord) -> None:
        if node.lease is not None:
            self._loopback.release(node.private_ip, node.lease)
            shutil.rmtree(node.lease, ignore_errors=True)
            node.lease = None

    def finish_setup(self, node: NodeRecord, userdata: str | None) -> None:
        """The node's setup has installed Python and Ray, and written RayDog's marker if it is
        a setup that writes one (``leaves_marker``)."""
        node.setup_done = True
        if not (self.config.run_tasks and self.config.loopback_ips):
            return
        folder = self.node_folder(node)
        bin_dir = folder / "bin"
        write_shims(bin_dir)
        for program in Path(sys.executable).parent.iterdir():
            installed = bin_dir / program.name
            if program.is_file() and os.access(program, os.X_OK) and not installed.exists():
                installed.write_text(f'#!/bin/sh\nexec {shlex.quote(str(program))} "$@"\n')
                installed.chmod(0o755)
        if leaves_marker(userdata):
            (folder / SETUP_FINISHED_FILE).write_text("finished (emulated setup)\n")

    def node_folder(self, node: NodeRecord) -> Path:
        if node.folder is None:
            node.folder = self.work_root() / "nodes" / _short(node.id)
            (node.folder / "bin").mkdir(parents=True, exist_ok=True)
        return node.folder

    # --- task processes -------------------------------------------------------------------

    def start(self, task: TaskRecord, node: NodeRecord) -> None:
        folder = self.work_root() / "tasks" / _short(task.id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "taskdata.txt").write_text(task.task.taskData or "")
        local_node = self.config.loopback_ips
        environment = {
            **(_node_inheritance() if local_node else os.environ),
            **_agent_environment(task, node.node, folder),
            **(task.task.environment or {}),
        }
        if local_node:
            environment.update(self._local_node_environment(task, node, folder))
        command = shlex.join(["exec", "bash", *(task.task.arguments or [])])
        task.work_dir = folder
        task.process = process = NodeProcess.start(
            command, env=environment, home=folder, log_path=folder / "output.log"
        )
        if local_node:
            node_file = {
                "node_id": task.id,
                "pid": process.pid,
                "start_ticks": process.start_ticks,
                "token": process.token,
            }
            full = {**environment, "HOME": str(folder), TOKEN_VARIABLE: process.token}
            _write_private(folder / NODE_FILE, node_file)
            _write_private(folder / ENVIRONMENT_FILE, full)

    def _local_node_environment(
        self, task: TaskRecord, node: NodeRecord, folder: Path
    ) -> dict[str, str]:
        """What a Ray node sharing this machine needs (see the module docstring)."""
        ip = node.private_ip
        gcs, client, metrics = self._ray_ports.setdefault(
            task.requirement_id, (free_port(), free_port(), free_port())
        )
        # Short on purpose: Ray's socket paths under it must stay below 108 bytes.
        tmp = Path(tempfile.mkdtemp(prefix="raydog-yd-"))
        task.ray_tmp_dir = tmp
        self._ray_tmp_dirs.append(tmp)
        node_folder = self.node_folder(node)
        head_ip = (task.task.environment or {}).get("RAY_HEAD_IP") or ip
        return {
            "PATH": os.pathsep.join([str(node_folder / "bin"), _path_without_this_python()]),
            "RAYDOG_NODE_IP": ip,
            "RAY_TMPDIR": str(tmp),
            "RAYDOG_DASHBOARD_AGENT_PORT": str(free_port()),
            "RAYDOG_GCS_PORT": str(gcs),
            "RAYDOG_CLIENT_PORT": str(client),
            "AUTOSCALER_METRIC_PORT": str(metrics),
            "RAY_ADDRESS": f"{head_ip}:{gcs}",
            SETUP_FINISHED_VARIABLE: str(node_folder / SETUP_FINISHED_FILE),
            NODE_DIR_VARIABLE: str(folder),
        }

    def stop_later(self, task: TaskRecord) -> None:
        """Stop a finished task's process in the background (SIGTERM, then SIGKILL)."""
        if task.process is None:
            return
        process, task.process = task.process, None
        threading.Thread(
            target=_stop_node,
            args=(process, self.config.stop_grace_seconds, task.ray_tmp_dir),
            daemon=True,
        ).start()
        self._stopping.append(process)

    def take_all(self, tasks: list[TaskRecord]) -> tuple[list[NodeProcess], list[Path]]:
        """Every process (``tasks``' and those stopping) and Ray temp folder, to stop with
        :meth:`stop_all` outside the platform's lock."""
        running = [t.process for t in tasks if t.process is not None]
        for task in tasks:
            task.process = None
        stopping, self._stopping = self._stopping + running, []
        tmp_dirs, self._ray_tmp_dirs = self._ray_tmp_dirs, []
        return stopping, tmp_dirs

    def stop_all(self, processes: list[NodeProcess], tmp_dirs: list[Path]) -> None:
        """Stop them and wait; remove the Ray temp folders."""
        if processes:
            stop_all(processes, self.config.stop_grace_seconds)
        for tmp in tmp_dirs:
            shutil.rmtree(tmp, ignore_errors=True)

    def remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def work_root(self) -> Path:
        if self.config.work_dir is not None:
            root = Path(self.config.work_dir)
            root.mkdir(parents=True, exist_ok=True)
            return root
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="yellowdog-emulator-"))
        return self._scratch


def leaves_marker(userdata: str | None) -> bool:
    """Whether a node's setup leaves RayDog's setup-finished marker. A whole setup in the
    userdata (one that installs the YellowDog agent, as yellowdog-ray's example setup
    ``examples/autoscaler/scripts/example-node-setup.sh`` and ``raydog node-setup``'s do) leaves
    it only if it writes it (``node_setup.is_raydog_setup``); otherwise the image was prepared
    with RayDog's setup, which left it."""
    if userdata is None or AGENT_INSTALLER not in userdata:
        return True
    return node_setup.is_raydog_setup(userdata)


def _short(ydid: str) -> str:
    return ydid.rsplit(":", 1)[-1]


def _agent_environment(task: TaskRecord, node: Node, folder: Path) -> dict[str, str]:
    """What the YellowDog agent gives every task."""
    details = node.details
    return {
        "YD_TASK_ID": task.id,
        "YD_TASK_GROUP_ID": task.group_id,
        "YD_WORK_REQUIREMENT_ID": task.requirement_id,
        "YD_NODE_ID": node.id or "",
        "YD_WORKER_ID": task.task.workerId or "",
        "YD_INSTANCE_ID": details.instanceId or "" if details else "",
        "YD_PROVIDER": "EMULATED",
        "YD_REGION": "emulated",
        "YD_INSTANCE_TYPE": "emulated",
        "YD_AGENT_DATA": str(folder),
        "YD_AGENT_HOME": str(folder),
    }


def _node_inheritance() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name not in NOT_INHERITED and not name.startswith(NOT_INHERITED_PREFIXES)
    }


def _path_without_this_python() -> str:
    """This machine's ``PATH`` without the emulator's own Python: a node has only what its
    setup installed (its ``bin``), and the system's tools."""
    own = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(part for part in parts if part and part != own)


def _write_private(path: Path, value: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(value, out)


def _stop_node(process: NodeProcess, grace: float, ray_tmp_dir: Path | None) -> None:
    process.stop(grace)
    if ray_tmp_dir is not None:
        shutil.rmtree(ray_tmp_dir, ignore_errors=True)
