"""The ``local`` compute backend: a whole Ray cluster on this machine, one process session per node.

Each node gets its own loopback address (127.0.0.2, 127.0.0.3, …), its own home folder and its
own Ray temp folder, and runs the cluster's head or worker task script, as a YellowDog task would.
Node state lives in files, so the client's ``ray up``, the head's autoscaler and ``ray down`` (three
different processes) all see the same nodes::

    <base_dir>/<cluster>/.lock                 serialises launch, describe, terminate
    <base_dir>/<cluster>/nodes/<id>/node.json  pid, token, address, ports of one node
    <base_dir>/<cluster>/nodes/<id>/home/      the node's HOME and working folder
    <base_dir>/<cluster>/logs/<id>.log         the task script's output (kept until shutdown)
    <base_dir>/<cluster>/raydog-shims/         ``ray`` and ``sudo`` as seen on the nodes

``base_dir`` defaults to ``$RAYDOG_HOME/local``. It is not inside the cluster's private folder
(``raydog_core.state.cluster_dir``) because that folder is uploaded to the head.

Environment of every node (task script and commands run through the command runner):
``RAYDOG_CLUSTER_NAME``, ``RAYDOG_NODE_TYPE``, ``RAYDOG_NODE_ID``, ``RAYDOG_NODE_IP``,
``RAY_HEAD_IP``, ``RAYDOG_GCS_PORT`` (the head's Ray port), ``RAYDOG_CLIENT_PORT`` (the head's
Ray client port), ``RAYDOG_DASHBOARD_AGENT_PORT`` (this node's), ``RAY_TMPDIR`` (this node's Ray
temp folder), ``RAY_OVERRIDE_RESOURCES`` (the node type's resources), ``HOME``, and ``RAY_ADDRESS``
(the head's Ray address: ``ray.init()`` and ``ray status`` must not guess, as they would pick any
Ray running on the machine). Ray binds several ports on every address, so nodes sharing a machine
must use these ports, not Ray's defaults.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from raydog_backends.local.processes import (
    LoopbackAddresses,
    NodeProcess,
    folder_lock,
    free_port,
    stop_all,
)
from raydog_core import state
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import (
    ClusterSpec,
    ComputeBackend,
    LaunchRequest,
    NodeInfo,
    NodeState,
)

if TYPE_CHECKING:
    from ray.autoscaler.command_runner import CommandRunnerInterface

BASE_DIR_VARIABLE = "RAYDOG_LOCAL_BASE_DIR"
"""Set on every node, so the provider on the head finds the same nodes as the client."""
NODE_DIR_VARIABLE = "RAYDOG_LOCAL_NODE_DIR"
"""Set on every node: where its ``node.json`` is (the ``ray stop`` shim reads it)."""
DETACH_VARIABLE = "RAYDOG_LOCAL_DETACH_RAY"
"""Set by the command runner: a ``ray start`` there runs in a session of its own, so that Ray's
daemons do not die with the terminal of the ``ray up`` that started them."""
SHIMS_DIR_NAME = "raydog-shims"
HEAD_START_CHECK_SECONDS = 0.5
"""How long a head launch watches its task script for an immediate failure."""
STARTING_GRACE_SECONDS = 60.0
"""A node whose launcher died before recording its pid counts as pending this long."""


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

    def write(self, record: NodeRecord) -> None:
        path = self.node_dir(record.node_id) / "node.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(record)))
        os.replace(temporary, path)


class LocalComputeBackend(ComputeBackend):
    """Nodes are process sessions on this machine (Linux), each on its own loopback address."""

    def __init__(
        self, spec: ClusterSpec, base_dir: str | None = None, grace_seconds: float = 5.0
    ) -> None:
        """Options (the cluster YAML's ``compute`` mapping):

        - ``base_dir``: the folder that holds node folders (absolute, or ``~/...``); default
          ``$RAYDOG_HOME/local``.
        - ``grace_seconds``: how long a node that is stopped gets to end before SIGKILL.
        """
        super().__init__(spec)
        if not sys.platform.startswith("linux"):
            raise ConfigError("provider.compute", "the local backend runs on Linux only")
        if grace_seconds < 0:
            raise ConfigError("grace_seconds", f"must be 0 or more, got {grace_seconds}")
        if "/" in spec.cluster_name or spec.cluster_name in ("", ".", ".."):
            raise ConfigError("cluster_name", f"{spec.cluster_name!r} cannot name a folder")
        inherited = os.environ.get(BASE_DIR_VARIABLE)
        if inherited:
            base = Path(inherited)
        elif base_dir is not None:
            base = Path(base_dir).expanduser()
            if not base.is_absolute():
                raise ConfigError("base_dir", f"must be an absolute path, got {base_dir!r}")
        else:
            base = state.raydog_home() / "local"
        self.base_dir = base
        self.folder = ClusterFolder(base / spec.cluster_name)
        self.grace_seconds = grace_seconds
        self.addresses = LoopbackAddresses()
        self._started: dict[str, NodeProcess] = {}
        self._started_lock = threading.Lock()

    # --- ComputeBackend -----------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> list[str]:
        if request.node_type not in self.spec.node_types:
            raise BackendError(
                "launch", f"node type {request.node_type!r}", "not in available_node_types"
            )
        what = (
            "the head node" if request.is_head else f"{request.count} {request.node_type} node(s)"
        )
        with self.folder.locked():
            records = self.folder.records()
            ended = [r for r in records if self._state(r)[0] is NodeState.TERMINATED]
            self._clean_up(ended)
            head = next((r for r in records if r.is_head and r not in ended), None)
            if request.is_head and head is not None:
                raise BackendError("launch", what, f"head {head.node_id} is already running")
            if not request.is_head and head is None:
                raise BackendError("launch", what, "the cluster has no running head node")
            self._write_shims()
            launched: list[NodeRecord] = []
            try:
                for _ in range(request.count):
                    launched.append(self._start(request, head))
            except (OSError, BackendError) as exc:
                self._stop([record.node_id for record in launched])
                reason = exc.reason if isinstance(exc, BackendError) else str(exc)
                raise BackendError(
                    "launch", what, reason, [record.node_id for record in launched]
                ) from exc
        if request.is_head:
            self._check_head_started(launched[0])
        return [record.node_id for record in launched]

    def describe(self) -> list[NodeInfo]:
        if not self.folder.root.exists():
            return []
        infos = []
        ended = []
        with self.folder.locked():
            for record in self.folder.records():
                node_state, detail = self._state(record)
                if node_state is NodeState.TERMINATED:
                    ended.append(record)
                infos.append(
                    NodeInfo(
                        node_id=record.node_id,
                        node_type=record.node_type,
                        is_head=record.is_head,
                        state=node_state,
                        internal_ip=record.ip,
                        external_ip=record.ip,
                        detail=detail,
                        launch_config=record.launch_config,
                    )
                )
            # A node whose task script ended is gone, as a finished task's machine would be:
            # stop what it left running and free its address and folder.
            self._clean_up(ended)
        return infos

    def terminate(self, node_ids: Collection[str]) -> None:
        if not node_ids or not self.folder.root.exists():
            return
        with self.folder.locked():
            self._stop(list(node_ids))

    def shutdown(self) -> None:
        if not self.folder.root.exists():
            return
        with self.folder.locked():
            self._stop([record.node_id for record in self.folder.records()])
            shutil.rmtree(self.folder.root, ignore_errors=True)

    def command_runner(
        self,
        *,
        log_prefix: str,
        node_id: str,
        auth_config: Mapping[str, Any],
        cluster_name: str,
        process_runner: ModuleType,
        use_internal_ip: bool,
    ) -> CommandRunnerInterface:
        from raydog_backends.local.runner import LocalCommandRunner

        return LocalCommandRunner(
            self, node_id, process_runner=process_runner, log_prefix=log_prefix
        )

    # --- what the command runner needs --------------------------------------------------

    def node_record(self, node_id: str) -> NodeRecord | None:
        return self.folder.record(node_id)

    def head_record(self) -> NodeRecord | None:
        """The cluster's head, the newest one if an old one is still on record."""
        heads = [r for r in self.folder.records() if r.is_head]
        return max(heads, key=lambda r: r.launched_at) if heads else None

    def node_environment(self, record: NodeRecord, head: NodeRecord | None) -> dict[str, str]:
        """Everything a process "on" the node sees: the task script and runner commands alike."""
        env = {name: value for name, value in os.environ.items() if _inherited(name, value)}
        path = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry]
        # The shims first, then the Python (and Ray) this machine runs RayDog with, as a node
        # image would have them.
        env["PATH"] = os.pathsep.join(
            [
                str(self.folder.shims_dir),
                str(Path(sys.executable).parent),
                *(p for p in path if Path(p).name != SHIMS_DIR_NAME),
            ]
        )
        env.update(
            {
                "HOME": str(self.folder.home(record.node_id)),
                "RAY_TMPDIR": record.tmp_dir,
                "RAYDOG_CLUSTER_NAME": self.spec.cluster_name,
                "RAYDOG_NODE_TYPE": record.node_type,
                "RAYDOG_NODE_ID": record.node_id,
                "RAYDOG_NODE_IP": record.ip,
                "RAYDOG_DASHBOARD_AGENT_PORT": str(record.ports["dashboard_agent"]),
                BASE_DIR_VARIABLE: str(self.base_dir),
                NODE_DIR_VARIABLE: str(self.folder.node_dir(record.node_id)),
            }
        )
        if head is not None:
            env["RAY_HEAD_IP"] = head.ip
            env["RAY_ADDRESS"] = f"{head.ip}:{head.ports['gcs']}"
            env["RAYDOG_GCS_PORT"] = str(head.ports["gcs"])
            env["RAYDOG_CLIENT_PORT"] = str(head.ports["client"])
        resources = self.spec.node_types[record.node_type].resources
        if resources:
            env["RAY_OVERRIDE_RESOURCES"] = json.dumps(dict(resources))
        return env

    # --- internals ----------------------------------------------------------------------

    def _start(self, request: LaunchRequest, head: NodeRecord | None) -> NodeRecord:
        safe_type = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node_type)
        node_id = f"{safe_type}-{uuid.uuid4().hex[:8]}"
        node_dir = self.folder.node_dir(node_id)
        self.folder.home(node_id).mkdir(parents=True, mode=0o700)
        ports = {"dashboard_agent": free_port()}
        if request.is_head:
            ports.update(gcs=free_port(), client=free_port())
        digest = hashlib.sha256(str(node_dir).encode()).hexdigest()[:12]
        record = NodeRecord(
            node_id=node_id,
            node_type=request.node_type,
            is_head=request.is_head,
            ip=self.addresses.allocate(node_dir),
            token=uuid.uuid4().hex,
            # Short on purpose: Ray's socket paths under it must stay below 108 bytes.
            tmp_dir=str(Path(tempfile.gettempdir()) / f"raydog-{digest}"),
            launched_at=time.time(),
            ports=ports,
            launch_config=request.launch_config,
        )
        Path(record.tmp_dir).mkdir(mode=0o700, exist_ok=True)
        # Recorded before it starts: even a launcher that dies next leaves a findable node.
        self.folder.write(record)
        script = self.spec.head_script if request.is_head else self.spec.worker_script
        env = self.node_environment(record, record if request.is_head else head)
        process = NodeProcess.start(
            script,
            env=env,
            home=self.folder.home(node_id),
            log_path=self.folder.log_path(node_id),
            token=record.token,
        )
        record.pid, record.start_ticks = process.pid, process.start_ticks
        self.folder.write(record)
        with self._started_lock:
            self._started[node_id] = process
        return record

    def _check_head_started(self, record: NodeRecord) -> None:
        deadline = time.monotonic() + HEAD_START_CHECK_SECONDS
        process = self._process(record)
        while time.monotonic() < deadline:
            if process is None or not process.running():
                code = process.returncode if process is not None else None
                self.terminate([record.node_id])
                raise BackendError(
                    "launch",
                    f"head node {record.node_id}",
                    f"its task script ended at once (exit code {code}); "
                    f"output: {self.folder.log_path(record.node_id)}",
                    [record.node_id],
                )
            time.sleep(0.05)

    def _state(self, record: NodeRecord) -> tuple[NodeState, str]:
        process = self._process(record)
        if process is None:
            if time.time() - record.launched_at < STARTING_GRACE_SECONDS:
                return NodeState.PENDING, "starting"
            return NodeState.TERMINATED, "its launcher never started it"
        if process.running():
            return NodeState.RUNNING, ""
        code = process.returncode
        detail = "task script ended" + (f" with exit code {code}" if code is not None else "")
        return NodeState.TERMINATED, detail

    def _process(self, record: NodeRecord) -> NodeProcess | None:
        with self._started_lock:
            started = self._started.get(record.node_id)
        return started if started is not None else record.process()

    def _stop(self, node_ids: list[str]) -> None:
        self._clean_up([r for r in map(self.folder.record, node_ids) if r is not None])

    def _clean_up(self, records: list[NodeRecord]) -> None:
        """Stop the nodes' processes, then free what they held.

        Workers go first, all within one grace period, then the head: Ray's raylets shut down
        quickly while the head's GCS still answers them, and hang for long after it is gone.
        """
        for group in ([r for r in records if not r.is_head], [r for r in records if r.is_head]):
            processes = [p for p in map(self._process, group) if p is not None]
            if processes:
                stop_all(processes, self.grace_seconds)
        for record in records:
            node_dir = self.folder.node_dir(record.node_id)
            self.addresses.release(record.ip, node_dir)
            shutil.rmtree(node_dir, ignore_errors=True)
            shutil.rmtree(record.tmp_dir, ignore_errors=True)
            with self._started_lock:
                self._started.pop(record.node_id, None)

    def _write_shims(self) -> None:
        write_shims(self.folder.shims_dir)


