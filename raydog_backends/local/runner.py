"""Ray's commands on a node of the ``local`` backend: found from its record, run here.

The work is ``raydog_backends.process_nodes.runner``'s; this only says where the node is and
what environment its commands get (the node's, plus its process token).
"""

from __future__ import annotations

import subprocess
from types import ModuleType

from raydog_backends.local.nodes import ClusterFolder, node_environment
from raydog_backends.process_nodes.processes import TOKEN_VARIABLE
from raydog_backends.process_nodes.runner import NodeHere, ThisMachineCommandRunner
from raydog_backends.process_nodes.shims import DETACH_VARIABLE
from raydog_core.interfaces import ClusterSpec


class LocalCommandRunner(ThisMachineCommandRunner):
    """A node of the ``local`` backend, found from its record."""

    def __init__(
        self,
        spec: ClusterSpec,
        folder: ClusterFolder,
        node_id: str,
        *,
        process_runner: ModuleType = subprocess,
        log_prefix: str = "",
    ) -> None:
        super().__init__(node_id, process_runner=process_runner, log_prefix=log_prefix)
        self.spec = spec
        self.folder = folder

    def locate(self) -> NodeHere | None:
        record = self.folder.record(self.node_id)
        process = record.process() if record is not None else None
        if record is None or process is None or not process.running():
            return None
        head = record if record.is_head else self.folder.head_record()
        env = node_environment(self.spec, self.folder, record, head)
        env[TOKEN_VARIABLE] = record.token
        env[DETACH_VARIABLE] = "1"
        return NodeHere(self.folder.home(record.node_id), record.ip, env)
