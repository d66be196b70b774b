"""The provider on real valkey-server and redis-server when the store stalls, refuses writes or
comes back empty: no write is lost, no Ray thread waits on the network, no node loses its tags."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler.tags import TAG_RAY_LAUNCH_CONFIG, TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS

from raydog_backends.keyvalue.store import PASSWORD_SECRET
from raydog_core import config as raydog_config
from raydog_core import state
from raydog_core.errors import TagValueError
from raydog_core.provider import RayDogNodeProvider
from tests.conftest import memory_cluster_config
from tests.ray_helpers import head_tags, worker_tags
from tests.servers import (
    DelayProxy,
    KeyValueServer,
    connected_store,
    redis_server_binary,
    valkey_server_binary,
)

pytestmark = pytest.mark.servers

PASSWORD = "faults-password-0123456789abcdef"
SERVERS: dict[str, Callable[[], str]] = {
    "valkey-server": valkey_server_binary,
    "redis-server": redis_server_binary,
}


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValueServer]:
    running = KeyValueServer(SERVERS[request.param](), tmp_path / "server", PASSWORD)
    yield running.start()
    if running.process is not None:
        os.kill(running.process.pid, signal.SIGCONT)
    running.stop()


@pytest.fixture
def providers() -> Iterator[Callable[..., RayDogNodeProvider]]:
    made: list[RayDogNodeProvider] = []

    def make(port: int, workers: int = 20, **store_options: Any) -> RayDogNodeProvider:
        """A provider as the head's autoscaler has it (store at 127.0.0.1), head and workers
        launched with Ray's launch config tag."""
        config = memory_cluster_config(
            f"faults-{uuid.uuid4().hex[:8]}",
            tag_store={"type": "valkey", "port": port, **store_options},
            tag_store_read_timeout=0.5,
        )
        config["available_node_types"]["cpu"]["max_workers"] = workers
        config["max_workers"] = workers
        state.write_secret(config["cluster_name"], PASSWORD_SECRET, PASSWORD)
        section = raydog_config.bootstrap(config)["provider"]
        provider = RayDogNodeProvider(
            raydog_config.for_head(section, config["auth"]), config["cluster_name"]
        )
        made.append(provider)
        provider.create_node({}, {**head_tags(), TAG_RAY_LAUNCH_CONFIG: "hash-head"}, 1)
        provider.create_node({}, {**worker_tags(), TAG_RAY_LAUNCH_CONFIG: "hash-cpu"}, workers)
        # The first tick on the head tags it with its versions: sent now, not held by a test.
        provider.non_terminated_nodes({})
        assert provider.tags.flush(timeout=30)
        return provider

    yield make
    for provider in made:
        provider.close()


def stored(server: KeyValueServer, cluster: RayDogNodeProvider | str) -> dict[str, dict[str, str]]:
    """What the server holds for a provider's cluster (or one named), read by a store of its own."""
    name = cluster if isinstance(cluster, str) else cluster.cluster_name
    reader = connected_store(name, server.port)
    try:
        return reader.load_all()
    finally:
        reader.close()


@contextlib.contextmanager
def another_process(provider: RayDogNodeProvider) -> Iterator[RayDogNodeProvider]:
    """The provider another process of the cluster builds (a `ray up`, a restarted autoscaler)."""
    other = RayDogNodeProvider(provider.provider_config, provider.cluster_name)
    try:
        yield other
    finally:
        other.close()


def worker_ids(provider: RayDogNodeProvider) -> list[str]:
    return sorted(n for n in provider.non_terminated_nodes({}) if not provider._is_head(n))


