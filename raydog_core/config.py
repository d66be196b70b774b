"""A RayDog cluster config through Ray's ``bootstrap_config``: checked whole, before anything
is created, and what the provider needs from it recorded for the client and the head.

Ray hands a provider only its ``provider`` section, so ``bootstrap`` validates the whole config
and stores what the provider needs from the rest of it (node types, ``auth``) under
``provider._raydog``. That section travels with the bootstrap config to the head, where
``config_parsing.from_provider_section`` reads it as the client does, so both sides build
plugins from the same facts. ``file:`` references stay references (``file_references``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from raydog_core import inline_secrets, node_setup, state, task_scripts, user_input
from raydog_core.cluster_plugins import build_plugins
from raydog_core.config_model import RayDogConfig
from raydog_core.config_parsing import NORMALIZED_KEY, ON_HEAD_KEY, parse
from raydog_core.errors import ConfigError, Problems, raise_together
from raydog_core.file_references import file_references, local_file, remote_file, resolve_files
from raydog_core.interfaces import ComputeBackend
from raydog_core.ray_defaults import fill_defaults


def check(cluster_config: Mapping[str, Any]) -> RayDogConfig:
    """RayDog's part of a config, after Ray's: every key, every ``file:`` target, every upload
    and every plugin's options, with all problems raised together."""
    problems = Problems()
    problems.found += inline_secrets.find(cluster_config)  # what Ray caches: file: unread
    resolved: Mapping[str, Any] = cluster_config
    with problems.collect():
        resolved = _resolve_raydog_files(cluster_config)
    parsed = parse(resolved, problems)
    with problems.collect():
        uploads(parsed)
    with scratch_home():
        store, transport, compute = build_plugins(parsed, problems)
    known: dict[str, str] = {}  # read from the real home: the cluster's saved secrets count
    for plugin in (store, transport, compute):
        known.update(getattr(plugin, "known_secrets", dict)())
    problems.found += inline_secrets.known_values(resolved, known)
    if transport and compute and transport.uses_ssh and not reached_over_ssh(type(compute)):
        problems.found.append(
            ConfigError(
                parsed.transport.paths[""],
                f"the {parsed.transport.name} transport reaches the head over SSH, but the "
                f"{parsed.compute.name} backend's nodes are not reached over SSH (it runs "
                "Ray's commands on them itself): choose a transport without SSH, such as "
                "`transport: direct`",
            )
        )
    if compute is not None and not parsed.auth.get("ssh_user") and reached_over_ssh(type(compute)):
        problems.found.append(
            ConfigError(
                "auth.ssh_user",
                f"missing; Ray reaches the {parsed.compute.name} head over SSH as this user "
                "(e.g. `auth: {ssh_user: yd-agent}` on YellowDog)",
            )
        )
    problems.raise_any()
    return parsed


def reached_over_ssh(compute: type) -> bool:
    """Whether Ray reaches this backend's nodes with its own SSH runner (which needs a user)."""
    return getattr(compute, "command_runner", None) is ComputeBackend.command_runner