def write_shims(shims_dir: Path) -> None:
    """``ray`` and ``sudo`` as the nodes see them: ``ray stop`` stops this node's Ray only
    (the real one stops every Ray on the machine) and ``sudo shutdown`` stops this node only."""
    shims_dir.mkdir(parents=True, exist_ok=True)
    python = shlex.quote(sys.executable)
    commands = f"{python} -m raydog_backends.local.node_commands"
    real_ray = _find_program("ray")
    real_sudo = _find_program("sudo")
    run_sudo = (
        f'exec {shlex.quote(real_sudo)} "$@"'
        if real_sudo
        else 'echo "sudo: not available on this local node" >&2; exit 1'
    )
    ray = shlex.quote(real_ray) if real_ray else f"{python} -m ray.scripts.scripts"
    shims = {
        "ray": (
            f'if [ "$1" = stop ]; then shift; exec {commands} stop-ray "$@"; fi\n'
            f'if [ "$1" = start ] && [ -n "${{{DETACH_VARIABLE}:-}}" ] '
            "&& command -v setsid >/dev/null; then\n"
            f'    exec setsid -w {ray} "$@"\nfi\n'
            f'exec {ray} "$@"\n'
        ),
        "sudo": (
            'case "$1" in shutdown|poweroff|halt|reboot) '
            f"exec {commands} shutdown ;; esac\n{run_sudo}\n"
        ),
        "shutdown": f"exec {commands} shutdown\n",
    }
    for name, body in shims.items():
        path = shims_dir / name
        text = f"#!/bin/sh\n# {name} on a RayDog local node (see raydog_backends.local).\n{body}"
        if not path.exists() or path.read_text() != text:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.chmod(0o755)
            os.replace(temporary, path)


def _inherited(name: str, value: str) -> bool:
    """Whether a variable of the launching process reaches a node: not the launcher's identity,
    Ray's per-process settings, or the ``LD_PRELOAD`` Ray gives its own daemons."""
    if name in ("HOME", "PWD", "OLDPWD") or name.startswith(("RAY_", "RAYDOG_")):
        return False
    return not (name == "LD_PRELOAD" and f"{os.sep}ray{os.sep}" in value)


def _find_program(name: str) -> str | None:
    """``name`` next to this Python first (a virtualenv), else on PATH (shims left out)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    path = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if Path(entry).name != SHIMS_DIR_NAME
    )
    return shutil.which(name, path=path)
