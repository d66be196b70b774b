"""The head's tag server is supervised: a server that dies comes back, with its data."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import valkey

from raydog_backends.keyvalue import ValkeyTagStore
from raydog_backends.keyvalue.store import PASSWORD_SECRET, default_port
from raydog_backends.process_nodes.processes import pid_alive
from raydog_core import state
from raydog_core.errors import UnreachableError
from raydog_core.interfaces import Endpoint
from tests.servers import argv_of, free_port, valkey_server_binary, wait_for_port


class Supervised:
    """``python -m raydog_backends.keyvalue.server``: the supervisor and its server."""

    def __init__(self, home: Path, cluster: str, port: int, *extra: str) -> None:
        self.cluster = cluster
        self.port = port
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
        deadline = time.monotonic() + timeout
        while self.log.read_text().count(text) < count:
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def _parent(pid: int) -> int:
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.fixture
def supervise(raydog_home: Path) -> Iterator[Callable[..., Supervised]]:
    started: list[Supervised] = []

    def start(cluster: str, port: int, *extra: str) -> Supervised:
        started.append(Supervised(raydog_home, cluster, port, *extra))
        return started[-1]

    yield start
    for supervised in started:
        supervised.stop()


@pytest.mark.servers
def test_a_killed_server_is_restarted_with_every_tag(
    supervise: Callable[..., Supervised],
) -> None:
    binary = valkey_server_binary()
    password = state.cluster_secret("supervised", PASSWORD_SECRET)
    port = free_port()
    supervised = supervise("supervised", port, "--appendonly", "--server-binary", binary)
    wait_for_port(port, timeout=30)
    store = ValkeyTagStore("supervised", port=port)
    store.connect(Endpoint("127.0.0.1", port))
    expected = {f"node-{i}": {"ray-launch-config": f"hash-{i}"} for i in range(200)}
    store.update(expected)

    first = supervised.server_pid()
    os.kill(first, signal.SIGKILL)
    log = supervised.wait_for_log("running (pid", count=2)
    second = supervised.server_pid()
    assert second != first
    wait_for_port(port, timeout=30)
    assert store.load_all() == expected  # the store's client reconnects by itself
    store.close()

    assert f"valkey-server (pid {first}) was killed by SIGKILL" in log
    assert "restart 1 in 0 s" in log
    for pid in (supervised.process.pid, second):
        assert password not in " ".join(argv_of(pid))
        assert password not in (Path("/proc") / str(pid) / "environ").read_text()
    assert supervised.stop() == 0
    assert not pid_alive(second), "the server outlived its supervisor's SIGTERM"
    assert password not in supervised.log.read_text()
    assert "stopped" in supervised.log.read_text()


def test_a_server_that_keeps_dying_is_restarted_with_growing_delays(
    supervise: Callable[..., Supervised],
) -> None:
    state.cluster_secret("crashing", PASSWORD_SECRET)
    supervised = supervise("crashing", free_port(), "--server-binary", "false")
    log = supervised.wait_for_log("exited with code 1", count=3)
    assert "restart 1 in 0 s" in log
    assert "restart 2 in 1 s" in log
    assert "restart 3 in 2 s" in log
    assert supervised.stop() == 0


@pytest.mark.servers
def test_the_outage_warning_counts_the_writes_it_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line an operator sees when the store goes: how many nodes' writes wait in memory."""
    from raydog_core.tag_cache import TagCache
    from tests.servers import KeyValueServer

    password = state.cluster_secret("outage", PASSWORD_SECRET)
    server = KeyValueServer(valkey_server_binary(), tmp_path / "server", password).start()
    store = ValkeyTagStore("outage", port=server.port, connect_timeout=1, command_timeout=1)
    cache = TagCache(store, lambda: Endpoint("127.0.0.1", server.port), retry_seconds=0.5)
    try:
        cache.update({"n0": {"a": "0"}})
        assert cache.flush()
        server.stop()
        caplog.set_level("WARNING", logger="raydog_core.tag_cache")
        cache.update({f"n{i}": {"a": str(i)} for i in (1, 2, 3)})
        deadline = time.monotonic() + 30
        while "tag writes are held in memory" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert "held in memory (3 node(s))" in caplog.text
    finally:
        cache.close(timeout=1)


def _new_password(cluster: str) -> str:
    """What a `ray up` from another machine does: a new password file for the same cluster."""
    password = secrets.token_urlsafe(32)
    state.write_secret(cluster, PASSWORD_SECRET, password)
    return password