def bootstrap(cluster_config: Mapping[str, Any]) -> dict[str, Any]:
    """Ray's ``bootstrap_config``: validate everything, then record what the provider needs.

    Builds every plugin once (constructors do no I/O) so that a wrong option fails here, before
    any node exists. Adds the cluster's private folder, the files ``file:`` references name and
    ``files_to_upload`` to the files Ray syncs to the head.
    """
    raise_together(user_input.problems(cluster_config))  # before anything walks it
    config = fill_defaults(cluster_config)
    parsed = check(config)
    provider = config["provider"]
    provider.setdefault("disable_node_updaters", True)
    if provider["disable_node_updaters"]:
        # Ray's liveness check replaces an up-to-date worker whose raylet has not reported for
        # 30 s (AUTOSCALER_HEARTBEAT_TIMEOUT_S), counted from the first tick that sees it. A
        # worker that starts Ray from its task runs before its setup ends and Ray starts; the
        # head's provider reports it setting-up meanwhile only where it finds Ray's monitor
        # (autoscaler v1). The task is the health check instead (RayDog's ends with its Ray),
        # as KubeRay's pods are (ray/autoscaler/_private/kuberay/autoscaling_config.py).
        provider.setdefault("worker_liveness_check", False)
    node_types = config["available_node_types"]
    provider[NORMALIZED_KEY] = {
        "head_node_type": parsed.head_node_type,
        "node_types": {
            name: {
                # As written: file: references are read where the provider is built.
                "node_config": copy.deepcopy(node_types[name].get("node_config", {})),
                "resources": dict(spec.resources),
                "min_workers": spec.min_workers,
                "max_workers": spec.max_workers,
            }
            for name, spec in parsed.node_types.items()
        },
        "auth": dict(parsed.auth),
    }
    if os.environ.get(task_scripts.AUTOSCALER_V2_VARIABLE) == "1":
        # Recorded where `ray up` runs; the head's autoscaler reads the config it uploads.
        provider[NORMALIZED_KEY]["autoscaler_v2"] = True
    mounts = config["file_mounts"]
    local_dir = state.cluster_dir(parsed.cluster_name)
    local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    mounts[state.remote_cluster_dir(parsed.cluster_name)] = str(local_dir)
    for _, reference in file_references(provider):
        mounts[remote_file(parsed.cluster_name, reference)] = str(local_file(reference))
    mounts.update(uploads(parsed))
    config["head_setup_commands"] = node_setup.head_setup_commands(
        parsed, list(config.get("head_setup_commands") or [])
    )
    return config


def _resolve_raydog_files(cluster_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with the ``file:`` references RayDog reads (in the provider section and the
    node types' ``node_config``) replaced by their files' text."""
    config = dict(cluster_config)
    problems = Problems()
    with problems.collect():
        config["provider"] = resolve_files(config.get("provider"), "provider")
    types = config.get("available_node_types")
    if isinstance(types, Mapping):
        config["available_node_types"] = dict(types)
        for name, entry in types.items():
            if isinstance(entry, Mapping) and "node_config" in entry:
                with problems.collect():
                    path = f"available_node_types.{name}.node_config"
                    config["available_node_types"][name] = {
                        **entry,
                        "node_config": resolve_files(entry["node_config"], path),
                    }
    problems.raise_any()
    return config


def uploads(parsed: RayDogConfig) -> dict[str, str]:
    """``files_to_upload`` as Ray file mounts: ``~/<name>`` on the head from the local path,
    taken relative to the working directory as Ray takes its own ``file_mounts``."""
    mounts = {}
    problems = Problems()
    for index, name in enumerate(parsed.files_to_upload):
        source = Path(name).expanduser()
        with problems.collect():
            if not source.exists():
                raise ConfigError(
                    f"provider.files_to_upload[{index}]",
                    f"file not found: {source.absolute()} (relative to the working directory)",
                )
        mounts[f"~/{source.name}"] = str(source)
    problems.raise_any()
    return mounts


def for_head(provider: Mapping[str, Any], head_auth: Mapping[str, Any]) -> dict[str, Any]:
    """The provider section the head's autoscaler gets: it talks to its own store directly."""
    section = copy.deepcopy(dict(provider))
    section[ON_HEAD_KEY] = True
    if isinstance(section.get(NORMALIZED_KEY), dict):
        section[NORMALIZED_KEY]["auth"] = dict(head_auth)
    return section


@contextlib.contextmanager
def scratch_home() -> Iterator[None]:
    """Plugins may create per-cluster secrets when built; validation keeps none of them."""
    previous = os.environ.get("RAYDOG_HOME")
    with tempfile.TemporaryDirectory(prefix="raydog-validate-") as home:
        os.environ["RAYDOG_HOME"] = home
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("RAYDOG_HOME", None)
            else:
                os.environ["RAYDOG_HOME"] = previous