def command_calls(server: KeyValueServer, command: str) -> int:
    client = server.client()
    try:
        stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    finally:
        client.close()
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.timeout(120)
def test_a_stopped_server_holds_no_ray_thread_and_loses_no_write(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """SIGSTOP the server: with command_timeout at its maximum, any Ray thread that waited on
    the network would wait an hour. 1,000 set_node_tags from 8 threads, a create_node and a
    terminate_nodes all return; a tick answers from the cache; once the server runs again
    everything reaches it, in a couple of script calls rather than one per write."""
    provider = providers(server.port, command_timeout=3600)
    workers = worker_ids(provider)
    assert server.process is not None
    writes_before = command_calls(server, "incr")  # each write script takes one version
    os.kill(server.process.pid, signal.SIGSTOP)

    def write(index: int) -> None:
        for round_ in range(125):
            provider.set_node_tags(workers[index], {TAG_RAY_NODE_STATUS: f"round-{round_}"})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = list(provider.create_node({}, worker_tags(), 2))
    provider.terminate_nodes(workers[8:10])
    live = provider.non_terminated_nodes({})
    assert set(created) <= set(live) and not set(workers[8:10]) & set(live)
    assert provider.tags.unsent() >= 12

    os.kill(server.process.pid, signal.SIGCONT)
    assert provider.tags.flush(timeout=60)
    # The batch that was on its way when the server stopped, then the deletes and the updates
    # held meanwhile: one script call each.
    assert command_calls(server, "incr") - writes_before <= 3
    there = stored(server, provider)
    for index in range(8):
        assert there[workers[index]][TAG_RAY_NODE_STATUS] == "round-124"
    assert set(created) <= set(there)
    assert not set(workers[8:10]) & set(there)


@pytest.mark.timeout(120)
def test_writes_refused_by_the_server_are_held_until_it_takes_them(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """An OOM reply (maxmemory reached) is not a connection error: the batch is kept."""
    provider = providers(server.port, workers=4)
    workers = worker_ids(provider)
    admin = server.client()
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        provider.set_node_tags(workers[0], {"held": "yes"})
        provider.terminate_nodes([workers[1]])
        assert not provider.tags.flush(timeout=30)
        assert provider.tags.unsent() == 2
        admin.config_set("maxmemory", "0")
    finally:
        admin.close()
    assert provider.tags.flush(timeout=30)
    there = stored(server, provider)
    assert there[workers[0]]["held"] == "yes"
    assert workers[1] not in there


@pytest.mark.timeout(120)
def test_a_server_restarted_empty_gets_every_tag_back(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """No persistence, a restart: the store is empty and in a new epoch. The provider sends back
    what it knows, launch config hashes included, so Ray's autoscaler replaces no worker."""
    provider = providers(server.port, workers=30)
    nodes = provider.non_terminated_nodes({})
    provider.set_node_tags(nodes[1], {TAG_RAY_NODE_STATUS: "up-to-date", "written": "before"})
    assert provider.tags.flush(timeout=30)
    before = stored(server, provider)
    assert len(before) == 31

    server.restart()
    assert stored(server, provider) == {}
    provider.non_terminated_nodes({})
    assert provider.tags.refresh(timeout=30)
    assert provider.tags.flush(timeout=30)
    assert stored(server, provider) == before
    for node in nodes:
        assert provider.node_tags(node)[TAG_RAY_LAUNCH_CONFIG] in ("hash-head", "hash-cpu")


@pytest.mark.timeout(120)
def test_launch_configs_no_running_process_remembers_are_written_back(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """The store comes back empty after the process that knew the tags has gone (an autoscaler
    restarted, a `ray up` whose writes never arrived): a provider whose cache never saw a tag
    writes back what the compute backend records of each node, launch config first."""
    knew = providers(server.port, workers=5)
    nodes = knew.non_terminated_nodes({})
    knew.close()
    server.restart()
    assert stored(server, knew) == {}

    with another_process(knew) as looking:
        looking.refresh(reconcile=False)  # `raydog status` only looks
        assert looking.tags.flush(timeout=30)
        assert not any(TAG_RAY_LAUNCH_CONFIG in tags for tags in stored(server, knew).values())

    with another_process(knew) as fresh:
        assert sorted(fresh.non_terminated_nodes({})) == sorted(nodes)
        assert fresh.tags.flush(timeout=30)
        there = stored(server, fresh)
    assert sorted(there) == sorted(nodes)
    configs = {
        kind: {t[TAG_RAY_LAUNCH_CONFIG] for t in there.values() if t[TAG_RAY_NODE_KIND] == kind}
        for kind in ("head", "worker")
    }
    assert configs == {"head": {"hash-head"}, "worker": {"hash-cpu"}}
    assert all(TAG_RAY_NODE_STATUS not in tags for tags in there.values()), "status is not derived"


@pytest.mark.timeout(120)
def test_a_tick_reads_only_the_nodes_that_changed(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """Counted on the server: a tick where nothing changed reads no node's hash; after k nodes
    changed, k."""
    provider = providers(server.port, workers=200)
    nodes = provider.non_terminated_nodes({})
    assert provider.tags.refresh(timeout=30)

    def hashes_read_by_a_tick() -> int:
        before = command_calls(server, "hgetall")
        assert provider.tags.refresh(timeout=30)
        provider.non_terminated_nodes({})
        return command_calls(server, "hgetall") - before

    assert hashes_read_by_a_tick() == 0
    assert hashes_read_by_a_tick() == 0
    other = type(provider.store)(provider.cluster_name, port=server.port)
    other.connect(provider.tags._locate())
    other.update({node: {"k": "v"} for node in nodes[:7]})
    other.delete(nodes[7:9])
    other.close()
    assert hashes_read_by_a_tick() == 7
    assert provider.node_tags(nodes[0])["k"] == "v"
    assert hashes_read_by_a_tick() == 0


@pytest.mark.timeout(120)
def test_a_process_that_ends_right_after_a_write_still_sends_it(server: KeyValueServer) -> None:
    """`ray up` ends soon after its last write, without closing the provider: writes return at
    once, so the process's exit sends what is held."""
    cluster = f"exit-{uuid.uuid4().hex[:8]}"
    state.write_secret(cluster, PASSWORD_SECRET, PASSWORD)
    code = (
        "from raydog_backends.keyvalue import ValkeyTagStore\n"
        "from raydog_core.interfaces import Endpoint\n"
        "from raydog_core.tag_cache import TagCache\n"
        "store = ValkeyTagStore({cluster!r})\n"
        "cache = TagCache(store, lambda: Endpoint('127.0.0.1', {port}))\n"
        "cache.update({{'head': {{'ray-node-status': 'up-to-date'}}}})\n"
    )
    with DelayProxy(server.port, latency=0.5) as slow:  # longer than the process takes to end
        subprocess.run(
            [sys.executable, "-c", code.format(cluster=cluster, port=slow.port)],
            check=True,
            timeout=60,
        )
    assert stored(server, cluster) == {"head": {"ray-node-status": "up-to-date"}}


@pytest.mark.timeout(120)
def test_a_value_the_server_cannot_hold_is_refused_to_its_writer_and_holds_back_nothing(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """A server at its smallest ``proto-max-bulk-len`` (1 MiB) drops the connection on a longer
    argument, which held every write behind it for ever: 0 of 50 good writes arrived."""
    admin = server.client()
    admin.config_set("proto-max-bulk-len", "1mb")
    admin.close()
    provider = providers(server.port, workers=50)
    workers = worker_ids(provider)
    with pytest.raises(TagValueError, match=f"node '{workers[0]}': tag 'huge'.*bytes"):
        provider.set_node_tags(workers[0], {"huge": "x" * (1 << 20)})
    for worker in workers:
        provider.set_node_tags(worker, {"good": "yes"})
    assert provider.tags.flush(timeout=30)
    there = stored(server, provider)
    assert sum(there[worker].get("good") == "yes" for worker in workers) == 50
    assert "huge" not in there[workers[0]]


_ENDED_BY_SIGNAL = """
import signal, sys, time
from raydog_backends.keyvalue import ValkeyTagStore
from raydog_core.interfaces import Endpoint
from raydog_core.tag_cache import TagCache
if {ray_handler}:  # as Ray's monitor does: its handler reports, then exits
    def ray_handler(signum, frame):
        print("ray's handler ran", flush=True)
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, ray_handler)
cache = TagCache(ValkeyTagStore({cluster!r}), lambda: Endpoint("127.0.0.1", {port}))
cache.update({{"head": {{"k": "first"}}}})
assert cache.flush()
print("ready", flush=True)
sys.stdin.readline()
for i in range({count}):
    cache.update({{f"n{{i}}": {{"k": str(i)}}}})
print("written", flush=True)
while True:  # not signal.pause(): the kernel may hand the signal to the sender thread,
    time.sleep(0.05)  # which would leave pause() waiting; Python runs handlers between sleeps
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("signum", "ray_handler"),
    [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGTERM, True)],
    ids=["SIGTERM", "SIGHUP", "SIGTERM-after-ray's-handler"],
)
def test_a_process_ended_by_a_signal_sends_its_held_writes_first(
    server: KeyValueServer, signum: int, ray_handler: bool
) -> None:
    """A `ray` command ended by SIGTERM (a cancelled CI job) or SIGHUP (a closed terminal) lost
    about half of its writes: the signal skipped the exit's flush. Now they are sent, and the
    process still ends as the signal says (Ray's handler runs, or it dies by the signal)."""
    cluster = f"signal-{uuid.uuid4().hex[:8]}"
    state.write_secret(cluster, PASSWORD_SECRET, PASSWORD)
    count = 2000
    code = _ENDED_BY_SIGNAL.format(
        ray_handler=ray_handler, cluster=cluster, port=server.port, count=count
    )
    assert server.process is not None
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        os.kill(server.process.pid, signal.SIGSTOP)  # the writes that follow are held
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "written\n"
        child.send_signal(signum)
        os.kill(server.process.pid, signal.SIGCONT)
        output = child.stdout.read()
        code_ = child.wait(60)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        if child.poll() is None:
            child.kill()
            child.wait()
    if ray_handler:
        assert "ray's handler ran" in output
        assert code_ == 128 + signum
    else:
        assert code_ == -signum
    there = stored(server, cluster)
    assert sum(1 for i in range(count) if there.get(f"n{i}") == {"k": str(i)}) == count


def settled(*providers: RayDogNodeProvider) -> None:
    """Each provider reads the store and sends what that made it queue, twice over."""
    for _ in range(2):
        for provider in providers:
            provider.refresh()
            assert provider.tags.flush(timeout=30)


@pytest.mark.timeout(120)
def test_a_store_restored_from_an_older_copy_gets_back_every_newer_write_and_delete(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """Restored from a backup, the store had the old values of tags written since and the
    nodes deleted since: the provider sent back only tag names it lacked."""
    provider = providers(server.port, workers=4)
    workers = worker_ids(provider)
    copy = server.save_copy()
    provider.set_node_tags(workers[0], {TAG_RAY_LAUNCH_CONFIG: "hash-new", "k": "new"})
    provider.terminate_nodes([workers[1]])
    created = provider.create_node({}, {**worker_tags(), TAG_RAY_LAUNCH_CONFIG: "hash-cpu"}, 1)
    assert provider.tags.flush(timeout=30)
    provider.refresh()
    expected = stored(server, provider)

    server.restore_copy(copy)
    assert workers[1] in stored(server, provider)  # the copy is older: the deleted node is back
    settled(provider)
    assert stored(server, provider) == expected
    assert expected[workers[0]]["k"] == "new" and set(created) <= set(expected)


@pytest.mark.timeout(120)
def test_two_writers_over_a_restored_store_each_send_back_their_writes_and_see_the_others(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """The second writer goes on writing after the restore, past the version the first had
    seen: only the id of the write that took that version tells the first the store went back."""
    first = providers(server.port, workers=4)
    with another_process(first) as second:
        workers = worker_ids(first)
        settled(first, second)
        copy = server.save_copy()
        first.set_node_tags(workers[0], {"first": "before the restore"})
        second.set_node_tags(workers[1], {"second": "before the restore"})
        second.terminate_nodes([workers[2]])
        settled(first, second)

        server.restore_copy(copy)
        for round_ in range(30):  # the second writes on without reading first
            second.set_node_tags(workers[3], {"second-after": str(round_)})
            assert second.tags.flush(timeout=30)
        settled(first, second)

        there = stored(server, first)
        assert there[workers[0]]["first"] == "before the restore"
        assert there[workers[1]]["second"] == "before the restore"
        assert there[workers[3]]["second-after"] == "29"
        assert workers[2] not in there
        for provider in (first, second):
            assert provider.tags.all() == there, "a cache was left without the other's writes"


@pytest.mark.timeout(120)
def test_a_late_write_for_a_deleted_node_does_not_bring_it_back(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """A second process (a `ray up` that read the tags before) writes to a node the head's
    autoscaler terminated: the store keeps the delete, and the late writer forgets the node."""
    head = providers(server.port, workers=3)
    with another_process(head) as late:
        settled(head, late)
        workers = worker_ids(head)
        head.terminate_nodes([workers[0]])
        assert head.tags.flush(timeout=30)
        late.set_node_tags(workers[0], {TAG_RAY_NODE_STATUS: "up-to-date"})
        late.set_node_tags(workers[1], {TAG_RAY_NODE_STATUS: "up-to-date"})
        assert late.tags.flush(timeout=30)
        there = stored(server, head)
        assert workers[0] not in there
        assert there[workers[1]][TAG_RAY_NODE_STATUS] == "up-to-date"
        assert workers[0] not in late.tags.node_ids()
        relaunched = {**worker_tags(), TAG_RAY_LAUNCH_CONFIG: "hash-cpu"}
        head.tags.update({workers[0]: relaunched}, launched=True)  # its own launch: it may
        assert head.tags.flush(timeout=30)
        assert workers[0] in stored(server, head)


@pytest.mark.timeout(120)
def test_a_deleted_node_stays_deleted_after_a_flush_when_a_cache_that_missed_it_refills(
    server: KeyValueServer, providers: Callable[..., RayDogNodeProvider]
) -> None:
    """FLUSHALL, then the cache that made a delete refills (its tombstones), then one that
    never saw the delete sends back all it knows: the node does not come back."""
    head = providers(server.port, workers=3)
    with another_process(head) as stale:
        settled(head, stale)
        workers = worker_ids(head)
        head.terminate_nodes([workers[0]])
        assert head.tags.flush(timeout=30)
        admin = server.client()
        admin.flushall()
        admin.close()
        settled(head)
        assert stale.tags.refresh(timeout=30)  # a new epoch: it sends back all it knows
        assert stale.tags.flush(timeout=30)
        there = stored(server, head)
        assert workers[0] not in there
        assert set(workers[1:]) <= set(there)