def _tags_with_the_file_password(cluster: str, port: int) -> dict[str, dict[str, str]]:
    """What a client that reads the password file now (as every client does) finds."""
    deadline = time.monotonic() + 30
    while True:
        store = ValkeyTagStore(cluster, port=port, connect_timeout=1, command_timeout=5)
        try:
            store.connect(Endpoint("127.0.0.1", port))
            return store.load_all()
        except UnreachableError:
            assert time.monotonic() < deadline, "the server never took the file's password"
            time.sleep(0.2)
        finally:
            store.close()


@pytest.mark.servers
def test_a_server_killed_after_the_password_file_changed_comes_back_with_the_new_password(
    supervise: Callable[..., Supervised],
) -> None:
    state.cluster_secret("rekeyed", PASSWORD_SECRET)
    port = free_port()
    supervised = supervise(
        "rekeyed", port, "--appendonly", "--server-binary", valkey_server_binary()
    )
    wait_for_port(port, timeout=30)
    store = ValkeyTagStore("rekeyed", port=port)
    store.connect(Endpoint("127.0.0.1", port))
    store.update({"head": {"ray-launch-config": "hash"}})
    store.close()

    first = supervised.server_pid()
    password = _new_password("rekeyed")
    os.kill(first, signal.SIGKILL)
    assert _tags_with_the_file_password("rekeyed", port) == {"head": {"ray-launch-config": "hash"}}
    assert password not in supervised.log.read_text()


@pytest.mark.servers
def test_a_new_password_file_moves_the_running_server_to_it(
    supervise: Callable[..., Supervised],
) -> None:
    """A `ray up` that uploads a new password never locks the cluster's tags away."""
    state.cluster_secret("moved", PASSWORD_SECRET)
    port = free_port()
    supervised = supervise("moved", port, "--appendonly", "--server-binary", valkey_server_binary())
    wait_for_port(port, timeout=30)
    store = ValkeyTagStore("moved", port=port)
    store.connect(Endpoint("127.0.0.1", port))
    store.update({"head": {"ray-launch-config": "hash"}})
    store.close()

    password = _new_password("moved")
    assert _tags_with_the_file_password("moved", port) == {"head": {"ray-launch-config": "hash"}}
    assert "the password file changed: restarting" in supervised.log.read_text()

    state.write_secret("moved", PASSWORD_SECRET, "not a password")
    supervised.wait_for_log("has characters or a length")
    client = valkey.Valkey(host="127.0.0.1", port=port, password=password, socket_timeout=5)
    assert client.ping()  # a bad file is refused: the server keeps the last good password
    client.close()


@pytest.mark.servers
def test_clusters_without_a_port_each_get_their_own_and_serve_side_by_side(
    supervise: Callable[..., Supervised],
) -> None:
    """Two local clusters on one machine: each head's server on a port of its cluster's."""
    ports: dict[str, int] = {}
    while len(ports) < 2:  # fresh names (other runs may share the machine), distinct ports
        cluster = f"side-{uuid.uuid4().hex[:8]}"
        if default_port(cluster) not in ports.values():
            ports[cluster] = default_port(cluster)
    for cluster, port in ports.items():
        state.cluster_secret(cluster, PASSWORD_SECRET)
        assert ValkeyTagStore(cluster).head_port == port
        supervise(cluster, port, "--server-binary", valkey_server_binary())
    for cluster, port in ports.items():
        wait_for_port(port, timeout=30)
        store = ValkeyTagStore(cluster)
        store.connect(Endpoint("127.0.0.1", port))
        store.update({"head": {"cluster": cluster}})
        assert store.load_all() == {"head": {"cluster": cluster}}
        store.close()


@pytest.mark.servers
def test_a_port_another_clusters_server_holds_is_an_error_naming_it_not_a_restart_loop(
    supervise: Callable[..., Supervised],
) -> None:
    port = free_port()
    for cluster in ("first", "second"):
        state.cluster_secret(cluster, PASSWORD_SECRET)
    supervise("first", port, "--server-binary", valkey_server_binary())
    wait_for_port(port, timeout=30)
    second = supervise("second", port, "--server-binary", valkey_server_binary())
    assert second.process.wait(60) == 1
    log = second.log.read_text()
    assert f"provider.tag_store.port {port} is taken on this machine" in log
    assert "cluster 'first'" in log
    assert "restart" not in log
