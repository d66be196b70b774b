"""The ``valkey`` and ``redis`` tag stores against real servers, and the head's server launcher."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import valkey

from raydog_backends.keyvalue import RedisTagStore, ValkeyTagStore
from raydog_backends.keyvalue.store import PASSWORD_SECRET, KeyValueTagStore
from raydog_core import plugins, state
from raydog_core.errors import ConfigError, RayDogError, UnreachableError
from raydog_core.interfaces import Endpoint, TagStore
from raydog_core.testing import TagStoreContract
from tests.servers import (
    DelayProxy,
    KeyValueServer,
    TagServerProcess,
    argv_of,
    connected_store,
    dataset_loaded,
    free_port,
    redis_server_binary,
    silent_listener,
    valkey_server_binary,
    wait_for_port,
)
from tests.tag_store_checks import check_tombstones_are_bounded
from tests.waiting import wait_until

STORES: dict[str, type[KeyValueTagStore]] = {"valkey": ValkeyTagStore, "redis": RedisTagStore}
SERVERS: dict[str, Callable[[], str]] = {
    "valkey-server": valkey_server_binary,
    "redis-server": redis_server_binary,
}
PASSWORD = "test-password-0123456789abcdef"


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeyValueServer]:
    binary = SERVERS[request.param]()
    running = KeyValueServer(binary, tmp_path_factory.mktemp(request.param), PASSWORD)
    yield running.start()
    running.stop()


@pytest.fixture(params=sorted(STORES))
def store_class(request: pytest.FixtureRequest) -> type[KeyValueTagStore]:
    return STORES[request.param]


def head_store(
    store_class: type[KeyValueTagStore], cluster: str, port: int, **options: object
) -> KeyValueTagStore:
    """A store as the provider builds it: the cluster's password, the endpoint of its head port."""
    state.write_secret(cluster, PASSWORD_SECRET, PASSWORD)
    return connected_store(cluster, port, store_class, **options)


@pytest.mark.servers
class TestKeyValueStoreContract(TagStoreContract):
    """Each store against each server: valkey and redis stores x valkey-server and redis-server."""

    @pytest.fixture
    def make_store(
        self, server: KeyValueServer, store_class: type[KeyValueTagStore]
    ) -> Iterator[Callable[[str], TagStore]]:
        stores: list[TagStore] = []

        def make(cluster_name: str) -> TagStore:
            stores.append(head_store(store_class, cluster_name, server.port))
            return stores[-1]

        yield make
        for store in stores:
            store.close()

    @pytest.fixture
    def restart_store(self, server: KeyValueServer) -> Callable[[], None]:
        """A real restart of the server, without persistence: every key is gone."""
        return server.restart

    @pytest.fixture
    def restore_store(self, server: KeyValueServer) -> Callable[[], Callable[[], None]]:
        """A real restore: the server restarted from an RDB file saved before."""

        def save() -> Callable[[], None]:
            copy = server.save_copy()
            return lambda: server.restore_copy(copy)

        return save


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [0, 65536, -1, True])
def test_port_out_of_range_is_a_config_error(
    store_class: type[KeyValueTagStore], port: int
) -> None:
    with pytest.raises(ConfigError) as raised:
        store_class("c", port=port)
    assert raised.value.key_path == "port"


@pytest.mark.parametrize("option", ["connect_timeout", "command_timeout"])
@pytest.mark.parametrize("seconds", [0, -1.0, float("inf"), float("nan")])
def test_unbounded_timeouts_are_config_errors(
    store_class: type[KeyValueTagStore], option: str, seconds: float
) -> None:
    with pytest.raises(ConfigError) as raised:
        store_class("c", **{option: seconds})  # type: ignore[arg-type]
    assert raised.value.key_path == option


def test_a_bad_url_is_a_config_error_that_does_not_show_the_password(
    store_class: type[KeyValueTagStore],
) -> None:
    for url in ("http://:hunter2secret@example.com:6379", "redis://:hunter2secret@host:notaport"):
        with pytest.raises(ConfigError) as raised:
            store_class("c", url=url)
        assert raised.value.key_path == "url"
        assert "hunter2secret" not in str(raised.value)


