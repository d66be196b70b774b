"""A local cluster's nodes on disk, and the environment each node's processes get.

Node state lives in files, so the client's ``ray up``, the head's autoscaler and ``ray down``
(three different processes) all see the same nodes::

    <base_dir>/<cluster>/.lock                 serialises launch, describe, terminate
    <base_dir>/<cluster>/nodes/<id>/node.json  pid, token, address, ports of one node
    <base_dir>/<cluster>/nodes/<id>/home/      the node's HOME and working folder
    <base_dir>/<cluster>/logs/<id>.log         the task script's output (kept until shutdown)
    <base_dir>/<cluster>/raydog-shims/         ``ray`` and ``sudo`` as seen on the nodes
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from raydog_backends.process_nodes.locks import folder_lock
from raydog_backends.process_nodes.processes import NodeProcess
from raydog_backends.process_nodes.shims import NODE_DIR_VARIABLE, SHIMS_DIR_NAME
from raydog_core.interfaces import ClusterSpec

BASE_DIR_VARIABLE = "RAYDOG_LOCAL_BASE_DIR"
"""Set on every node, so the provider on the head finds the same nodes as the client."""


@dataclass
class NodeRecord:
    """What ``node.json`` holds about one node."""

    node_id: str
    node_type: str
    is_head: bool
    ip: str
    token: str
    tmp_dir: str
    launched_at: float
    ports: dict[str, int] = field(default_factory=dict)
    pid: int | None = None
    start_ticks: int = 0
    launch_config: str = ""
    """Ray's ``ray-launch-config`` tag, kept here so that losing the tag store loses nothing
    Ray needs to judge the node up to date."""

    def process(self) -> NodeProcess | None:
        if self.pid is None:
            return None
        return NodeProcess.attach(self.pid, self.start_ticks, self.token)


class ClusterFolder:
    """One cluster's files; every read-modify-write happens under ``locked()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes_dir = root / "nodes"
        self.logs_dir = root / "logs"
        self.shims_dir = root / SHIMS_DIR_NAME

    def node_dir(self, node_id: str) -> Path:
        return self.nodes_dir / node_id

    def home(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "home"

    def log_path(self, node_id: str) -> Path:
        return self.logs_dir / f"{node_id}.log"

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return folder_lock(self.root)

    def records(self) -> list[NodeRecord]:
        found = []
        for path in sorted(self.nodes_dir.glob("*/node.json")):
            with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
                found.append(NodeRecord(**json.loads(path.read_text())))
        return found

    def record(self, node_id: str) -> NodeRecord | None:
        path = self.node_dir(node_id) / "node.json"
        try:
            return NodeRecord(**json.loads(path.read_text()))
        except (FileNotFoundError, NotADirectoryError, ValueError, TypeError):
            return None

    def head_record(self) -> NodeRecord | None:
        """The cluster's head, the newest one if an old one is still on record."""
        heads = [r for r in self.records() if r.is_head]
        return max(heads, key=lambda r: r.launched_at) if heads else None

    def write(self, record: NodeRecord) -> None:
        path = self.node_dir(record.node_id) / "node.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(record)))
        os.replace(temporary, path)


def node_environment(
    spec: ClusterSpec, folder: ClusterFolder, record: NodeRecord, head: NodeRecord | None
) -> dict[str, str]:
    """Everything a process "on" the node sees: the task script and runner commands alike."""
    env = {name: value for name, value in os.environ.items() if _inherited(name, value)}
    path = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry]
    # The shims first, then the Python (and Ray) this machine runs RayDog with, as a node
    # image would have them.
    env["PATH"] = os.pathsep.join(
        [
            str(folder.shims_dir),
            str(Path(sys.executable).parent),
            *(p for p in path if Path(p).name != SHIMS_DIR_NAME),
        ]
    )
    env.update(
        {
            "HOME": str(folder.home(record.node_id)),
            "RAY_TMPDIR": record.tmp_dir,
            "RAYDOG_CLUSTER_NAME": spec.cluster_name,
            "RAYDOG_NODE_TYPE": record.node_type,
            "RAYDOG_NODE_ID": record.node_id,
            "RAYDOG_NODE_IP": record.ip,
            "RAYDOG_DASHBOARD_AGENT_PORT": str(record.ports["dashboard_agent"]),
            BASE_DIR_VARIABLE: str(folder.root.parent),
            NODE_DIR_VARIABLE: str(folder.node_dir(record.node_id)),
        }
    )
    if head is not None:
        env["RAY_HEAD_IP"] = head.ip
        env["RAY_ADDRESS"] = f"{head.ip}:{head.ports['gcs']}"
        env["RAYDOG_GCS_PORT"] = str(head.ports["gcs"])
        env["RAYDOG_CLIENT_PORT"] = str(head.ports["client"])
        if "autoscaler_metrics" in head.ports:  # heads started before it had one use Ray's
            env["AUTOSCALER_METRIC_PORT"] = str(head.ports["autoscaler_metrics"])
    return env


def _inherited(name: str, value: str) -> bool:
    """Whether a variable of the launching process reaches a node: not the launcher's identity,
    Ray's per-process settings, or the ``LD_PRELOAD`` Ray gives its own daemons."""
    if name in ("HOME", "PWD", "OLDPWD") or name.startswith(("RAY_", "RAYDOG_")):
        return False
    return not (name == "LD_PRELOAD" and f"{os.sep}ray{os.sep}" in value)
