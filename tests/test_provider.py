"""RayDogNodeProvider as Ray drives it: loaded by Ray's loader after Ray's bootstrap."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from raydog_backends.memory.compute import MemoryComputeBackend
from raydog_backends.memory.tag_store import MemoryTagStore
from raydog_core import RayDogNodeProvider, clock, file_references, state
from raydog_core import config as raydog_config
from raydog_core.clock import SimulatedClock
from raydog_core.interfaces import NodeState
from tests.ray_helpers import bootstrap, head_tags, load_provider, worker_tags

ConfigFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def provider(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> RayDogNodeProvider:
    config = cluster_config()
    forget_memory_clusters(config["cluster_name"])
    return load_provider(config)


def test_ray_loads_the_provider_from_the_yaml_module_path(provider: RayDogNodeProvider) -> None:
    assert type(provider).__module__ == "raydog_core.provider"
    assert provider.compute.__class__ is MemoryComputeBackend


LOADED_BY_RAY_IN_A_FRESH_INTERPRETER = """
import sys
import raydog_core
print("ray imported by raydog_core:", "ray" in sys.modules)
from ray.autoscaler._private.providers import _get_node_provider_cls
found = _get_node_provider_cls({"type": "external", "module": "raydog_core.RayDogNodeProvider"})
print("ray loaded:", found.__module__, found.__qualname__)
"""


def test_raydog_core_imports_without_ray_and_ray_still_loads_its_provider() -> None:
    """``import raydog_core`` leaves Ray (most of a second) to the names that need it, and Ray's
    loader (``import_module`` of the package, then ``getattr``) still gets the provider class:
    a fresh interpreter, as Ray's monitor on the head is."""
    result = subprocess.run(
        [sys.executable, "-c", LOADED_BY_RAY_IN_A_FRESH_INTERPRETER],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ray imported by raydog_core: False",
        "ray loaded: raydog_core.provider RayDogNodeProvider",
    ]


def test_bootstrap_defaults_and_uploads(cluster_config: ConfigFactory, tmp_path: Path) -> None:
    (tmp_path / "extra.txt").write_text("data")
    config = cluster_config(files_to_upload=[str(tmp_path / "extra.txt")])
    bootstrapped = bootstrap(config)
    provider = bootstrapped["provider"]
    assert provider["disable_node_updaters"] is True
    assert provider["_raydog"]["head_node_type"] == "head"
    assert provider["_raydog"]["auth"] == {"ssh_user": "ubuntu"}
    name = config["cluster_name"]
    mounts = bootstrapped["file_mounts"]
    assert mounts[state.remote_cluster_dir(name)] == str(state.cluster_dir(name))
    assert mounts["~/extra.txt"] == str(tmp_path / "extra.txt")


def test_file_references_stay_references_and_travel_as_files(
    cluster_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Ray caches names the file; the provider reads it, here from the working directory,
    on the head from the copy `ray up` syncs with the cluster's files."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "head.sh").write_text("#!/bin/bash\necho head\n")
    config = cluster_config(ray_head_node_task_script="file:scripts/head.sh")
    monkeypatch.chdir(tmp_path)
    bootstrapped = bootstrap(config)
    section = bootstrapped["provider"]
    assert section["ray_head_node_task_script"] == "file:scripts/head.sh"
    remote = file_references.remote_file(config["cluster_name"], "file:scripts/head.sh")
    assert bootstrapped["file_mounts"][remote] == "scripts/head.sh"
    client = RayDogNodeProvider(section, config["cluster_name"])
    head_script = client.compute.spec.head_script
    assert head_script.startswith("#!/bin/bash\n") and head_script.endswith("\necho head\n")
    # On the head: the synced copy under the SSH user's home, wherever the command runs.
    head_home = tmp_path / "head-home"
    copy = head_home / remote.removeprefix("~/")
    copy.parent.mkdir(parents=True)
    copy.write_text("#!/bin/bash\necho synced copy\n")
    monkeypatch.setenv("HOME", str(head_home))
    monkeypatch.chdir("/")
    on_head = RayDogNodeProvider(raydog_config.for_head(section, {}), config["cluster_name"])
    assert on_head.compute.spec.head_script.endswith("echo synced copy\n")


def test_head_launch_then_workers(provider: RayDogNodeProvider) -> None:
    (head,) = provider.create_node({}, head_tags(), 1)
    workers = list(provider.create_node({}, worker_tags(), 3))
    assert sorted(provider.non_terminated_nodes({})) == sorted([head, *workers])
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
    assert set(provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "cpu"})) == set(workers)
    ips = {provider.internal_ip(n) for n in [head, *workers]}
    assert None not in ips and len(ips) == 4
    assert provider.external_ip(head)
    assert provider.node_tags(head)["ray-node-name"] == "ray-head"
    assert provider.node_tags(workers[0])[TAG_RAY_NODE_STATUS] == STATUS_UP_TO_DATE


