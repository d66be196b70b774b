"""A cluster config read into a ``RayDogConfig``: every key checked, every problem named.

``parse`` reads a whole config (its ``file:`` references already read); where the provider is
built, on the client or the head, ``from_provider_section`` reads the provider section as
``config.bootstrap`` left it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raydog_core import names, node_setup, plugins, task_scripts
from raydog_core.config_model import (
    DEFAULT_LAUNCH_FAILURE_MEMORY,
    DEFAULT_PLUGINS,
    NodeSetupOptions,
    PluginChoice,
    RayDogConfig,
)
from raydog_core.errors import ConfigError, Problems
from raydog_core.file_references import file_references, local_file, remote_file, resolve_files
from raydog_core.interfaces import NodeTypeSpec
from raydog_core.ray_defaults import RAY_PROVIDER_KEYS
from raydog_core.tag_cache import DEFAULT_READ_TIMEOUT

NORMALIZED_KEY = "_raydog"
ON_HEAD_KEY = "_raydog_on_head"

SCRIPT_KEYS = {
    "ray_head_node_task_script": task_scripts.DEFAULT_HEAD_SCRIPT,
    "ray_worker_node_task_script": task_scripts.DEFAULT_WORKER_SCRIPT,
}
CORE_KEYS = frozenset(
    {
        *plugins.GROUPS,
        *SCRIPT_KEYS,
        "files_to_upload",
        "head_node_tag_server_port",
        "tag_store_read_timeout",
        "launch_failure_memory",
        "auth",
        NORMALIZED_KEY,
        ON_HEAD_KEY,
        *node_setup.PROVIDER_KEYS,
    }
)


def parse(cluster_config: Mapping[str, Any], problems: Problems | None = None) -> RayDogConfig:
    """Validate a whole cluster config (``file:`` already resolved) and say what it asks for.

    Every problem found is raised together (``ConfigErrors``); with ``problems`` they are left
    there instead and the answer is what could be read (defaults where a part was wrong).
    """
    found = Problems() if problems is None else problems
    provider: Mapping[str, Any] = {}
    with found.collect():
        provider = mapping(cluster_config.get("provider"), "provider")
    cluster_name = cluster_config.get("cluster_name", "default")
    with found.collect():
        if not isinstance(cluster_name, str) or not cluster_name:
            raise ConfigError("cluster_name", f"expected a non-empty string, got {cluster_name!r}")
    node_types: dict[str, NodeTypeSpec] = {}
    head_node_type = ""
    with found.collect():
        node_types, head_node_type = _node_types(cluster_config)
    auth: Mapping[str, Any] = {}
    with found.collect():
        auth = mapping(cluster_config.get("auth", {}), "auth")
    parsed = _parse_provider(
        provider, str(cluster_name), node_types, head_node_type, dict(auth), found
    )
    if problems is None:
        found.raise_any()
    return parsed


def from_provider_section(provider: Mapping[str, Any], cluster_name: str) -> RayDogConfig:
    """What the provider Ray built knows: its section, as ``bootstrap`` left it, with its
    ``file:`` references read here (on the head: the copies ``ray up`` synced)."""
    normalized = provider.get(NORMALIZED_KEY)
    if not isinstance(normalized, Mapping):
        # A few Ray commands (`ray get-head-ip`, `ray get-worker-ips`) build the provider from
        # the raw YAML. Such a provider can look at the cluster but cannot launch a node.
        normalized = {"head_node_type": "", "node_types": {}, "auth": provider.get("auth", {})}
        missing: tuple[ConfigError, ...] = ()
    else:
        on_head = provider.get(ON_HEAD_KEY, False) is True

        def locate(reference: str) -> Path:
            if on_head:
                return Path(remote_file(cluster_name, reference)).expanduser()
            return local_file(reference)

        # Missing files stop a launch only: `ray down` or `ray exec` from another folder work.
        provider = resolve_files(provider, "provider", missing_ok=True, locate=locate)
        normalized = provider[NORMALIZED_KEY]
        missing = tuple(
            ConfigError(
                path.replace(f"provider.{NORMALIZED_KEY}.node_types.", "available_node_types."),
                f"file not found: {locate(reference).absolute()} (a file: path is taken relative "
                f"to the folder you run `ray` in: {Path.cwd()})",
            )
            for path, reference in file_references(provider, "provider")
        )
    node_types = {
        name: NodeTypeSpec(
            name,
            spec.get("node_config", {}),
            spec.get("resources", {}),
            spec.get("min_workers", 0),
            spec.get("max_workers", 0),
        )
        for name, spec in normalized["node_types"].items()
    }
    problems = Problems()
    parsed = _parse_provider(
        provider,
        cluster_name,
        node_types,
        normalized["head_node_type"],
        dict(normalized["auth"]),
        problems,
    )
    problems.raise_any()
    return dataclasses.replace(
        parsed, missing_files=missing, autoscaler_v2=normalized.get("autoscaler_v2") is True
    )


def _parse_provider(
    provider: Mapping[str, Any],
    cluster_name: str,
    node_types: Mapping[str, NodeTypeSpec],
    head_node_type: str,
    auth: dict[str, Any],
    problems: Problems,
) -> RayDogConfig:
    """The provider section's choices; what is wrong goes to ``problems``, defaults stand in."""
    problems.found += names.problems(cluster_name, node_types)
    on_head = provider.get(ON_HEAD_KEY, False) is True
    choices: dict[plugins.Kind, PluginChoice] = {}
    for kind in plugins.GROUPS:
        choices[kind] = PluginChoice(kind, DEFAULT_PLUGINS[kind], {}, {"": f"provider.{kind}"})
        with problems.collect():
            choices[kind] = _plugin_choice(provider, kind)
    flat = {str(k): v for k, v in provider.items() if k not in CORE_KEYS | RAY_PROVIDER_KEYS}
    with problems.collect():
        choices["compute"] = _merge_flat_options(choices["compute"], flat)
    port = provider.get("head_node_tag_server_port")
    if port is not None:
        with problems.collect():
            choices["tag_store"] = _merge_flat_options(
                choices["tag_store"], {"port": port}, {"port": "provider.head_node_tag_server_port"}
            )
    if on_head:
        choices["transport"] = PluginChoice("transport", "direct", {}, {"": "provider.transport"})
    scripts = dict(SCRIPT_KEYS)
    for key in SCRIPT_KEYS:
        if provider.get(key) is not None:
            with problems.collect():
                scripts[key] = _script(provider[key], f"provider.{key}")
    files: tuple[str, ...] = ()
    with problems.collect():
        files = _files_to_upload(provider.get("files_to_upload", []))
    setup_options = NodeSetupOptions()
    with problems.collect():
        setup_options = node_setup.parse_options(provider)
    read_timeout = DEFAULT_READ_TIMEOUT
    with problems.collect():
        read_timeout = _read_timeout(provider.get("tag_store_read_timeout"))
    failure_memory = DEFAULT_LAUNCH_FAILURE_MEMORY
    with problems.collect():
        failure_memory = _launch_failure_memory(provider.get("launch_failure_memory"))
    return RayDogConfig(
        cluster_name=cluster_name,
        compute=choices["compute"],
        tag_store=choices["tag_store"],
        transport=choices["transport"],
        head_node_type=head_node_type,
        node_types=node_types,
        head_script=scripts["ray_head_node_task_script"],
        worker_script=scripts["ray_worker_node_task_script"],
        files_to_upload=files,
        auth=auth,
        on_head=on_head,
        setup_options=setup_options,
        tag_store_read_timeout=read_timeout,
        launch_failure_memory=failure_memory,
        internal_ips=provider.get("use_internal_ips") is True,
    )


