"""Shared fixtures: a private RAYDOG_HOME per test, cluster configs as users write them."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raydog_core.config import RAY_TOP_LEVEL_DEFAULTS

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def raydog_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Secrets and node folders of a test stay in its own folder."""
    home = tmp_path_factory.mktemp("raydog-home")
    monkeypatch.setenv("RAYDOG_HOME", str(home))
    return home


def memory_cluster_config(name: str | None = None, **provider: Any) -> dict[str, Any]:
    """A complete cluster config on the memory backends, as a user would write it."""
    return {
        "cluster_name": name or f"test-{uuid.uuid4().hex[:8]}",
        "max_workers": 10,
        "upscaling_speed": 1.0,
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
            "head": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 4},
        },
        "head_node_type": "head",
        **{
            key: copy.deepcopy(value)
            for key, value in RAY_TOP_LEVEL_DEFAULTS.items()
            if key not in ("max_workers", "upscaling_speed", "idle_timeout_minutes")
        },
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