def test_ips_are_none_until_known_and_queries_do_not_block(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> None:
    config = cluster_config(compute={"type": "memory", "launch_delay": 3600})
    forget_memory_clusters(config["cluster_name"])
    provider = load_provider(config)
    (worker,) = provider.create_node({}, worker_tags(), 1)
    assert provider.internal_ip(worker) is None
    assert provider.non_terminated_nodes({}) == [worker]
    assert not provider.is_running(worker) and not provider.is_terminated(worker)
    assert provider.internal_ip(worker) is None
    assert provider.node_tags(worker)[TAG_RAY_NODE_STATUS] == STATUS_UNINITIALIZED


def test_a_node_lost_in_the_backend_leaves_and_its_tags_go(provider: RayDogNodeProvider) -> None:
    provider.create_node({}, head_tags(), 1)
    lost, kept = provider.create_node({}, worker_tags(), 2)
    provider.set_node_tags(lost, {"user": "tag"})
    MemoryComputeBackend.cluster(provider.cluster_name).lose(lost, "spot instance reclaimed")
    assert lost not in provider.non_terminated_nodes({})
    assert provider.is_terminated(lost)
    assert kept in provider.non_terminated_nodes({})
    store = MemoryTagStore(provider.cluster_name)
    store.connect(None)
    assert lost not in store.load_all()
    assert kept in store.load_all()
    cluster = MemoryComputeBackend.cluster(provider.cluster_name)
    assert lost not in cluster.nodes, "the tick did not terminate the lost node in the backend"


def test_the_tick_logs_which_nodes_ended_and_why_in_one_line(
    provider: RayDogNodeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Once terminated a backend may report a node no more: the monitor log keeps why."""
    provider.create_node({}, head_tags(), 1)
    first, second, kept = provider.create_node({}, worker_tags(), 3)
    provider.non_terminated_nodes({})
    cluster = MemoryComputeBackend.cluster(provider.cluster_name)
    cluster.lose(first, "spot instance reclaimed")
    cluster.lose(second, "vCPU quota exceeded in eu-west-2")
    with caplog.at_level(logging.INFO, logger="raydog_core.provider"):
        provider.non_terminated_nodes({})
        provider.non_terminated_nodes({})
    (record,) = [r for r in caplog.records if "node(s) ended" in r.getMessage()]
    line = record.getMessage()
    assert record.levelno == logging.INFO
    assert f"{first} (spot instance reclaimed)" in line
    assert f"{second} (vCPU quota exceeded in eu-west-2)" in line
    assert kept not in line


def test_describe_only_reports_and_the_tick_acts(provider: RayDogNodeProvider) -> None:
    provider.create_node({}, head_tags(), 1)
    (lost,) = provider.create_node({}, worker_tags(), 1)
    provider.non_terminated_nodes({})
    MemoryComputeBackend.cluster(provider.cluster_name).lose(lost, "spot instance reclaimed")
    provider.refresh(reconcile=False)
    provider.refresh(reconcile=False)
    assert provider.snapshot()[lost].detail == "spot instance reclaimed"
    assert lost in provider.tags.all(), "looking must not act"
    assert lost not in provider.non_terminated_nodes({})
    assert lost not in provider.tags.all()
    assert lost not in {info.node_id for info in provider.compute.describe()}


def test_tags_are_shared_between_client_and_head_providers(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> None:
    config = cluster_config()
    forget_memory_clusters(config["cluster_name"])
    client = load_provider(config)
    (head,) = client.create_node({}, head_tags(), 1)
    client.set_node_tags(head, {TAG_RAY_NODE_STATUS: "setting-up"})
    remote = client.prepare_for_head_node(bootstrap(config))
    assert remote["provider"]["_raydog_on_head"] is True
    on_head = RayDogNodeProvider(remote["provider"], config["cluster_name"])
    assert on_head.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
    assert on_head.node_tags(head)[TAG_RAY_NODE_STATUS] == "setting-up"
    (worker,) = on_head.create_node({}, worker_tags(), 1)
    assert worker in client.non_terminated_nodes({})


def test_terminating_workers_keeps_the_head(provider: RayDogNodeProvider) -> None:
    (head,) = provider.create_node({}, head_tags(), 1)
    workers = list(provider.create_node({}, worker_tags(), 3))
    provider.terminate_nodes(workers[:2])
    assert provider.is_terminated(workers[0])
    assert sorted(provider.non_terminated_nodes({})) == sorted([head, workers[2]])


def test_an_autoscaler_that_runs_for_days_keeps_nothing_of_ended_nodes(
    provider: RayDogNodeProvider,
) -> None:
    """node_tags' answers are kept per node between ticks: those of nodes Ray terminated, or the
    backend lost, must go with them, or a long-lived head's memory grows with every worker."""
    (head,) = provider.create_node({}, head_tags(), 1)
    cluster = MemoryComputeBackend.cluster(provider.cluster_name)
    for _ in range(3):
        workers = list(provider.create_node({}, worker_tags(), 4))
        for node_id in provider.non_terminated_nodes({}):
            provider.node_tags(node_id)
        provider.terminate_nodes(workers[:2])
        cluster.lose(workers[2])
        provider.terminate_nodes([n for n in provider.non_terminated_nodes({}) if n != head])
        for node_id in provider.non_terminated_nodes({}):
            provider.node_tags(node_id)
    assert provider.node_view.composed() <= {head}


def test_a_batch_with_the_head_shuts_the_cluster_down(provider: RayDogNodeProvider) -> None:
    (head,) = provider.create_node({}, head_tags(), 1)
    workers = list(provider.create_node({}, worker_tags(), 3))
    provider.terminate_nodes([workers[0], head])
    assert provider.non_terminated_nodes({}) == []
    assert MemoryComputeBackend.cluster(provider.cluster_name).live_nodes() == []
    store = MemoryTagStore(provider.cluster_name)
    store.connect(None)
    assert store.load_all() == {}


def test_nodes_without_tags_are_still_managed(provider: RayDogNodeProvider) -> None:
    """Tags lost (a store restarted empty): the backend's facts are enough for Ray."""
    (head,) = provider.create_node({}, head_tags(), 1)
    (worker,) = provider.create_node({}, worker_tags(), 1)
    MemoryTagStore.forget(provider.cluster_name)
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
    assert provider.node_tags(worker)[TAG_RAY_USER_NODE_TYPE] == "cpu"


def test_unknown_node_type_is_refused(provider: RayDogNodeProvider) -> None:
    with pytest.raises(Exception, match="unknown node type 'gpu'"):
        provider.create_node({}, worker_tags("gpu"), 1)
    assert MemoryComputeBackend.cluster(provider.cluster_name).live_nodes() == []


def test_a_failed_worker_launch_is_a_ray_launch_exception(provider: RayDogNodeProvider) -> None:
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    MemoryComputeBackend.cluster(provider.cluster_name).fail_next_launch("no capacity")
    with pytest.raises(NodeLaunchException, match="no capacity"):
        provider.create_node({}, worker_tags(), 2)
    assert provider.non_terminated_nodes({}) == []


def _pending_launches_provider(
    cluster_config: ConfigFactory, forget: Callable[[str], None], **provider_options: Any
) -> tuple[RayDogNodeProvider, SimulatedClock]:
    """A provider whose workers stay pending for an hour of the returned clock's time."""
    config = cluster_config(compute={"type": "memory", "launch_delay": 3600}, **provider_options)
    name = config["cluster_name"]
    forget(name)
    time = SimulatedClock()
    clock.simulate(name, time)
    try:
        return load_provider(config), time
    finally:
        clock.forget(name)


def test_a_launch_that_fails_later_fails_the_types_next_launches_until_it_expires(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> None:
    """Ray puts the exception under "Recent failures" and may prefer another node type."""
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    provider, time = _pending_launches_provider(
        cluster_config, forget_memory_clusters, launch_failure_memory=600
    )
    (worker,) = provider.create_node({}, worker_tags(), 1)
    provider.non_terminated_nodes({})
    MemoryComputeBackend.cluster(provider.cluster_name).lose(worker, "pool: quota exceeded")
    assert worker not in provider.non_terminated_nodes({})
    with pytest.raises(NodeLaunchException, match="quota exceeded") as raised:
        provider.create_node({}, worker_tags(), 1)
    assert raised.value.category == "LaunchFailedLater"
    time.advance(599)
    with pytest.raises(NodeLaunchException):
        provider.create_node({}, worker_tags(), 1)
    time.advance(2)
    assert len(provider.create_node({}, worker_tags(), 1)) == 1


def test_a_node_of_the_failed_type_running_ends_its_failure_at_once(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> None:
    from ray.autoscaler.node_launch_exception import NodeLaunchException

    provider, time = _pending_launches_provider(cluster_config, forget_memory_clusters)
    first, second = provider.create_node({}, worker_tags(), 2)
    provider.non_terminated_nodes({})
    MemoryComputeBackend.cluster(provider.cluster_name).lose(first, "setup timed out")
    provider.non_terminated_nodes({})
    with pytest.raises(NodeLaunchException, match="setup timed out"):
        provider.create_node({}, worker_tags(), 1)
    time.advance(3600)  # the other node runs: the platform launches the type again
    provider.non_terminated_nodes({})
    assert provider.is_running(second)
    assert provider.launches.late_failures() == []
    assert len(provider.create_node({}, worker_tags(), 1)) == 1


def test_the_heads_tags_keep_each_types_late_failure_with_how_far_its_node_got(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> None:
    """``raydog status --why`` reads them there: the failed node and its tags are gone."""
    from raydog_core.why import FAILURES_TAG, REQUESTED_TAG, decode_failures

    provider, time = _pending_launches_provider(cluster_config, forget_memory_clusters)
    (head,) = provider.create_node({}, head_tags(), 1)
    first, second = provider.create_node({}, worker_tags(), 2)
    requested = float(provider.node_tags(first)[REQUESTED_TAG])
    provider.non_terminated_nodes({})
    MemoryComputeBackend.cluster(provider.cluster_name).lose(first, "pool: quota exceeded")
    provider.non_terminated_nodes({})
    recorded = provider.node_tags(head)[FAILURES_TAG]
    (chain,) = decode_failures(recorded, now=requested, memory=60)
    assert (chain.node_id, chain.node_type) == (first, "cpu")
    assert chain.times[0] == requested and not chain.joined
    assert chain.reason == "ended: pool: quota exceeded"
    time.advance(3600)  # the other node runs: the failure no longer counts
    provider.non_terminated_nodes({})
    assert provider.is_running(second)
    assert decode_failures(provider.node_tags(head)[FAILURES_TAG], requested, 60) == []


def test_a_running_node_lost_is_no_launch_failure(provider: RayDogNodeProvider) -> None:
    (worker,) = provider.create_node({}, worker_tags(), 1)
    provider.non_terminated_nodes({})
    MemoryComputeBackend.cluster(provider.cluster_name).lose(worker, "spot instance reclaimed")
    provider.non_terminated_nodes({})
    assert len(provider.create_node({}, worker_tags(), 1)) == 1


def test_the_heads_autoscaler_takes_raydogs_scorer_and_ray_loads_it(
    cluster_config: ConfigFactory,
) -> None:
    """Ray's default scorer ignores node availability; the head's script names RayDog's."""
    from ray.autoscaler._private.loader import load_function_or_class

    from raydog_core import task_scripts
    from raydog_core.scheduling import prefer_launchable

    config = bootstrap(cluster_config())
    spec = RayDogNodeProvider(config["provider"], config["cluster_name"]).compute.spec
    variable = task_scripts.SCORER_VARIABLE
    assert f'export {variable}="${{{variable}:-{task_scripts.SCORER}}}"' in spec.head_script
    assert variable not in spec.worker_script
    assert load_function_or_class(task_scripts.SCORER) is prefer_launchable


def test_many_threads_lose_no_tag_and_raise_nothing(provider: RayDogNodeProvider) -> None:
    provider.create_node({}, head_tags(), 1)
    errors: list[BaseException] = []
    created: dict[int, list[str]] = {}
    terminated: set[str] = set()

    def work(index: int) -> None:
        try:
            nodes = list(provider.create_node({}, worker_tags(), 3))
            created[index] = nodes
            for round_ in range(20):
                for node in nodes:
                    provider.set_node_tags(node, {f"t{index}": str(round_), "owner": str(index)})
                provider.non_terminated_nodes({})
                provider.node_tags(nodes[0])
            provider.terminate_nodes(nodes[:1])
            terminated.add(nodes[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    live = set(provider.non_terminated_nodes({}))
    store = MemoryTagStore(provider.cluster_name)
    store.connect(None)
    stored = store.load_all()
    for index, nodes in created.items():
        assert nodes[0] not in live and nodes[0] not in stored
        for node in nodes[1:]:
            assert node in live
            assert stored[node][f"t{index}"] == "19" and stored[node]["owner"] == str(index)
            assert provider.node_tags(node)[f"t{index}"] == "19"
    assert all(info.state is NodeState.RUNNING for info in provider.compute.describe())


def test_a_yellowdog_ray_style_auth_copy_under_provider_is_ignored(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> None:
    config = cluster_config(auth={"ssh_user": "someone-else", "ssh_private_key": "/nope"})
    forget_memory_clusters(config["cluster_name"])
    provider = load_provider(config)
    assert provider.raydog_config.auth == {"ssh_user": "ubuntu"}


def test_a_second_ray_up_keeps_the_head_when_its_tags_are_lost(
    cluster_config: ConfigFactory, forget_memory_clusters: Callable[[str], None]
) -> None:
    """Ray's own decision (``_should_create_new_head``) on a second ``ray up`` of the same YAML:
    the head's launch config hash comes from the compute backend when the store has lost it."""
    from ray.autoscaler._private.commands import _should_create_new_head
    from ray.autoscaler._private.util import hash_launch_conf
    from ray.autoscaler.tags import TAG_RAY_LAUNCH_CONFIG

    config = cluster_config()
    forget_memory_clusters(config["cluster_name"])
    first = load_provider(config)
    launch_hash = hash_launch_conf({}, config["auth"])
    (head,) = first.create_node({}, {**head_tags(), TAG_RAY_LAUNCH_CONFIG: launch_hash}, 1)
    (worker,) = first.create_node({}, {**worker_tags(), TAG_RAY_LAUNCH_CONFIG: "w-hash"}, 1)
    first.close()
    MemoryTagStore.forget(config["cluster_name"])

    second = load_provider(config)
    assert second.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
    assert second.node_tags(head)[TAG_RAY_LAUNCH_CONFIG] == launch_hash
    assert second.node_tags(worker)[TAG_RAY_LAUNCH_CONFIG] == "w-hash"
    assert not _should_create_new_head(head, launch_hash, "head", second)
    assert _should_create_new_head(head, "an-edited-config", "head", second)
