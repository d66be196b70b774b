"""Ray's commands on an emulated YellowDog node, for the ``yellowdog-emulated`` compute plugin.

When the YellowDog emulator runs tasks as local processes (``--run-tasks --loopback-ips``), the
head "node" is a process session on this machine, so there is no SSH server to reach it. This
runner runs Ray's commands (``ray up``'s file mounts and start commands, ``ray exec``,
``ray submit``, ``ray attach``, ``ray down``) here instead, in the head task's folder with the
task's environment, which the emulator records there. ``ray stop`` in it stops that node's Ray
only, through the shims the emulator puts first on the task's ``PATH``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import ModuleType

from raydog_backends.process_nodes.processes import NodeProcess
from raydog_backends.process_nodes.runner import NodeHere, ThisMachineCommandRunner
from raydog_backends.process_nodes.shims import DETACH_VARIABLE
from raydog_backends.yellowdog_emulator.client import EmulatorClient
from raydog_backends.yellowdog_emulator.processes import ENVIRONMENT_FILE, NODE_FILE

STATE_TIMEOUT_SECONDS = 10.0


class EmulatedTaskRunner(ThisMachineCommandRunner):
    """A node that is a task process of the YellowDog emulator at ``emulator_url``."""

    def __init__(
        self,
        emulator_url: str,
        node_id: str,
        *,
        process_runner: ModuleType = subprocess,
        log_prefix: str = "",
    ) -> None:
        super().__init__(node_id, process_runner=process_runner, log_prefix=log_prefix)
        self.emulator = EmulatorClient(emulator_url, timeout=STATE_TIMEOUT_SECONDS)

    def locate(self) -> NodeHere | None:
        try:
            tasks = self.emulator.state()["tasks"]
        except (OSError, RuntimeError, ValueError):
            return None
        folders = [
            task["work_dir"]
            for task in tasks
            if task["id"] == self.node_id and task["status"] == "EXECUTING" and task["work_dir"]
        ]
        if not folders:
            return None
        folder = Path(folders[0])
        try:
            node = json.loads((folder / NODE_FILE).read_text())
            environment: dict[str, str] = json.loads((folder / ENVIRONMENT_FILE).read_text())
        except (OSError, ValueError):
            return None
        process = NodeProcess.attach(node["pid"], node["start_ticks"], node["token"])
        if not process.running() or "RAYDOG_NODE_IP" not in environment:
            return None
        environment.setdefault("RAYDOG_NODE_ID", self.node_id)
        environment[DETACH_VARIABLE] = "1"
        return NodeHere(folder, environment["RAYDOG_NODE_IP"], environment)
