"""A node as a process session on this machine: run a task script in its own session, find every
process that belongs to it, stop them all. Linux only (reads ``/proc``).

A node's processes are its session (the task script is started as a session leader) plus every
process that carries the node's token in its environment. The token is needed because processes
leave the session: Ray's raylet puts each worker in a process group of its own, and commands a
command runner runs "on" the node from another process start outside the session altogether.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

TOKEN_VARIABLE = "RAYDOG_PROCESS_TOKEN"
"""Environment variable that marks every process of one node (inherited by its children)."""

TASK_SCRIPT_NAME = ".raydog_task.sh"
SHELLS = frozenset({"bash", "sh", "dash", "zsh"})
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ProcessStat:
    """The fields of ``/proc/<pid>/stat`` that identify a process and its session."""

    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start_ticks: int
    """Start time since boot, in clock ticks: with the pid, it names one process for good."""

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X", "x")


def read_stat(pid: int) -> ProcessStat | None:
    """The process's stat, or None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; it ends at the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcessStat(
        pid=pid,
        state=fields[0].decode(),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        start_ticks=int(fields[19]),
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and has not ended (a zombie has)."""
    stat = read_stat(pid)
    return stat is not None and stat.alive


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_token(pid: int) -> str | None:
    """The ``RAYDOG_PROCESS_TOKEN`` the process was started with, if any."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    prefix = f"{TOKEN_VARIABLE}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def ancestors(pid: int | None = None) -> set[int]:
    """``pid`` (default: this process) and every process above it."""
    found: set[int] = set()
    current: int | None = os.getpid() if pid is None else pid
    while current and current not in found:
        found.add(current)
        stat = read_stat(current)
        current = stat.ppid if stat is not None else None
    return found


class NodeProcess:
    """One node: a bash task script running as a session leader, and everything it started."""

    def __init__(
        self, pid: int, start_ticks: int, token: str, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        self.token = token
        self._popen = popen

    @classmethod
    def start(
        cls,
        script: str,
        *,
        env: Mapping[str, str],
        home: Path,
        log_path: Path,
        token: str | None = None,
    ) -> NodeProcess:
        """Run ``script`` with bash in a new session, with ``cwd`` and ``HOME`` set to ``home``.

        ``env`` is the whole environment (nothing else is inherited); the script's output goes to
        ``log_path``. The script is written to ``home`` first, as a task's script would be.
        """
        token = token or secrets.token_hex(16)
        home.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        script_path = home / TASK_SCRIPT_NAME
        script_path.write_text(script)
        script_path.chmod(0o700)
        full_env = {**env, "HOME": str(home), TOKEN_VARIABLE: token}
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                ["bash", str(script_path)],
                cwd=home,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stat = read_stat(popen.pid)
        # Our unreaped child cannot vanish from /proc, so stat is only None in theory.
        start_ticks = stat.start_ticks if stat is not None else 0
        return cls(popen.pid, start_ticks, token, popen)

    @classmethod
    def attach(cls, pid: int, start_ticks: int, token: str) -> NodeProcess:
        """The same node seen from another process (from a state file)."""
        return cls(pid, start_ticks, token)

    @property
    def pgid(self) -> int:
        return self.pid

    @property
    def returncode(self) -> int | None:
        """The task script's exit code, if it ended and this process started it."""
        if self._popen is None:
            return None
        return self._popen.poll()

    def running(self) -> bool:
        """Whether the task script itself still runs (a node whose script ended is gone)."""
        if self._popen is not None:
            self._popen.poll()
        stat = read_stat(self.pid)
        return stat is not None and stat.start_ticks == self.start_ticks and stat.alive

    def members(self, exclude: Collection[int] = ()) -> list[int]:
        """Pids of every live process of this node (zombies excluded)."""
        return _members([self], set(exclude))

    def stop(self, timeout: float = 10.0, *, exclude: Collection[int] = ()) -> None:
        """SIGTERM every process of the node, then SIGKILL what is left after ``timeout``."""
        stop_all([self], timeout, exclude=exclude)

    def reap(self) -> None:
        """Collect the script's exit status if this process started it."""
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=1.0)


