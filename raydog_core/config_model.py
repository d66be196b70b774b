"""What a RayDog cluster config asks for, once read (``config_parsing``): the typed model the
provider, the node setup and the CLI work from.

It imports nothing that takes a ``RayDogConfig``, so every module that does can import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raydog_core import plugins, task_scripts
from raydog_core.errors import ConfigError, raise_together
from raydog_core.interfaces import NodeTypeSpec
from raydog_core.tag_cache import DEFAULT_READ_TIMEOUT

DEFAULT_PLUGINS: dict[plugins.Kind, str] = {
    "compute": "yellowdog",
    "tag_store": "valkey",
    "transport": "sshtunnel",
}

# Five minutes: several autoscaler ticks for Ray to try another node type, short enough that a
# platform problem fixed meanwhile costs little.
DEFAULT_LAUNCH_FAILURE_MEMORY = 300.0
DEFAULT_SETUP_TIMEOUT_MINUTES = 20.0


@dataclass(frozen=True)
class NodeSetupOptions:
    """The provider section's node setup keys, checked (``node_setup.parse_options``)."""

    timeout_minutes: float = DEFAULT_SETUP_TIMEOUT_MINUTES
    raydog_install: str = "wheel"
    """``wheel``: the head gets the client's own raydog and plugins as wheels with the cluster's
    files; ``index``: the head installs the client's versions from its package index."""


@dataclass(frozen=True)
class PluginChoice:
    """A plugin named by the config, with its options and where each came from."""

    kind: plugins.Kind
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    paths: Mapping[str, str] = field(default_factory=dict)

    def build(self, *args: Any) -> Any:
        plugin = plugins.load(self.kind, self.name, self.paths[""])
        return plugins.construct(plugin, args, self.options, self.paths)


@dataclass(frozen=True)
class RayDogConfig:
    cluster_name: str
    compute: PluginChoice
    tag_store: PluginChoice
    transport: PluginChoice
    head_node_type: str
    node_types: Mapping[str, NodeTypeSpec]
    head_script: str = task_scripts.DEFAULT_HEAD_SCRIPT
    worker_script: str = task_scripts.DEFAULT_WORKER_SCRIPT
    files_to_upload: tuple[str, ...] = ()
    auth: Mapping[str, Any] = field(default_factory=dict)
    on_head: bool = False
    setup_options: NodeSetupOptions = field(default_factory=NodeSetupOptions)
    tag_store_read_timeout: float = DEFAULT_READ_TIMEOUT
    launch_failure_memory: float = DEFAULT_LAUNCH_FAILURE_MEMORY
    """How long a node type's late launch failure makes its next launches fail (seconds)."""
    missing_files: tuple[ConfigError, ...] = ()
    """``file:`` references whose file was not there when the provider was built."""
    autoscaler_v2: bool = False
    """Whether ``ray up`` ran with ``RAY_enable_autoscaler_v2=1``: the head's Ray runs v2."""
    internal_ips: bool = False
    """``provider.use_internal_ips``: Ray reaches the nodes by their internal addresses."""

    def check_files(self) -> None:
        """Before a launch: every file the node's scripts and settings name was read."""
        raise_together(self.missing_files)