def test_the_core_reports_a_mistyped_option_by_its_key_path(
    store_class: type[KeyValueTagStore],
) -> None:
    paths = {"": "provider.tag_store", "port": "provider.tag_store.port"}
    with pytest.raises(ConfigError, match=r"provider\.tag_store\.port: expected an integer"):
        plugins.construct(store_class, ("c",), {"port": "16667"}, paths)
    with pytest.raises(ConfigError, match=r"provider\.tag_store\.port: expected a TCP port"):
        plugins.construct(store_class, ("c",), {"port": 70000}, paths)


def test_external_url_means_nothing_on_the_head(store_class: type[KeyValueTagStore]) -> None:
    store = store_class("c", url="rediss://:pw@redis.example.com:6380/0")
    assert store.head_port is None
    assert store.head_server_command() is None


def test_head_server_command_carries_no_secret(
    store_class: type[KeyValueTagStore], raydog_home: Path
) -> None:
    store = store_class("my-cluster", port=17001, appendonly=True)
    secret = state.cluster_secret("my-cluster", PASSWORD_SECRET)
    command = store.head_server_command()
    assert command is not None
    assert secret not in command
    assert "--port 17001" in command and "--appendonly" in command
    assert command.rstrip().endswith("&")


def test_valkey_store_does_not_import_redis() -> None:
    code = (
        "import sys; from raydog_core import plugins; "
        "plugins.load('tag_store', 'valkey', 'p'); print('redis' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# --- against real servers --------------------------------------------------------------------


def test_a_server_that_is_not_installed_fails_the_run_naming_its_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Skipped, the store tests would let a run pass without testing the stores."""
    import tests.servers

    monkeypatch.setattr(tests.servers.shutil, "which", lambda program: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        redis_server_binary()


@pytest.mark.servers
def test_every_operation_is_one_round_trip_whatever_the_number_of_nodes(
    server: KeyValueServer, store_class: type[KeyValueTagStore]
) -> None:
    """From the first call on a fresh connection: connect loads the scripts (a fresh server has
    none, and EVALSHA, NOSCRIPT, load would be three round trips)."""
    with DelayProxy(server.port, latency=0.02) as proxy:
        store = head_store(store_class, f"round-trips-{uuid.uuid4().hex}", proxy.port)
        try:

            def round_trips(call: Callable[[], object]) -> int:
                before = proxy.round_trips
                call()
                return proxy.round_trips - before

            for count in (10, 2000):
                nodes = {f"node-{i}": {"kind": "worker", "i": str(i)} for i in range(count)}
                half = list(nodes)[: count // 2]
                assert round_trips(lambda: store.update(nodes)) == 1  # noqa: B023
                assert round_trips(store.load_all) == 1
                assert round_trips(lambda: store.delete(half)) == 1  # noqa: B023
                assert len(store.load_all()) == count - count // 2
                store.delete(list(nodes))
        finally:
            store.close()


@pytest.mark.servers
def test_more_awkward_ids_tags_and_values_round_trip_exactly(
    server: KeyValueServer, store_class: type[KeyValueTagStore]
) -> None:
    nodes = {
        "1": {"": "empty tag name", "n": "0", "f": "1.50", "true": "null"},
        "nœud/ノード 🚀": {
            "emoji": "🚀 \U0001f600",
            "nul": "a\x00b",
            "slash": "a/b\\c",
            "q": "\"'",
        },
        "no-tags": {},
        "[1, 2]": {"control": "\t\r\x1b\x7f", "big": "x" * 100_000},
    }
    store = head_store(store_class, f"awkward-{uuid.uuid4().hex}", server.port)
    try:
        store.update(nodes)
        assert store.load_all() == nodes
    finally:
        store.close()


@pytest.mark.servers
def test_cluster_names_with_pattern_characters_are_isolated(
    server: KeyValueServer, store_class: type[KeyValueTagStore]
) -> None:
    base = f"glob-{uuid.uuid4().hex[:6]}"
    names = [base, base + "*", base + "?", base + "[a]", base + "{x}", base + "}:node:", "%" + base]
    stores = [head_store(store_class, name, server.port) for name in names]
    try:
        for index, store in enumerate(stores):
            store.update({"n": {"owner": names[index]}})
        for index, store in enumerate(stores):
            assert store.load_all() == {"n": {"owner": names[index]}}
        stores[0].delete(["n"])
        assert [store.load_all() for store in stores[1:]] == [
            {"n": {"owner": name}} for name in names[1:]
        ]
    finally:
        for store in stores:
            store.close()


@pytest.mark.servers
def test_external_url_form(server: KeyValueServer, store_class: type[KeyValueTagStore]) -> None:
    scheme = "valkey" if store_class is ValkeyTagStore else "redis"
    store = store_class("url-cluster", url=f"{scheme}://:{PASSWORD}@127.0.0.1:{server.port}/0")
    store.connect(None)
    try:
        store.update({"n1": {"a": "1"}})
        assert store.load_all() == {"n1": {"a": "1"}}
    finally:
        store.close()


@pytest.mark.servers
def test_wrong_password_is_unreachable_without_showing_it(
    server: KeyValueServer, store_class: type[KeyValueTagStore]
) -> None:
    state.write_secret("wrong", PASSWORD_SECRET, "not-the-password-at-all")
    store = store_class("wrong")
    with pytest.raises(UnreachableError) as raised:
        store.connect(Endpoint("127.0.0.1", server.port))
    assert (raised.value.host, raised.value.port) == ("127.0.0.1", server.port)
    assert "password" in str(raised.value)
    assert "not-the-password-at-all" not in str(raised.value)


@pytest.mark.timeout(60)
def test_closed_port_is_unreachable(store_class: type[KeyValueTagStore]) -> None:
    port = free_port()
    store = store_class("c", connect_timeout=2, command_timeout=2)
    with pytest.raises(UnreachableError) as raised:
        store.connect(Endpoint("127.0.0.1", port))
    assert (raised.value.host, raised.value.port) == ("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(raised.value)


@pytest.mark.timeout(60)
def test_silent_server_is_unreachable_within_the_timeouts(
    store_class: type[KeyValueTagStore],
) -> None:
    with silent_listener() as port:
        store = store_class("c", connect_timeout=1, command_timeout=1)
        with pytest.raises(UnreachableError) as raised:
            store.connect(Endpoint("127.0.0.1", port))
    assert (raised.value.host, raised.value.port) == ("127.0.0.1", port)


@pytest.mark.servers
@pytest.mark.timeout(60)
def test_server_going_silent_mid_run_is_unreachable_within_the_timeouts(
    server: KeyValueServer, store_class: type[KeyValueTagStore]
) -> None:
    with DelayProxy(server.port) as proxy:
        store = head_store(store_class, "silent", proxy.port, command_timeout=1)
        store.update({"n1": {"a": "1"}})
        proxy.stall()
        with pytest.raises(UnreachableError) as raised:
            store.load_all()
        assert raised.value.port == proxy.port
        store.connect(Endpoint("127.0.0.1", proxy.port))
        assert store.load_all() == {"n1": {"a": "1"}}
        store.close()


# --- the head's server launcher ---------------------------------------------------------------


def outbound_address() -> str | None:
    """This machine's non-loopback address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.mark.servers
@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_launcher_waits_for_the_password_then_serves_loopback_only_with_it(
    start_tag_server: Callable[..., TagServerProcess], raydog_home: Path, server_name: str
) -> None:
    binary = SERVERS[server_name]()
    port = free_port()
    launched = start_tag_server("launch", port, "--server-binary", binary, "--wait-seconds", "120")
    launched.wait_for_log("waiting for the password file")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()

    password = state.cluster_secret("launch", PASSWORD_SECRET)
    wait_for_port(port, timeout=30)
    anonymous = valkey.Valkey(port=port, decode_responses=True, socket_timeout=5)
    with pytest.raises(valkey.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()

    store = connected_store("launch", port)
    store.update({"n1": {"a": "1"}})
    assert store.load_all() == {"n1": {"a": "1"}}
    store.close()

    admin = valkey.Valkey(port=port, password=password, decode_responses=True)
    config: dict[str, str] = admin.config_get("*")  # type: ignore[assignment]
    assert config["bind"].split() == ["127.0.0.1"]
    assert Path(config["dir"]).is_relative_to(raydog_home / "clusters" / "launch")
    admin.close()
    address = outbound_address()
    if address is not None:
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()

    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    assert password not in ps.stdout
    assert password not in " ".join(argv_of(launched.process.pid))
    assert password not in (Path("/proc") / str(launched.process.pid) / "environ").read_text()
    launched.stop()
    assert password not in launched.log.read_text()


def test_launcher_gives_up_after_its_bounded_wait(
    start_tag_server: Callable[..., TagServerProcess],
) -> None:
    launched = start_tag_server("nobody-uploads", free_port(), "--wait-seconds", "1")
    assert launched.process.wait(60) == 1
    assert "gave up" in launched.log.read_text()


def test_launcher_refuses_a_password_it_would_have_to_quote_without_showing_it(
    start_tag_server: Callable[..., TagServerProcess],
) -> None:
    state.write_secret("odd", PASSWORD_SECRET, 'has spaces and "quotes" in it')
    launched = start_tag_server("odd", free_port(), "--wait-seconds", "5")
    assert launched.process.wait(60) == 1
    assert "quotes" not in launched.log.read_text()
    assert "password" in launched.log.read_text()


@pytest.mark.servers
@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_restarted_server_with_appendonly_keeps_every_tag(
    start_tag_server: Callable[..., TagServerProcess],
    store_class: type[KeyValueTagStore],
    server_name: str,
) -> None:
    binary = SERVERS[server_name]()
    cluster = f"aof-{server_name}"
    password = state.cluster_secret(cluster, PASSWORD_SECRET)
    port = free_port()
    first = start_tag_server(cluster, port, "--appendonly", "--server-binary", binary)
    wait_for_port(port, timeout=30)
    store = connected_store(cluster, port, store_class)
    expected = {f"node-{i}": {"i": str(i), "unicode": "nœud"} for i in range(500)}
    store.update(expected)
    store.update({"node-1": {"status": "up-to-date"}})
    store.delete(["node-2"])
    expected["node-1"]["status"] = "up-to-date"
    del expected["node-2"]

    first.stop()
    start_tag_server(cluster, port, "--appendonly", "--server-binary", binary)
    # Until it has read its append-only file the server answers LOADING (a tick then keeps what
    # it knew and asks again next time).
    wait_until(lambda: dataset_loaded(port, password), "the server to load its file", 30)
    # The store's pooled connection died with the server; it reconnects by itself once.
    assert store.load_all() == expected
    store.close()


@pytest.mark.servers
def test_head_server_command_starts_the_server_from_a_shell(
    tmp_path: Path, raydog_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the head's task script runs: it returns at once and the server comes up."""
    valkey_server_binary()
    port = free_port()
    store = ValkeyTagStore("shell cluster", port=port, head_python=sys.executable)
    password = state.cluster_secret("shell cluster", PASSWORD_SECRET)
    command = store.head_server_command()
    assert command is not None
    shell = subprocess.Popen(
        ["bash", "-c", command],
        env={**os.environ, "HOME": str(tmp_path), "RAYDOG_HOME": str(raydog_home)},
        start_new_session=True,
    )
    try:
        assert shell.wait(60) == 0
        wait_for_port(port, timeout=60)
        store.connect(Endpoint("127.0.0.1", port))
        store.update({"n1": {"a": "1"}})
        assert store.load_all() == {"n1": {"a": "1"}}
        store.close()
        log = raydog_home / "clusters" / "shell cluster" / "tag-store.log"
        assert "starting" in log.read_text()
        assert password not in log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)


@pytest.mark.servers
def test_a_reader_older_than_the_oldest_tombstone_kept_gets_a_full_reload(
    server: KeyValueServer, store_class: type[KeyValueTagStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tombstones are bounded: past the limit the oldest go, and a reader that could have
    missed one of them reloads everything instead of keeping a deleted node."""
    monkeypatch.setattr("raydog_backends.keyvalue.store.TOMBSTONES", 4)
    store = head_store(store_class, f"tombstones-{uuid.uuid4().hex}", server.port)
    try:
        check_tombstones_are_bounded(store)
    finally:
        store.close()


@pytest.mark.servers
@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_a_server_that_may_evict_tags_is_refused_at_connect_naming_the_setting(
    server: KeyValueServer, store_class: type[KeyValueTagStore], policy: str
) -> None:
    admin = server.client()
    admin.config_set("maxmemory-policy", policy)
    try:
        with pytest.raises(RayDogError, match=f"maxmemory-policy {policy}.*noeviction"):
            head_store(store_class, "evicting", server.port)
        admin.config_set("maxmemory-policy", "volatile-lru")  # RayDog's keys have no TTL
        head_store(store_class, "evicting", server.port).close()
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()
