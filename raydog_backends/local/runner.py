"""How Ray runs commands on a local node: on this machine, as if on the node, without SSH.

Ray's updater and CLI (``ray up`` setup and start commands, ``ray exec``, ``ray submit``,
``ray attach``, ``ray rsync-up``/``-down``, ``ray down``) call this instead of its SSH runner.
A command runs with the node's environment (``HOME``, ``RAY_TMPDIR``, ``RAYDOG_*``, the node's
process token), in the node's home folder; its ``PATH`` starts with the cluster's shims, so a
``ray stop`` in it (``ray down`` runs one on the head) stops this node's Ray and nothing else.
"Rsync" is a local copy that keeps file modes (secrets stay 0600), written atomically so a task
script waiting for a file never reads half of it.

``ThisMachineCommandRunner`` does the work for any node that is a process session here; the
``local`` backend's ``LocalCommandRunner`` and the YellowDog emulator's head (see
``raydog_backends.yellowdog_emulator.runner``) only say where the node is.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shlex
import shutil
import socket
import subprocess
import threading
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click
from ray.autoscaler._private.cli_logger import cli_logger
from ray.autoscaler._private.command_runner import is_using_login_shells
from ray.autoscaler._private.subprocess_output_util import (
    ProcessRunnerError,
    does_allow_interactive,
)
from ray.autoscaler.command_runner import CommandRunnerInterface

from raydog_backends.local.backend import DETACH_VARIABLE
from raydog_backends.local.processes import TOKEN_VARIABLE

if TYPE_CHECKING:
    from raydog_backends.local.backend import LocalComputeBackend

# rsync's exit code for a transfer that failed part way; what the SSH runner would report.
COPY_FAILED = 23
NODE_UNREACHABLE = 255


@dataclass(frozen=True)
class NodeHere:
    """A node that is a process session on this machine: where and how its commands run."""

    home: Path
    ip: str
    environment: dict[str, str]


class ThisMachineCommandRunner(CommandRunnerInterface):
    """Runs Ray's commands for a node on this machine; subclasses say where the node is."""

    def __init__(
        self,
        node_id: str,
        *,
        process_runner: ModuleType = subprocess,
        log_prefix: str = "",
    ) -> None:
        self.node_id = node_id
        self.process_runner = process_runner
        self.log_prefix = log_prefix

    @abstractmethod
    def locate(self) -> NodeHere | None:
        """The node if it is running, else None."""

    def run(
        self,
        cmd: str | None = None,
        timeout: int = 120,
        exit_on_fail: bool = False,
        port_forward: Sequence[tuple[int, int]] | tuple[int, int] | None = None,
        with_output: bool = False,
        environment_variables: Mapping[str, object] | None = None,
        run_env: str = "auto",
        ssh_options_override_ssh_key: str = "",
        shutdown_after_run: bool = False,
        silent: bool = False,
    ) -> Any:
        """Run ``cmd`` with bash on the node. With ``with_output``, its stdout as bytes, like
        Ray's SSH runner (callers decode it); otherwise an empty string."""
        node = self._running_node(cmd, exit_on_fail)
        if shutdown_after_run:
            cmd = f"{cmd}; sudo shutdown -h now" if cmd else "sudo shutdown -h now"
        if not cmd:
            cmd = "while true; do sleep 86400; done"
        if environment_variables:
            cmd = _with_exports(cmd, environment_variables)
        quiet = silent and cli_logger.verbosity < 1
        output = subprocess.DEVNULL if quiet else None
        options: dict[str, Any] = {
            "env": node.environment,
            "cwd": node.home,
            "stdin": None if does_allow_interactive() else subprocess.DEVNULL,
        }
        with _forwarding(_pairs(port_forward), node.ip):
            try:
                if with_output:
                    return self.process_runner.check_output(["bash", "-c", cmd], **options)
                self.process_runner.check_call(
                    ["bash", "-c", cmd], stdout=output, stderr=output, **options
                )
            except subprocess.CalledProcessError as exc:
                raise self._failure(cmd, exc.returncode, exit_on_fail) from None
        return ""

    def run_rsync_up(self, source: str, target: str, options: dict[str, Any] | None = None) -> None:
        node = self._running_node(f"copy {source}", False)
        self._copy(source, self._on_node(target, node), options)

    def run_rsync_down(
        self, source: str, target: str, options: dict[str, Any] | None = None
    ) -> None:
        node = self._running_node(f"copy {source}", False)
        self._copy(self._on_node(source, node), target, options)

    def remote_shell_command_str(self) -> str:
        node = self._running_node("a shell", False)
        assignments = " ".join(
            f"{name}={shlex.quote(value)}"
            for name, value in sorted(node.environment.items())
            if os.environ.get(name) != value
        )
        return f"cd {shlex.quote(str(node.home))} && env {assignments} bash\n"

    def run_init(
        self, *, as_head: bool, file_mounts: dict[str, str], sync_run_yet: bool
    ) -> bool | None:
        return None

    # --- internals ----------------------------------------------------------------------

    def _running_node(self, what: str | None, exit_on_fail: bool) -> NodeHere:
        node = self.locate()
        if node is None:
            cli_logger.error("{}local node {} is not running", self.log_prefix, self.node_id)
            raise self._failure(what or "", NODE_UNREACHABLE, exit_on_fail)
        return node

    @staticmethod
    def _on_node(path: str, node: NodeHere) -> str:
        """A path as the node sees it: ``~`` and relative paths are in the node's home."""
        home = str(node.home)
        if path == "~" or path.startswith("~/"):
            return home + path[1:]
        if not path.startswith("/"):
            return f"{home}/{path}"
        return path

    def _copy(self, source: str, target: str, options: Mapping[str, Any] | None) -> None:
        try:
            sync(source, target, options or {})
        except OSError as exc:
            cli_logger.error("{}copy {} -> {} failed: {}", self.log_prefix, source, target, exc)
            raise self._failure(f"copy {source} {target}", COPY_FAILED, False) from None

    def _failure(self, cmd: str, code: int, exit_on_fail: bool) -> Exception:
        """The error Ray's SSH runner raises for a failed command, so Ray's handling applies."""
        if not is_using_login_shells():
            return ProcessRunnerError(
                "Command failed", "ssh_command_failed", code=code, command=cmd
            )
        if exit_on_fail:
            return click.ClickException(f"Command failed:\n\n  {cmd}\n")
        return click.ClickException(
            f"Command failed on local node {self.node_id} (exit code {code})."
        )


