"""The ``local`` compute backend: a whole Ray cluster on this machine, one process session per node.

Each node gets its own loopback address (127.0.0.2, 127.0.0.3, …), its own home folder and its
own Ray temp folder, and runs the cluster's head or worker task script, as a YellowDog task would.
Node state lives in files (``nodes``), so the client's ``ray up``, the head's autoscaler and
``ray down`` (three different processes) all see the same nodes. Running a node as a process
session, its shims and Ray's command runner for it are ``raydog_backends.process_nodes``'.

``base_dir`` defaults to ``$RAYDOG_HOME/local``. It is not inside the cluster's private folder
(``raydog_core.state.cluster_dir``) because that folder is uploaded to the head.

Environment of every node (task script and commands run through the command runner):
``RAYDOG_CLUSTER_NAME``, ``RAYDOG_NODE_TYPE``, ``RAYDOG_NODE_ID``, ``RAYDOG_NODE_IP``,
``RAY_HEAD_IP``, ``RAYDOG_GCS_PORT`` (the head's Ray port), ``RAYDOG_CLIENT_PORT`` (the head's
Ray client port), ``AUTOSCALER_METRIC_PORT`` (where the head's autoscaler, Ray's monitor, serves
its metrics and the provider's figures), ``RAYDOG_DASHBOARD_AGENT_PORT`` (this node's),
``RAY_TMPDIR`` (this node's Ray
temp folder), ``HOME``, and ``RAY_ADDRESS``
(the head's Ray address: ``ray.init()`` and ``ray status`` must not guess, as they would pick any
Ray running on the machine). Ray binds several ports on every address, so nodes sharing a machine
must use these ports, not Ray's defaults.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from raydog_backends.local.fleet import LocalFleet
from raydog_backends.local.nodes import (
    BASE_DIR_VARIABLE,
    ClusterFolder,
    NodeRecord,
    node_environment,
)
from raydog_backends.process_nodes.addresses import LoopbackAddresses, free_port
from raydog_backends.process_nodes.processes import NodeProcess, stop_all
from raydog_backends.process_nodes.shims import write_shims
from raydog_core import state
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import (
    ClusterSpec,
    ComputeBackend,
    Fleet,
    LaunchRequest,
    NodeInfo,
    NodeState,
    NodeSteps,
)

if TYPE_CHECKING:
    from ray.autoscaler.command_runner import CommandRunnerInterface

HEAD_START_CHECK_SECONDS = 0.5
"""How long a head launch watches its task script for an immediate failure."""
STARTING_GRACE_SECONDS = 60.0
"""A node whose launcher died before recording its pid counts as pending this long."""


def base_folder(base_dir: str | None) -> Path:
    """The folder of node folders: a node's inherited one, else ``base_dir``, else the default."""
    inherited = os.environ.get(BASE_DIR_VARIABLE)
    if inherited:
        return Path(inherited)
    if base_dir is None:
        return state.raydog_home() / "local"
    base = Path(base_dir).expanduser()
    if not base.is_absolute():
        raise ConfigError("base_dir", f"must be an absolute path, got {base_dir!r}")
    return base


class LocalComputeBackend(ComputeBackend):
    """Nodes are process sessions on this machine (Linux), each on its own loopback address."""

    def __init__(
        self, spec: ClusterSpec, base_dir: str | None = None, grace_seconds: float = 5.0
    ) -> None:
        """Options (the cluster YAML's ``compute`` mapping):

        - ``base_dir``: the folder that holds node folders (absolute, or ``~/...``); default
          ``$RAYDOG_HOME/local``.
        - ``grace_seconds``: how long a node that is stopped gets to end before SIGKILL (at
          most 3600).
        """
        super().__init__(spec)
        if not sys.platform.startswith("linux"):
            raise ConfigError("provider.compute", "the local backend runs on Linux only")
        if not 0 <= grace_seconds <= 3600:
            raise ConfigError("grace_seconds", f"must be 0 to 3600 seconds, got {grace_seconds}")
        if "/" in spec.cluster_name or spec.cluster_name in ("", ".", ".."):
            raise ConfigError("cluster_name", f"{spec.cluster_name!r} cannot name a folder")
        self.base_dir = base_folder(base_dir)
        self.folder = ClusterFolder(self.base_dir / spec.cluster_name)
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
            write_shims(self.folder.shims_dir, stop_ends_blocking_start=True)
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
        """What each node's task script is doing; a node whose script ended is reported
        terminated (and stays so) until ``terminate`` or ``shutdown`` stops what it left."""
        if not self.folder.root.exists():
            return []
        infos = []
        with self.folder.locked():
            for record in self.folder.records():
                node_state, detail = self._state(record)
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
                        steps=_steps(record),
                    )
                )
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
        # Here, not at the top: the runner subclasses Ray's, and importing Ray costs most of a
        # second that `raydog validate`, `init` and `node-setup` of a local config never use.
        from raydog_backends.local.runner import LocalCommandRunner

        return LocalCommandRunner(
            self.spec, self.folder, node_id, process_runner=process_runner, log_prefix=log_prefix
        )

    @classmethod
    def fleet(cls, namespace: str | None, options: Mapping[str, Any]) -> Fleet:
        """Every local cluster under the base folder (``options``' ``base_dir``, else the
        default); local clusters have no namespace."""
        base_dir = options.get("base_dir")
        grace = options.get("grace_seconds", 5.0)
        return LocalFleet(
            cls,
            base_folder(str(base_dir) if base_dir is not None else None),
            float(grace) if isinstance(grace, (int, float)) else 5.0,
        )

    def node_record(self, node_id: str) -> NodeRecord | None:
        return self.folder.record(node_id)

    # --- internals ----------------------------------------------------------------------

    def _start(self, request: LaunchRequest, head: NodeRecord | None) -> NodeRecord:
        safe_type = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node_type)
        node_id = f"{safe_type}-{uuid.uuid4().hex[:8]}"
        node_dir = self.folder.node_dir(node_id)
        self.folder.home(node_id).mkdir(parents=True, mode=0o700)
        ports = {"dashboard_agent": free_port()}
        if request.is_head:
            ports.update(gcs=free_port(), client=free_port(), autoscaler_metrics=free_port())
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
        script = self.spec.script(request.node_type, request.is_head)
        env = node_environment(self.spec, self.folder, record, record if request.is_head else head)
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


def _steps(record: NodeRecord) -> NodeSteps:
    """A local node has no machine to wait for: it is up once its task script's process is."""
    started = record.launched_at if record.pid is not None else None
    return NodeSteps(created=record.launched_at, booted=started)