def _members(nodes: Iterable[NodeProcess], exclude: set[int]) -> list[int]:
    nodes = list(nodes)
    sessions: set[int] = set()
    for node in nodes:
        leader = read_stat(node.pid)
        # While a process holds the leader's pid, its session is ours only if it is our leader;
        # once the pid is free, nothing else can have a session with that id.
        if leader is None or leader.start_ticks == node.start_ticks:
            sessions.add(node.pid)
    tokens = {node.token for node in nodes}
    found = []
    for pid in all_pids():
        if pid in exclude:
            continue
        stat = read_stat(pid)
        if stat is None or not stat.alive:
            continue
        if stat.sid in sessions or process_token(pid) in tokens:
            found.append(pid)
    return found


def stop_all(
    nodes: Iterable[NodeProcess], timeout: float, *, exclude: Collection[int] = ()
) -> None:
    """Stop many nodes within one grace period (not one each).

    The task scripts are asked first: one that ends with ``exec ray start --block`` stops Ray's
    processes in Ray's order, in a second or two, where signalling them all at once can leave
    the raylet waiting for a GCS that is gone. After half of ``timeout``, everything left of the
    nodes gets SIGTERM; at ``timeout``, SIGKILL.
    """
    nodes = list(nodes)
    skip = {os.getpid(), *exclude}
    start = time.monotonic()
    ask, kill = _task_scripts(nodes, skip)
    _signal(kill, signal.SIGKILL)
    _signal(ask, signal.SIGTERM)
    while (remaining := _members(nodes, skip)) and time.monotonic() - start < timeout:
        if time.monotonic() - start >= timeout / 2:
            # Processes started while the node was going down get the same request.
            _signal(remaining, signal.SIGTERM)
        time.sleep(_POLL_SECONDS * 2)
    kill_deadline = time.monotonic() + 5.0
    while (remaining := _members(nodes, skip)) and time.monotonic() < kill_deadline:
        _signal(remaining, signal.SIGKILL)
        time.sleep(_POLL_SECONDS)
    for node in nodes:
        node.reap()


def _task_scripts(nodes: list[NodeProcess], skip: set[int]) -> tuple[list[int], list[int]]:
    """Whom to ask first (SIGTERM), and whom to kill at once.

    Asked: each node's task script, and if the script is still a shell, what it runs (a shell
    waiting for a command does not act on SIGTERM before that command ends). A node whose script
    has ended has no one to ask: all its processes are. Killed: a script that is ``ray start
    --block`` on a node whose Ray was stopped already (no raylet left, as after `ray down`'s
    `ray stop`): it has nothing left to stop in order, and on SIGTERM Ray's handler drains the
    node through the GCS, which is gone, for up to ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S``
    (30 s): the grace period would pass waiting. The rest of such a node is asked at once.
    """
    first: set[int] = set()
    kill: list[int] = []
    for node in nodes:
        members = _members([node], skip)
        if not node.running() or _ray_stopped_under(node.pid, members):
            if node.running():
                kill.append(node.pid)
            first.update(pid for pid in members if pid != node.pid)
            continue
        first.add(node.pid)
        if _name(node.pid) in SHELLS:
            first.update(
                pid for pid in members if (found := read_stat(pid)) and found.ppid == node.pid
            )
    return [pid for pid in first if pid not in skip], [pid for pid in kill if pid not in skip]


def _ray_stopped_under(pid: int, members: list[int]) -> bool:
    """Whether ``pid`` is ``ray start --block`` and no raylet runs beside it any more."""
    return pid in blocking_ray_starts(members)


def blocking_ray_starts(members: Collection[int]) -> list[int]:
    """The ``ray start --block`` processes among a node's ``members`` once no raylet runs beside
    them. Ray's own takes its processes ended by SIGTERM (what `ray stop` sends) for a graceful
    stop and goes on blocking, watching nothing; on SIGTERM it would drain the node through a
    GCS that is gone (``_task_scripts``), so what ends one is SIGKILL."""
    if any(_name(member) == "raylet" for member in members):
        return []
    return [pid for pid in members if _is_blocking_ray_start(pid)]


def _is_blocking_ray_start(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "start" in argv and "--block" in argv and any(Path(a).name == "ray" for a in argv)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _signal(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