def _read_timeout(value: Any) -> float:
    """``provider.tag_store_read_timeout``: how long a tick waits for the tag store (seconds)."""
    if value is None:
        return DEFAULT_READ_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            "provider.tag_store_read_timeout", f"expected a number of seconds, got {value!r}"
        )
    if not 0 < value <= 60 or not math.isfinite(value):
        raise ConfigError(
            "provider.tag_store_read_timeout",
            f"expected seconds above 0 and at most 60, got {value!r}",
        )
    return float(value)


def _launch_failure_memory(value: Any) -> float:
    """``provider.launch_failure_memory``: seconds a late launch failure is held against its
    node type (0: never)."""
    if value is None:
        return DEFAULT_LAUNCH_FAILURE_MEMORY
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            "provider.launch_failure_memory", f"expected a number of seconds, got {value!r}"
        )
    if not 0 <= value <= 86_400 or not math.isfinite(value):
        raise ConfigError(
            "provider.launch_failure_memory",
            f"expected seconds from 0 to 86400 (a day), got {value!r}",
        )
    return float(value)


def _plugin_choice(provider: Mapping[str, Any], kind: plugins.Kind) -> PluginChoice:
    path = f"provider.{kind}"
    value = provider.get(kind, DEFAULT_PLUGINS[kind])
    if isinstance(value, str):
        return PluginChoice(kind, value, {}, {"": path})
    section = mapping(value, path, "a plugin name or a mapping with 'type'")
    name = section.get("type", DEFAULT_PLUGINS[kind])
    if not isinstance(name, str):
        raise ConfigError(f"{path}.type", f"expected a plugin name, got {name!r}")
    options = {str(k): v for k, v in section.items() if k != "type"}
    paths = {"": path, **{k: f"{path}.{k}" for k in options}}
    return PluginChoice(kind, name, options, paths)


