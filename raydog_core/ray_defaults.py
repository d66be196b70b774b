"""What Ray needs in a cluster config and fills in only for its own providers: the keys it
reads before any provider code runs, and the defaults RayDog gives the rest.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from raydog_core import task_scripts

MODULE = "raydog_core.RayDogNodeProvider"

# Provider keys that Ray itself reads; they are neither ours nor the compute backend's.
RAY_PROVIDER_KEYS = frozenset(
    {
        "type",
        "module",
        "use_internal_ips",
        "disable_node_updaters",
        "disable_launch_config_check",
        "foreground_node_launch",
        "worker_liveness_check",
        "cache_stopped_nodes",
        "_config_cache_path",
    }
)
# Top-level keys Ray reads before any provider code runs, so no provider can fill them in: `ray
# up` prints `cluster_name` before bootstrapping (and `ray get-head-ip` builds the provider with
# it); Ray's prepare_config concatenates the three setup command lists and asserts max_workers.
# Each with what to write.
RAY_REQUIRED: dict[str, str] = {
    "cluster_name": "cluster_name: my-cluster",
    "max_workers": "max_workers: 2",
    "setup_commands": "setup_commands: []",
    "head_setup_commands": "head_setup_commands: []",
    "worker_setup_commands": "worker_setup_commands: []",
}
# Every other top-level key Ray's launcher needs but fills in for its own providers only, with
# the value a config that does not use it gives. RayDog fills them in before Ray checks the
# config (NodeProvider.fillout_available_node_types_resources runs before validate_config).
TOP_LEVEL_DEFAULTS: dict[str, Any] = {
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 5,
    "auth": {},
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
    "initialization_commands": [],
    "head_start_ray_commands": [task_scripts.WAIT_FOR_HEAD_RAY],
    "worker_start_ray_commands": [],
}
# Per node type, Ray's schema requires both; RayDog's backends read node_config themselves.
NODE_TYPE_DEFAULTS: dict[str, Any] = {"node_config": {}, "resources": {}}


def fill_defaults(cluster_config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config with every key Ray needs and RayDog can give filled in.

    Values of the wrong type are left for the checks to name.
    """
    config = copy.deepcopy(dict(cluster_config))
    for key, default in TOP_LEVEL_DEFAULTS.items():
        config.setdefault(key, copy.deepcopy(default))
    node_types = config.get("available_node_types")
    if isinstance(node_types, dict):
        for entry in node_types.values():
            if isinstance(entry, dict):
                for key, default in NODE_TYPE_DEFAULTS.items():
                    entry.setdefault(key, copy.deepcopy(default))
    return config