class LocalCommandRunner(ThisMachineCommandRunner):
    """A node of the ``local`` backend, found from its record."""

    def __init__(
        self,
        backend: LocalComputeBackend,
        node_id: str,
        *,
        process_runner: ModuleType = subprocess,
        log_prefix: str = "",
    ) -> None:
        super().__init__(node_id, process_runner=process_runner, log_prefix=log_prefix)
        self.backend = backend

    def locate(self) -> NodeHere | None:
        record = self.backend.node_record(self.node_id)
        process = record.process() if record is not None else None
        if record is None or process is None or not process.running():
            return None
        head = record if record.is_head else self.backend.head_record()
        env = self.backend.node_environment(record, head)
        env[TOKEN_VARIABLE] = record.token
        env[DETACH_VARIABLE] = "1"
        # The node's resources are for the Ray the task script starts; Ray's updater passes them
        # itself to the start commands it runs, and a job's own ray.init() must not inherit them.
        env.pop("RAY_OVERRIDE_RESOURCES", None)
        return NodeHere(self.backend.folder.home(record.node_id), record.ip, env)


def _with_exports(cmd: str, variables: Mapping[str, object]) -> str:
    """Ray's convention: each value JSON-encoded, exported in front of the command."""
    exports = "".join(
        f"export {name}={shlex.quote(json.dumps(value, separators=(',', ':')))};"
        for name, value in variables.items()
    )
    return exports + cmd


# --- copying, with rsync's meaning of a trailing slash ------------------------------------


def sync(source: str, target: str, options: Mapping[str, Any]) -> None:
    """Copy like ``rsync -a`` (no ``--delete``): a directory source ending in ``/`` copies its
    contents into ``target``, otherwise the directory itself; ``rsync_exclude`` patterns and
    ``rsync_filter`` files (e.g. ``.gitignore``: exclude lines only) are honoured."""
    src = Path(source)
    if src.is_dir():
        dst = Path(target) if source.endswith("/") else Path(target) / src.name
        excludes = [(PurePosixPath(), p) for p in options.get("rsync_exclude") or []]
        _copy_tree(src, dst, PurePosixPath(), excludes, list(options.get("rsync_filter") or []))
    elif src.exists() or src.is_symlink():
        dst = Path(target)
        if target.endswith("/") or dst.is_dir():
            dst = dst / src.name
        _copy_file(src, dst)
    else:
        raise FileNotFoundError(2, "No such file or directory", source)


Pattern = tuple[PurePosixPath, str]


def _copy_tree(
    src: Path, dst: Path, where: PurePosixPath, patterns: list[Pattern], filter_files: list[str]
) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    patterns = patterns + [
        (where, line.strip())
        for name in filter_files
        if (src / name).is_file()
        for line in (src / name).read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "!"))
    ]
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        relative = where / entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if _excluded(relative, is_dir, patterns):
            continue
        if is_dir:
            _copy_tree(Path(entry.path), dst / entry.name, relative, patterns, filter_files)
        else:
            _copy_file(Path(entry.path), dst / entry.name)
    shutil.copymode(src, dst)


def _excluded(relative: PurePosixPath, is_dir: bool, patterns: list[Pattern]) -> bool:
    for base, pattern in patterns:
        if pattern.endswith("/") and not is_dir:
            continue
        pattern = pattern.rstrip("/")
        if "/" in pattern:  # anchored at the folder the pattern came from
            if base != relative and base not in relative.parents:
                continue
            if fnmatch.fnmatch(str(relative.relative_to(base)), pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatch(relative.name, pattern):
            return True
    return False


def _copy_file(src: Path, dst: Path) -> None:
    """Copy one file or symlink; the new file is never readable by others, even for a moment."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    temporary = dst.with_name(f".{dst.name}.raydog-partial")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    if src.is_symlink():
        temporary.symlink_to(os.readlink(src))
    else:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as source:
            shutil.copyfileobj(source, out)
        shutil.copystat(src, temporary)
    os.replace(temporary, dst)


# --- port forwarding: the node's ports are on its own address ------------------------------


def _pairs(
    port_forward: Sequence[tuple[int, int]] | tuple[int, int] | None,
) -> list[tuple[int, int]]:
    if not port_forward:
        return []
    if isinstance(port_forward, tuple):
        return [(int(port_forward[0]), int(port_forward[1]))]
    return [(int(local), int(remote)) for local, remote in port_forward]


@contextlib.contextmanager
def _forwarding(pairs: list[tuple[int, int]], node_ip: str) -> Iterator[None]:
    """While the command runs, ``localhost:<local>`` reaches ``<node ip>:<remote>``."""
    servers = []
    try:
        for local, remote in pairs:
            server = socket.create_server(("127.0.0.1", local))
            servers.append(server)
            threading.Thread(target=_accept, args=(server, (node_ip, remote)), daemon=True).start()
        yield
    finally:
        for server in servers:
            server.close()


def _accept(server: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _ = server.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
