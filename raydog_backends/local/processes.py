"""Nodes as processes on this machine: run a task script in its own session, find every process
that belongs to it, stop them all; hand out loopback addresses. Linux only (reads ``/proc``).

A node's processes are its session (the task script is started as a session leader) plus every
process that carries the node's token in its environment. The token is needed because processes
leave the session: Ray's raylet puts each worker in a process group of its own, and commands a
command runner runs "on" the node from another process start outside the session altogether.

Reusable by anything that runs task scripts as local processes (the YellowDog emulator too).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from raydog_core.errors import BackendError

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
    _signal(_task_scripts(nodes, skip), signal.SIGTERM)
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


def _task_scripts(nodes: list[NodeProcess], skip: set[int]) -> list[int]:
    """Whom to ask first: each node's task script, and if the script is still a shell, what it
    runs (a shell waiting for a command does not act on SIGTERM before that command ends). A
    node whose script has ended has no one to ask: all its processes are."""
    first: set[int] = set()
    for node in nodes:
        members = _members([node], skip)
        if not node.running():
            first.update(members)
            continue
        first.add(node.pid)
        if _name(node.pid) in SHELLS:
            first.update(
                pid for pid in members if (found := read_stat(pid)) and found.ppid == node.pid
            )
    return [pid for pid in first if pid not in skip]


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _signal(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


# --- addresses and ports ---------------------------------------------------------------------


def listening_sockets() -> set[tuple[str, int]]:
    """``(address, port)`` of every TCP socket listening and UDP socket bound on this machine
    (``0.0.0.0`` and ``::`` stand for every address)."""
    found: set[tuple[str, int]] = set()
    for table, listening_only in (("tcp", True), ("tcp6", True), ("udp", False), ("udp6", False)):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if listening_only and fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            found.add((_decode_proc_address(address), int(port, 16)))
    return found


def bound_addresses() -> set[str]:
    """Addresses some socket listens on or is bound to."""
    return {address for address, _ in listening_sockets()}


def _decode_proc_address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net prints each 32-bit word in host byte order (little-endian here).
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed))
    v6 = ipaddress.IPv6Address(packed)
    return str(v6.ipv4_mapped or v6)


def free_port(host: str = "") -> int:
    """A TCP port nothing listens on (``host`` "": on any address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class LoopbackAddresses:
    """Hands out 127.0.0.2, 127.0.0.3, … one per node, machine-wide.

    An address is leased by a symlink ``<lease_dir>/<ip> -> <owner>``, where the owner is a
    path that exists as long as the node does (its folder): a lease whose owner is gone is
    free again, so a crash leaks nothing. Addresses some socket is bound to are skipped.
    """

    FIRST = int(ipaddress.IPv4Address("127.0.0.2"))
    LAST = int(ipaddress.IPv4Address("127.255.255.254"))

    def __init__(self, lease_dir: Path | None = None) -> None:
        self.lease_dir = lease_dir or Path(tempfile.gettempdir()) / f"raydog-loopback-{os.getuid()}"

    def allocate(self, owner: Path) -> str:
        with self._locked():
            busy = bound_addresses()
            for ip in self._candidates():
                lease = self.lease_dir / ip
                if ip in busy or self._held(lease):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    lease.unlink()
                lease.symlink_to(owner.absolute())
                return ip
        raise BackendError("allocate", "a loopback address", "every 127.x.y.z address is in use")

    def release(self, ip: str, owner: Path) -> None:
        """Give ``ip`` back if ``owner`` holds it."""
        lease = self.lease_dir / ip
        with self._locked(), contextlib.suppress(OSError):
            if Path(os.readlink(lease)) == owner.absolute():
                lease.unlink()

    def _candidates(self) -> Iterator[str]:
        for number in range(self.FIRST, self.LAST + 1):
            if number & 0xFF not in (0, 255):
                yield str(ipaddress.IPv4Address(number))

    @staticmethod
    def _held(lease: Path) -> bool:
        return lease.is_symlink() and lease.exists()

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return folder_lock(self.lease_dir)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder's state, shared by every process on this machine."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
