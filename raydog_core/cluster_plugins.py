"""The plugins a cluster config names, built: the tag store (minding a server the head's own
scripts start), the transport, and the compute backend with the ``ClusterSpec`` it works from,
whose task scripts carry what the core puts in front of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raydog_core import clock, node_setup, task_scripts
from raydog_core.config_model import RayDogConfig
from raydog_core.errors import ConfigError, Problems
from raydog_core.interfaces import ClusterSpec, TagStore


def build_plugins(config: RayDogConfig, problems: Problems | None = None) -> tuple[Any, Any, Any]:
    """The tag store, transport and compute backend a config names, in that order.

    With ``problems``, each plugin's errors are collected there (and a plugin that failed is
    returned as None) so one run reports them all.
    """
    if problems is None:
        store = _tag_store(config)
        transport = config.transport.build(config.cluster_name)
        compute = config.compute.build(cluster_spec(config, store))
        return store, transport, compute
    store = transport = compute = None
    with problems.collect():
        store = _tag_store(config)
    with problems.collect():
        transport = config.transport.build(config.cluster_name)
    with problems.collect():
        compute = config.compute.build(cluster_spec(config, store))
    return store, transport, compute


def _tag_store(config: RayDogConfig) -> Any:
    """The tag store the config names. A head whose own scripts start a server on the store's
    port (yellowdog-ray's head task script starts valkey-server on 16667) would leave RayDog's
    server without its port: the store uses that server instead (``start_server: false``),
    or, when it cannot or is told to start its own, the config is refused."""
    store = config.tag_store.build(config.cluster_name)
    port = getattr(store, "head_port", None)
    where = head_starts_tag_server(config, port) if port else None
    if where is None:
        return store
    choice = config.tag_store
    if getattr(store, "start_server", None) is None:
        raise ConfigError(
            where,
            f"starts a tag server of its own on port {port}, where the {choice.name} tag store "
            "starts its server on the head, and that store cannot use another's: remove that "
            f"server from the script, or give the tag store another port ({choice.paths['']})",
        )
    if "start_server" in choice.options:
        if store.start_server:
            raise ConfigError(
                choice.paths["start_server"],
                f"is true, but {where} starts a server of its own on port {port}, where RayDog "
                "would start the tag store's: set it to false to use that server, or remove "
                "that server from the script",
            )
        return store
    using = dataclasses.replace(
        choice,
        options={**choice.options, "start_server": False},
        paths={**choice.paths, "start_server": where},
    )
    return using.build(config.cluster_name)


def head_starts_tag_server(config: RayDogConfig, port: int) -> str | None:
    """The key of the head's script that starts a valkey or redis server on ``port`` (its task
    script, or its userdata where the compute backend says what that is), or None."""
    if task_scripts.starts_server_on(config.head_script, port):
        return "provider.ray_head_node_task_script"
    userdata = node_setup.boot_setup(config, config.head_node_type)
    if userdata is not None and task_scripts.starts_server_on(userdata, port):
        return f"available_node_types.{config.head_node_type}.node_config.userdata"
    return None


def cluster_spec(config: RayDogConfig, store: TagStore | None) -> ClusterSpec:
    """What the compute backend gets: the node types, ``auth``, and each node's task script."""
    server = store.head_server_command() if store is not None else None
    return ClusterSpec(
        cluster_name=config.cluster_name,
        head_node_type=config.head_node_type,
        node_types=config.node_types,
        head_script=task_script(config, config.head_node_type, True, server),
        worker_script=task_scripts.compose(
            config.worker_script,
            ray_environment=task_scripts.ray_exports(
                is_head=False, autoscaler_v2=config.autoscaler_v2
            ),
            setup_wait=node_setup.task_wait(config, "", head=False),
        ),
        worker_scripts={name: task_script(config, name, False) for name in config.node_types},
        auth=config.auth,
        head_setup=(store.head_server_install() or "") if store is not None else "",
        clock=clock.of_cluster(config.cluster_name),
        internal_ips=config.internal_ips,
    )


def task_script(config: RayDogConfig, node_type: str, head: bool, server: str | None = None) -> str:
    """What a node of ``node_type`` runs: the configured script, after what the core puts
    in front of it (``task_scripts.compose``): Ray's environment, the type's resources,
    the wait for RayDog's setup where the type runs it, the tag store's server."""
    spec = config.node_types.get(node_type)
    return task_scripts.compose(
        config.head_script if head else config.worker_script,
        ray_environment=task_scripts.ray_exports(is_head=head, autoscaler_v2=config.autoscaler_v2),
        resources=task_scripts.resource_exports(node_type, spec.resources) if spec else None,
        setup_wait=node_setup.task_wait(config, node_type, head),
        head_server_command=server,
    )