def _merge_flat_options(
    choice: PluginChoice, flat: Mapping[str, Any], paths: Mapping[str, str] | None = None
) -> PluginChoice:
    """yellowdog-ray style flat keys are options too; naming one twice is an error."""
    flat_paths = paths or {k: f"provider.{k}" for k in flat}
    for key in flat:
        if key in choice.options:
            raise ConfigError(
                flat_paths[key], f"also given as {choice.paths[key]}: keep one of the two"
            )
    return PluginChoice(
        choice.kind,
        choice.name,
        {**choice.options, **flat},
        {**choice.paths, **flat_paths},
    )


def _node_types(cluster_config: Mapping[str, Any]) -> tuple[dict[str, NodeTypeSpec], str]:
    types = mapping(cluster_config.get("available_node_types"), "available_node_types")
    if not types:
        raise ConfigError("available_node_types", "at least one node type is needed")
    problems = Problems()
    head = cluster_config.get("head_node_type")
    with problems.collect():
        if not isinstance(head, str) or head not in types:
            raise ConfigError(
                "head_node_type", f"must name one of the node types, got {head!r}", map(str, types)
            )
    specs = {}
    for name, raw in types.items():
        with problems.collect():
            specs[str(name)] = _node_type(str(name), raw)
    problems.raise_any()
    return specs, str(head)


def _node_type(name: str, raw: Any) -> NodeTypeSpec:
    path = f"available_node_types.{name}"
    entry = mapping(raw, path)
    problems = Problems()
    node_config: Mapping[str, Any] = {}
    resources: Mapping[str, Any] = {}
    with problems.collect():
        node_config = mapping(entry.get("node_config", {}), f"{path}.node_config")
    with problems.collect():
        resources = _resources(entry.get("resources", {}), f"{path}.resources")
    counts = {"min_workers": 0, "max_workers": 0}
    for key in counts:
        value = entry.get(key, 0)
        with problems.collect():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{path}.{key}", f"expected a whole number >= 0, got {value!r}")
            counts[key] = value
    with problems.collect():
        if counts["min_workers"] > counts["max_workers"] and "max_workers" in entry:
            raise ConfigError(
                f"{path}.min_workers",
                f"is greater than max_workers ({counts['max_workers']}): lower it or raise that",
            )
    problems.raise_any()
    return NodeTypeSpec(
        name, dict(node_config), dict(resources), counts["min_workers"], counts["max_workers"]
    )


def _resources(value: Any, path: str) -> Mapping[str, Any]:
    """A node type's ``resources``: numbers >= 0, whole where ``ray start`` takes an option of
    its own (``--num-cpus``...), since the task scripts start Ray with exactly these."""
    resources = mapping(value, path)
    problems = Problems()
    for name, amount in resources.items():
        with problems.collect():
            valid = isinstance(amount, (int, float)) and not isinstance(amount, bool)
            if not valid or not math.isfinite(amount) or amount < 0:
                raise ConfigError(f"{path}.{name}", f"expected a number >= 0, got {amount!r}")
            if name in task_scripts.RESOURCE_VARIABLES and not float(amount).is_integer():
                raise ConfigError(
                    f"{path}.{name}",
                    f"expected a whole number (ray start takes no fraction of it), got {amount!r}",
                )
    problems.raise_any()
    return resources


def _files_to_upload(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            "provider.files_to_upload", f"expected a list of paths (e.g. [data.csv]), got {value!r}"
        )
    problems = Problems()
    for index, item in enumerate(value):
        with problems.collect():
            if not isinstance(item, str) or not item:
                raise ConfigError(
                    f"provider.files_to_upload[{index}]", f"expected a path, got {item!r}"
                )
    problems.raise_any()
    return tuple(value)


def mapping(value: Any, path: str, expected: str = "a mapping") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected {expected}, got {shown(value)}")
    return value


def _script(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            path,
            f"expected a script as text (inline, or file:PATH), got {shown(value)}; "
            "leave the key out for RayDog's default",
        )
    if not value.strip():
        raise ConfigError(path, "is empty: leave the key out for RayDog's default script")
    return value


def shown(value: Any) -> str:
    """A value for an error message: its type, and the value itself when short."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
