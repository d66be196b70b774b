"""Shared fixtures: a private RAYDOG_HOME per test, cluster configs as users write them; and how
the README's command spreads tests over pytest-xdist's workers (``--dist loadgroup``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import TagServerProcess

# The YellowDog fixtures load as a plugin, so their assertions are rewritten too.
pytest_plugins = ["pytester", "tests.yellowdog_fixtures"]


SHARED_SCOPES = ("class", "module", "package")
"""Fixture scopes whose value several tests share: those tests run on one worker."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep on one xdist worker what must not be split, so that a new test is parallel-safe
    without marks: tests sharing a class-, module- or package-scoped fixture (it is set up once,
    on that worker; an end-to-end module's cluster, for one). The ``e2e`` tests, the slowest
    (they wait on Ray's autoscaler more than they compute), start first, then the tests marked
    ``waits`` (mostly waiting: an emulator's clock, a timeout), beside them, where a wait costs
    no core; the short tests that compute fill the end of the run. pytest-xdist hands out work
    units (a test, or a group at its first test's place) in this order, a worker taking more
    when it has two tests or fewer left. A test's own ``xdist_group`` mark wins."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            group = shared_fixture_group(item)
            if group is not None:
                item.add_marker(pytest.mark.xdist_group(group))
        if getattr(config.option, "loadgroup", False):
            carry_group_in_node_id(item)
    items.sort(key=start_order)


def start_order(item: pytest.Item) -> int:
    """0 for the ``e2e`` tests, 1 for those marked ``waits``, 2 for the rest."""
    for order, mark in enumerate(("e2e", "waits")):
        if item.get_closest_marker(mark) is not None:
            return order
    return 2


def shared_fixture_group(item: pytest.Item) -> str | None:
    """The node id of the widest class, module or package whose fixture ``item`` uses."""
    info = getattr(item, "_fixtureinfo", None)
    scopes = {
        definitions[-1].scope
        for definitions in (info.name2fixturedefs.values() if info is not None else ())
        if definitions
    }
    for scope, node_type in (("package", pytest.Package), ("module", pytest.Module)):
        if scope in scopes:
            node = item.getparent(node_type)
            return node.nodeid if node is not None else None
    if "class" in scopes:
        node = item.getparent(pytest.Class)
        return node.nodeid if node is not None else None
    return None


def carry_group_in_node_id(item: pytest.Item) -> None:
    """pytest-xdist (3.8) tells its scheduler a test's group by appending ``@GROUP`` to the test's
    node id through ``Item._nodeid``, which pytest 9.2 no longer reads: the groups would be
    silently ignored (pytest-dev/pytest-xdist#1386). Where pytest keeps a structured node id,
    append it there, exactly as pytest-xdist names it (its ``remote.py``)."""
    node_id = getattr(item, "_id", None)
    names = sorted(
        {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
    )
    if node_id is None or isinstance(node_id, str) or not names:
        return
    suffix = "@" + "_".join(names)
    if not item.nodeid.endswith(suffix):
        item._id = type(node_id).parse(item.nodeid + suffix)


@pytest.fixture(autouse=True)
def raydog_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Secrets and node folders of a test stay in its own folder."""
    home = tmp_path_factory.mktemp("raydog-home")
    monkeypatch.setenv("RAYDOG_HOME", str(home))
    return home


@pytest.fixture
def start_tag_server(raydog_home: Path) -> Iterator[Callable[..., TagServerProcess]]:
    """Starts the head's tag server for ``(cluster, port, *options)``; stops each at the end."""
    started: list[TagServerProcess] = []

    def start(cluster: str, port: int, *extra: str) -> TagServerProcess:
        started.append(TagServerProcess(raydog_home, cluster, port, *extra))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def memory_cluster_config(name: str | None = None, **provider: Any) -> dict[str, Any]:
    """A cluster config on the memory backends, as a user would write it: Ray's required keys,
    and RayDog's defaults for everything else."""
    return {
        "cluster_name": name or f"test-{uuid.uuid4().hex[:8]}",
        "max_workers": 10,
        "idle_timeout_minutes": 1,
        "provider": {
            "type": "external",
            "module": "raydog_core.RayDogNodeProvider",
            "compute": "memory",
            "tag_store": "memory",
            "transport": "direct",
            **provider,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 4},
        },
        "head_node_type": "head",
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
    }


@pytest.fixture
def cluster_config() -> Callable[..., dict[str, Any]]:
    return memory_cluster_config


@pytest.fixture
def forget_memory_clusters() -> Iterator[Callable[[str], None]]:
    """Drop in-memory clusters a test made, so tests stay independent."""
    names: list[str] = []
    yield names.append
    from raydog_backends.memory.compute import MemoryComputeBackend
    from raydog_backends.memory.tag_store import MemoryTagStore

    for name in names:
        MemoryComputeBackend.forget(name)
        MemoryTagStore.forget(name)
