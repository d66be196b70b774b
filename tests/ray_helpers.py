"""Load a provider exactly as Ray does: its bootstrap, then its provider loader."""

from __future__ import annotations

from typing import Any

from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_USER_NODE_TYPE,
)

from raydog_core import RayDogNodeProvider


def bootstrap(config: dict[str, Any]) -> dict[str, Any]:
    return _bootstrap_config(config, no_config_cache=True)


def load_provider(config: dict[str, Any]) -> RayDogNodeProvider:
    bootstrapped = bootstrap(config)
    provider = _get_node_provider(
        bootstrapped["provider"], bootstrapped["cluster_name"], use_cache=False
    )
    assert isinstance(provider, RayDogNodeProvider)
    return provider


def head_tags(node_type: str = "head") -> dict[str, str]:
    return {
        TAG_RAY_NODE_KIND: NODE_KIND_HEAD,
        TAG_RAY_USER_NODE_TYPE: node_type,
        TAG_RAY_NODE_NAME: "ray-head",
    }


def worker_tags(node_type: str = "cpu") -> dict[str, str]:
    return {
        TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
        TAG_RAY_USER_NODE_TYPE: node_type,
        TAG_RAY_NODE_NAME: "ray-worker",
    }
