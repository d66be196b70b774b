"""The ``sshtunnel`` transport against a real sshd, carrying tags to real tag-store servers."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raydog_backends.keyvalue import RedisTagStore, ValkeyTagStore
from raydog_backends.keyvalue.store import PASSWORD_SECRET, KeyValueTagStore
from raydog_backends.ssh_tunnel import SSHTunnelTransport
from raydog_core import plugins, state
from raydog_core.errors import ConfigError, UnreachableError
from raydog_core.tag_cache import TagCache
from tests.servers import (
    DelayProxy,
    KeyValueServer,
    SSHServer,
    free_port,
    redis_server_binary,
    silent_listener,
    valkey_server_binary,
)

PASSWORD = "tunnel-test-password-0123456789"
STORES: dict[str, tuple[type[KeyValueTagStore], Callable[[], str]]] = {
    "valkey": (ValkeyTagStore, valkey_server_binary),
    "redis": (RedisTagStore, redis_server_binary),
}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="module", params=sorted(STORES))
def store_and_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[type[KeyValueTagStore], KeyValueServer]]:
    store_class, binary = STORES[request.param]
    server = KeyValueServer(binary(), tmp_path_factory.mktemp(request.param), PASSWORD)
    yield store_class, server.start()
    server.stop()


@pytest.fixture
def transports() -> Iterator[Callable[..., SSHTunnelTransport]]:
    made: list[SSHTunnelTransport] = []

    def make(ssh_port: int, **options: object) -> SSHTunnelTransport:
        made.append(SSHTunnelTransport("tunnelled", ssh_port=ssh_port, **options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for transport in made:
        transport.close()


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.servers
def test_tags_travel_client_tunnel_store(
    sshd: SSHServer,
    store_and_server: tuple[type[KeyValueTagStore], KeyValueServer],
    transports: Callable[..., SSHTunnelTransport],
) -> None:
    store_class, server = store_and_server
    state.write_secret("tunnelled", PASSWORD_SECRET, PASSWORD)
    transport = transports(sshd.port)
    endpoint = transport.open("127.0.0.1", server.port, sshd.auth())
    assert endpoint.host == "127.0.0.1" and endpoint.port != server.port
    assert transport.open("127.0.0.1", server.port, sshd.auth()) == endpoint  # idempotent

    store = store_class("tunnelled")
    store.connect(endpoint)
    store.update({"head": {"ray-node-kind": "head"}, "w1": {"ray-node-kind": "worker"}})
    assert store.load_all() == {
        "head": {"ray-node-kind": "head"},
        "w1": {"ray-node-kind": "worker"},
    }
    store.close()
    direct = server.client()
    assert direct.hgetall("raydog:{tunnelled}:node:head") == {"ray-node-kind": "head"}
    direct.delete(
        "raydog:{tunnelled}:nodes", "raydog:{tunnelled}:node:head", "raydog:{tunnelled}:node:w1"
    )
    direct.close()

    transport.close()
    assert not accepts_connections(endpoint.port)


@pytest.mark.servers
@pytest.mark.waits  # on the store's command timeout; its module's group starts with it
@pytest.mark.parametrize("breakage", ["dropped", "silent"])
def test_next_tick_works_after_the_tunnel_connection_breaks(
    sshd: SSHServer,
    store_and_server: tuple[type[KeyValueTagStore], KeyValueServer],
    transports: Callable[..., SSHTunnelTransport],
    breakage: str,
) -> None:
    """A proxy between the tunnel and sshd drops (or silences) the tunnel's SSH connection."""
    store_class, server = store_and_server
    cluster = f"broken-{breakage}"
    state.write_secret(cluster, PASSWORD_SECRET, PASSWORD)
    with DelayProxy(sshd.port) as proxy:
        transport = transports(proxy.port, connect_timeout=2)
        store = store_class(cluster, command_timeout=2)
        store.connect(transport.open("127.0.0.1", server.port, sshd.auth()))
        store.update({"n1": {"a": "1"}})

        proxy.drop() if breakage == "dropped" else proxy.stall()
        with pytest.raises(UnreachableError):
            store.update({"n2": {"b": "2"}})

        # What the core does on UnreachableError: reopen the transport, reconnect the store.
        store.connect(transport.open("127.0.0.1", server.port, sshd.auth()))
        store.update({"n2": {"b": "2"}})
        assert store.load_all() == {"n1": {"a": "1"}, "n2": {"b": "2"}}
        store.delete(["n1", "n2"])
        store.close()


@pytest.mark.servers
def test_core_tag_cache_recovers_from_a_dropped_tunnel_on_its_own(
    sshd: SSHServer,
    store_and_server: tuple[type[KeyValueTagStore], KeyValueServer],
    transports: Callable[..., SSHTunnelTransport],
) -> None:
    """The provider's tag cache reopens the transport itself: the tick after a drop works."""
    store_class, server = store_and_server
    cluster = f"cache-{store_class.library.name}"
    state.write_secret(cluster, PASSWORD_SECRET, PASSWORD)
    with DelayProxy(sshd.port) as proxy:
        transport = transports(proxy.port, connect_timeout=2)
        cache = TagCache(
            store_class(cluster, command_timeout=2),
            lambda: transport.open("127.0.0.1", server.port, sshd.auth()),
        )
        cache.update({"n1": {"a": "1"}})
        assert cache.refresh(timeout=30)
        assert cache.all() == {"n1": {"a": "1"}}
        proxy.drop()
        cache.update({"n2": {"b": "2"}})
        assert cache.flush(timeout=30)
        assert cache.refresh(timeout=30)
        assert cache.all() == {"n1": {"a": "1"}, "n2": {"b": "2"}}
        cache.delete(["n1", "n2"])
        cache.close()


