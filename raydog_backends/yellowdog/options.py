"""The yellowdog backend's options and node types, checked before anything is created."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from raydog_backends.yellowdog.credentials import checked_url
from raydog_backends.yellowdog.names import ClusterNames, is_valid_name
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import ClusterSpec

MAX_NODES_PER_POOL = 10_000
"""The platform's limit on a worker pool's nodes (yellowdog-cli README, "maxNodes")."""

DEFAULT_LIFETIME_HOURS = 1.0
"""``cluster_lifetime_hours`` when a config does not set it: yellowdog-ray's default
(``CLUSTER_LIFETIME_DEFAULT_HOURS``, yellowdog-ray 2.0.0 ``yellowdog_ray/raydog/autoscaler.py``),
so a config written for it bills no longer under RayDog."""
MAX_DURATION = timedelta(days=3650)
"""The longest time an option may give: ten years, well inside what a date can hold."""

NODE_CONFIG_KEYS: dict[str, type] = {
    "compute_requirement_template": str,
    "images_id": str,
    "userdata": str,
    "extra_userdata": str,
    "metrics_enabled": bool,
}


@dataclass(frozen=True)
class NodeTypeConfig:
    """A node type's ``node_config``, checked, and the size its worker pool may reach."""

    template: str
    max_nodes: int
    """The pool's ``maxNodes``: set explicitly, as every YellowDog-written client does, so the
    platform imposes no limit of its own (yellowdog-ray ``autoscaler.py``)."""
    images_id: str | None = None
    userdata: str | None = None
    metrics_enabled: bool = False


@dataclass(frozen=True)
class Options:
    """The provider section's options for the yellowdog backend, checked."""

    names: ClusterNames
    namespace: str
    tag: str
    lifetime: timedelta
    build_timeout: timedelta
    idle_node_shutdown: timedelta
    idle_pool_shutdown: timedelta
    node_recheck_seconds: float
    api_url: str | None
    api_max_attempts: int
    node_types: Mapping[str, NodeTypeConfig]
    head_node_type: str

    @classmethod
    def check(
        cls,
        spec: ClusterSpec,
        *,
        cluster_namespace: str,
        cluster_tag: str | None,
        cluster_lifetime_hours: float,
        head_node_build_timeout_minutes: float,
        idle_node_shutdown_minutes: float,
        idle_pool_shutdown_minutes: float,
        node_recheck_seconds: float,
        api_url: str | None,
        api_max_attempts: int,
    ) -> Options:
        names = ClusterNames.for_cluster(spec.cluster_name, list(spec.node_types))
        _check_name("cluster_namespace", cluster_namespace)
        if cluster_tag is not None:
            _check_name("cluster_tag", cluster_tag)
        for option, value, unit in (
            ("cluster_lifetime_hours", cluster_lifetime_hours, 3600),
            ("head_node_build_timeout_minutes", head_node_build_timeout_minutes, 60),
            ("idle_node_shutdown_minutes", idle_node_shutdown_minutes, 60),
            ("idle_pool_shutdown_minutes", idle_pool_shutdown_minutes, 60),
            ("node_recheck_seconds", node_recheck_seconds, 1),
        ):
            if value <= 0:
                raise ConfigError(option, f"must be greater than 0, got {value!r}")
            if value * unit > MAX_DURATION.total_seconds():
                raise ConfigError(
                    option,
                    f"at most {MAX_DURATION.total_seconds() / unit:g} ({MAX_DURATION.days} days), "
                    f"got {value!r}",
                )
        if api_max_attempts < 1:
            raise ConfigError("api_max_attempts", f"must be at least 1, got {api_max_attempts!r}")
        if api_url is not None:
            try:
                api_url = checked_url(api_url, "the option api_url")
            except BackendError as exc:
                raise ConfigError("api_url", exc.reason) from None
        return cls(
            names=names,
            namespace=cluster_namespace,
            tag=cluster_tag or names.cluster,
            lifetime=timedelta(hours=cluster_lifetime_hours),
            build_timeout=timedelta(minutes=head_node_build_timeout_minutes),
            idle_node_shutdown=timedelta(minutes=idle_node_shutdown_minutes),
            idle_pool_shutdown=timedelta(minutes=idle_pool_shutdown_minutes),
            node_recheck_seconds=node_recheck_seconds,
            api_url=api_url,
            api_max_attempts=api_max_attempts,
            node_types={
                name: _node_type_config(
                    name,
                    node_type.node_config,
                    node_type.max_workers + (1 if name == spec.head_node_type else 0),
                )
                for name, node_type in spec.node_types.items()
            },
            head_node_type=spec.head_node_type,
        )


def _node_type_config(name: str, node_config: Mapping[str, Any], nodes: int) -> NodeTypeConfig:
    path = f"available_node_types.{name}"
    if nodes > MAX_NODES_PER_POOL:
        raise ConfigError(
            f"{path}.max_workers",
            f"asks for up to {nodes} nodes of one worker pool; YellowDog allows at most "
            f"{MAX_NODES_PER_POOL} per pool: split the node type in two",
        )
    for key, value in node_config.items():
        expected = NODE_CONFIG_KEYS.get(key)
        if expected is None:
            raise ConfigError(
                f"{path}.node_config.{key}",
                "not a node_config key of the yellowdog backend",
                NODE_CONFIG_KEYS,
            )
        required_text = key in ("compute_requirement_template", "images_id")
        if not isinstance(value, expected) or (required_text and not value):
            kind = "true or false" if expected is bool else "text"
            kind = "non-empty text" if required_text else kind
            raise ConfigError(f"{path}.node_config.{key}", f"expected {kind}, got {value!r}")
    template = node_config.get("compute_requirement_template")
    if template is None:
        raise ConfigError(
            f"{path}.node_config.compute_requirement_template",
            "missing: the id or name of the YellowDog compute requirement template "
            "that this node type's instances are made from",
        )
    return NodeTypeConfig(
        template,
        max(1, nodes),
        node_config.get("images_id"),
        userdata_of(node_config),
        node_config.get("metrics_enabled", False),
    )


def userdata_of(node_config: Mapping[str, Any]) -> str | None:
    """What a node of this type runs as it boots: ``userdata`` then ``extra_userdata`` (as
    yellowdog-ray joins them), or None when it names neither."""
    parts = [node_config.get("userdata"), node_config.get("extra_userdata")]
    return "\n".join(part.rstrip("\n") for part in parts if isinstance(part, str) and part) or None


def _check_name(option: str, value: str) -> None:
    if not is_valid_name(value):
        raise ConfigError(
            option,
            f"{value!r} is not a YellowDog name: lower-case letters, digits, '-' and '_', "
            "starting with a letter, ending with a letter or digit, at most 60 characters",
        )
