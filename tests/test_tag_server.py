"""The head's tag server is supervised: a server that dies comes back, with its data."""

from __future__ import annotations

import os
import secrets
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import valkey

from raydog_backends.keyvalue import ValkeyTagStore
from raydog_backends.keyvalue.store import PASSWORD_SECRET, default_port
from raydog_backends.process_nodes.processes import pid_alive
from raydog_core import state
from raydog_core.errors import UnreachableError
from raydog_core.interfaces import Endpoint
from tests.servers import (
    TagServerProcess,
    argv_of,
    connected_store,
    free_port,
    valkey_server_binary,
    wait_for_port,
)


@pytest.mark.servers
def test_a_killed_server_is_restarted_with_every_tag(
    start_tag_server: Callable[..., TagServerProcess],
) -> None:
    binary = valkey_server_binary()
    password = state.cluster_secret("supervised", PASSWORD_SECRET)
    port = free_port()
    supervised = start_tag_server("supervised", port, "--appendonly", "--server-binary", binary)
    wait_for_port(port, timeout=30)
    store = connected_store("supervised", port)
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
    start_tag_server: Callable[..., TagServerProcess],
) -> None:
    state.cluster_secret("crashing", PASSWORD_SECRET)
    supervised = start_tag_server("crashing", free_port(), "--server-binary", "false")
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


HEAD_TAGS = {"head": {"ray-launch-config": "hash"}}


def _holding_head_tags(
    start_tag_server: Callable[..., TagServerProcess], cluster: str
) -> TagServerProcess:
    """The supervised server of ``cluster`` (append-only) once it holds ``HEAD_TAGS``."""
    state.cluster_secret(cluster, PASSWORD_SECRET)
    port = free_port()
    supervised = start_tag_server(
        cluster, port, "--appendonly", "--server-binary", valkey_server_binary()
    )
    wait_for_port(port, timeout=30)
    store = connected_store(cluster, port)
    store.update(HEAD_TAGS)
    store.close()
    return supervised


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
    start_tag_server: Callable[..., TagServerProcess],
) -> None:
    supervised = _holding_head_tags(start_tag_server, "rekeyed")
    port = supervised.port

    first = supervised.server_pid()
    password = _new_password("rekeyed")
    os.kill(first, signal.SIGKILL)
    assert _tags_with_the_file_password("rekeyed", port) == HEAD_TAGS
    assert password not in supervised.log.read_text()


@pytest.mark.servers
def test_a_new_password_file_moves_the_running_server_to_it(
    start_tag_server: Callable[..., TagServerProcess],
) -> None:
    """A `ray up` that uploads a new password never locks the cluster's tags away."""
    supervised = _holding_head_tags(start_tag_server, "moved")
    port = supervised.port

    password = _new_password("moved")
    assert _tags_with_the_file_password("moved", port) == HEAD_TAGS
    assert "the password file changed: restarting" in supervised.log.read_text()

    state.write_secret("moved", PASSWORD_SECRET, "not a password")
    supervised.wait_for_log("has characters or a length")
    client = valkey.Valkey(host="127.0.0.1", port=port, password=password, socket_timeout=5)
    assert client.ping()  # a bad file is refused: the server keeps the last good password
    client.close()


@pytest.mark.servers
def test_clusters_without_a_port_each_get_their_own_and_serve_side_by_side(
    start_tag_server: Callable[..., TagServerProcess],
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
        start_tag_server(cluster, port, "--server-binary", valkey_server_binary())
    for cluster, port in ports.items():
        wait_for_port(port, timeout=30)
        store = connected_store(cluster, port)
        store.update({"head": {"cluster": cluster}})
        assert store.load_all() == {"head": {"cluster": cluster}}
        store.close()


@pytest.mark.servers
def test_a_port_another_clusters_server_holds_is_an_error_naming_it_not_a_restart_loop(
    start_tag_server: Callable[..., TagServerProcess],
) -> None:
    port = free_port()
    for cluster in ("first", "second"):
        state.cluster_secret(cluster, PASSWORD_SECRET)
    start_tag_server("first", port, "--server-binary", valkey_server_binary())
    wait_for_port(port, timeout=30)
    second = start_tag_server("second", port, "--server-binary", valkey_server_binary())
    assert second.process.wait(60) == 1
    log = second.log.read_text()
    assert f"provider.tag_store.port {port} is taken on this machine" in log
    assert "cluster 'first'" in log
    assert "restart" not in log
