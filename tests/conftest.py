"""Shared fixtures: a private RAYDOG_HOME per test, cluster configs as users write them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The YellowDog fixtures load as a plugin, so their assertions are rewritten too.
pytest_plugins = ["pytester", "tests.yellowdog_fixtures"]


@pytest.fixture(autouse=True)
def raydog_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Secrets and node folders of a test stay in its own folder."""
    home = tmp_path_factory.mktemp("raydog-home")
    monkeypatch.setenv("RAYDOG_HOME", str(home))
    return home


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