@pytest.mark.servers
def test_accept_new_records_the_key_then_refuses_a_different_one(
    sshd: SSHServer,
    transports: Callable[..., SSHTunnelTransport],
    raydog_home: Path,
    tmp_path: Path,
) -> None:
    with silent_listener() as port:
        transport = transports(sshd.port)
        transport.open("127.0.0.1", port, sshd.auth())
    known_hosts = raydog_home / "clusters" / "tunnelled" / "known_hosts"
    assert known_hosts.read_text() == sshd.host_public_key_line()
    transport.close()

    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    key_type, key = impostor.with_suffix(".pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key}\n")
    with pytest.raises(UnreachableError) as raised:
        transports(sshd.port).open("127.0.0.1", 16667, sshd.auth())
    assert "host key" in str(raised.value) and str(known_hosts) in str(raised.value)
    assert (raised.value.host, raised.value.port) == ("127.0.0.1", sshd.port)


@pytest.mark.servers
def test_reject_accepts_only_known_keys_and_ignore_accepts_any(
    sshd: SSHServer, transports: Callable[..., SSHTunnelTransport], tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    with silent_listener() as port:
        strict = transports(sshd.port, host_key_policy="reject", known_hosts=str(known_hosts))
        with pytest.raises(UnreachableError, match="not found in known_hosts"):
            strict.open("127.0.0.1", port, sshd.auth())
        assert known_hosts.read_text() == ""

        known_hosts.write_text(sshd.host_public_key_line())
        strict.open("127.0.0.1", port, sshd.auth())

        known_hosts.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 " + "A" * 68 + "\n")
        lax = transports(sshd.port, host_key_policy="ignore", known_hosts=str(known_hosts))
        lax.open("127.0.0.1", port, sshd.auth())


@pytest.mark.servers
def test_nothing_listening_on_the_head_port_is_named_as_such(
    sshd: SSHServer, transports: Callable[..., SSHTunnelTransport]
) -> None:
    port = free_port()
    with pytest.raises(UnreachableError) as raised:
        transports(sshd.port).open("127.0.0.1", port, sshd.auth())
    assert (raised.value.host, raised.value.port) == ("127.0.0.1", port)
    assert "tag store" in str(raised.value)


@pytest.mark.servers
def test_a_refused_key_is_unreachable_naming_user_and_key(
    sshd: SSHServer, transports: Callable[..., SSHTunnelTransport], tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(UnreachableError) as raised:
        transports(sshd.port).open(
            "127.0.0.1", 1, {"ssh_user": sshd.user, "ssh_private_key": str(stranger)}
        )
    assert sshd.user in str(raised.value) and str(stranger) in str(raised.value)


@pytest.mark.timeout(60)
def test_closed_ssh_port_is_unreachable(
    transports: Callable[..., SSHTunnelTransport], tmp_path: Path
) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    with pytest.raises(UnreachableError) as raised:
        transports(port, connect_timeout=2).open(
            "127.0.0.1", 16667, {"ssh_user": "u", "ssh_private_key": str(key)}
        )
    assert (raised.value.host, raised.value.port) == ("127.0.0.1", port)


@pytest.mark.timeout(60)
def test_silent_ssh_server_is_unreachable_within_the_timeout(
    transports: Callable[..., SSHTunnelTransport], tmp_path: Path
) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with silent_listener() as port, pytest.raises(UnreachableError) as raised:
        transports(port, connect_timeout=1).open(
            "127.0.0.1", 16667, {"ssh_user": "u", "ssh_private_key": str(key)}
        )
    assert (raised.value.host, raised.value.port) == ("127.0.0.1", port)


def test_missing_auth_is_a_config_error(
    transports: Callable[..., SSHTunnelTransport], tmp_path: Path
) -> None:
    transport = transports(22)
    with pytest.raises(ConfigError) as raised:
        transport.open("127.0.0.1", 16667, {"ssh_private_key": "~/.ssh/id_ed25519"})
    assert raised.value.key_path == "auth.ssh_user"
    with pytest.raises(ConfigError) as raised:
        transport.open(
            "127.0.0.1", 16667, {"ssh_user": "u", "ssh_private_key": str(tmp_path / "no")}
        )
    assert raised.value.key_path == "auth.ssh_private_key"


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError) as raised:
        SSHTunnelTransport("c", host_key_policy="trust-me")  # type: ignore[arg-type]
    assert raised.value.key_path == "host_key_policy"
    assert "accept-new" in raised.value.choices
    with pytest.raises(ConfigError) as raised:
        SSHTunnelTransport("c", ssh_port=0)
    assert raised.value.key_path == "ssh_port"
    with pytest.raises(ConfigError) as raised:
        SSHTunnelTransport("c", connect_timeout=0)
    assert raised.value.key_path == "connect_timeout"
    paths = {"": "provider.transport", "host_key_policy": "provider.transport.host_key_policy"}
    with pytest.raises(ConfigError, match=r"provider\.transport\.host_key_policy: expected one of"):
        plugins.construct(SSHTunnelTransport, ("c",), {"host_key_policy": "yes"}, paths)


def test_private_key_path_expands_the_home_folder(
    transports: Callable[..., SSHTunnelTransport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError) as raised:
        transports(22).open(
            "127.0.0.1", 16667, {"ssh_user": "u", "ssh_private_key": "~/id_missing"}
        )
    assert str(tmp_path / "id_missing") in str(raised.value)
