"""The ``provider`` section of a cluster config: parsing, validation, ``file:`` references.

Ray hands a provider only its ``provider`` section, so ``bootstrap`` (run through Ray's
``bootstrap_config`` before anything is created) validates the whole config and stores what the
provider needs from the rest of it (node types, ``auth``) under ``provider._raydog``. That section
travels with the bootstrap config to the head, so both sides build plugins from the same facts.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydog_core import node_setup, plugins, state
from raydog_core.errors import ConfigError
from raydog_core.interfaces import ClusterSpec, NodeTypeSpec, TagStore
from raydog_core.tag_cache import DEFAULT_READ_TIMEOUT

DEFAULT_PLUGINS: dict[plugins.Kind, str] = {
    "compute": "yellowdog",
    "tag_store": "valkey",
    "transport": "sshtunnel",
}
FILE_PREFIX = "file:"
NORMALIZED_KEY = "_raydog"
ON_HEAD_KEY = "_raydog_on_head"

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
# Top-level keys Ray's launcher needs and does not fill in for external providers, with the
# value a config that does not use them should give.
RAY_TOP_LEVEL_DEFAULTS: dict[str, Any] = {
    "max_workers": 2,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 5,
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}
SCRIPT_KEYS = ("ray_head_node_task_script", "ray_worker_node_task_script")
CORE_KEYS = frozenset(
    {
        *plugins.GROUPS,
        *SCRIPT_KEYS,
        "files_to_upload",
        "head_node_tag_server_port",
        "tag_store_read_timeout",
        "auth",
        NORMALIZED_KEY,
        ON_HEAD_KEY,
        *node_setup.PROVIDER_KEYS,
    }
)


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
    head_script: str = ""
    worker_script: str = ""
    files_to_upload: tuple[str, ...] = ()
    auth: Mapping[str, Any] = field(default_factory=dict)
    on_head: bool = False
    setup_options: node_setup.NodeSetupOptions = field(default_factory=node_setup.NodeSetupOptions)
    tag_store_read_timeout: float = DEFAULT_READ_TIMEOUT

    def cluster_spec(self, store: TagStore) -> ClusterSpec:
        head_script = compose_head_script(self.head_script, store.head_server_command())
        return ClusterSpec(
            cluster_name=self.cluster_name,
            head_node_type=self.head_node_type,
            node_types=self.node_types,
            head_script=self.after_node_setup(head_script),
            worker_script=self.after_node_setup(self.worker_script),
            auth=self.auth,
            head_setup=store.head_server_install() or "",
        )

    def after_node_setup(self, script: str) -> str:
        """A task script as the compute backend gets it: on backends whose nodes run RayDog's
        node setup, held until that setup has finished (with the configured time limit)."""
        if not node_setup.runs_node_setup(self.compute):
            return script
        return node_setup.wait_for_setup(script, self.setup_options.timeout_minutes)


def compose_head_script(script: str, head_server_command: str | None) -> str:
    """The head's task script with the tag store's server started first (after any shebang)."""
    if not head_server_command:
        return script
    lines = script.splitlines(keepends=True)
    shebang = lines.pop(0) if lines and lines[0].startswith("#!") else "#!/usr/bin/env bash\n"
    body = "".join(lines)
    return f"{shebang}# Started by RayDog: the tag store's server\n{head_server_command}\n{body}"


def resolve_files(
    cluster_config: Mapping[str, Any], config_dir: Path, missing_ok: bool = False
) -> dict[str, Any]:
    """A copy of the config with every ``file:PATH`` string replaced by that file's text.

    ``missing_ok`` leaves references to missing files as they are (``raydog node-setup``
    writes the very files a config's ``userdata`` refers to).
    """

    def resolve(value: Any, path: str) -> Any:
        if isinstance(value, str) and value.startswith(FILE_PREFIX):
            target = (config_dir / Path(value[len(FILE_PREFIX) :].strip()).expanduser()).resolve()
            try:
                return target.read_text()
            except FileNotFoundError:
                if missing_ok:
                    return value
                raise ConfigError(path, f"file not found: {target}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(path, f"cannot read {target}: {exc}") from None
        if isinstance(value, Mapping):
            return {k: resolve(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    resolved: dict[str, Any] = resolve(cluster_config, "")
    return resolved


def parse(cluster_config: Mapping[str, Any]) -> RayDogConfig:
    """Validate a whole cluster config (``file:`` already resolved) and say what it asks for."""
    provider = _mapping(cluster_config.get("provider"), "provider")
    cluster_name = cluster_config.get("cluster_name", "default")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise ConfigError("cluster_name", f"expected a non-empty string, got {cluster_name!r}")
    node_types, head_node_type = _node_types(cluster_config)
    auth = _mapping(cluster_config.get("auth", {}), "auth")
    return _parse_provider(provider, cluster_name, node_types, head_node_type, dict(auth))


def from_provider_section(provider: Mapping[str, Any], cluster_name: str) -> RayDogConfig:
    """What the provider Ray built knows: its section, as ``bootstrap`` left it."""
    normalized = provider.get(NORMALIZED_KEY)
    if not isinstance(normalized, Mapping):
        # A few Ray commands (`ray get-head-ip`, `ray get-worker-ips`) build the provider from
        # the raw YAML. Such a provider can look at the cluster but cannot launch a node.
        normalized = {"head_node_type": "", "node_types": {}, "auth": provider.get("auth", {})}
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
    return _parse_provider(
        provider, cluster_name, node_types, normalized["head_node_type"], dict(normalized["auth"])
    )


def bootstrap(cluster_config: Mapping[str, Any], config_dir: Path) -> dict[str, Any]:
    """Ray's ``bootstrap_config``: validate everything, then record what the provider needs.

    Builds every plugin once (constructors do no I/O) so that a wrong option fails here, before
    any node exists. Adds the cluster's private folder and ``files_to_upload`` to the files Ray
    syncs to the head.
    """
    config = resolve_files(cluster_config, config_dir)
    parsed = parse(config)
    build_plugins(parsed)
    provider = config["provider"]
    provider.setdefault("disable_node_updaters", True)
    provider[NORMALIZED_KEY] = {
        "head_node_type": parsed.head_node_type,
        "node_types": {
            name: {
                "node_config": dict(spec.node_config),
                "resources": dict(spec.resources),
                "min_workers": spec.min_workers,
                "max_workers": spec.max_workers,
            }
            for name, spec in parsed.node_types.items()
        },
        "auth": dict(parsed.auth),
    }
    mounts = config.setdefault("file_mounts", {})
    local_dir = state.cluster_dir(parsed.cluster_name)
    local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    mounts[state.remote_cluster_dir(parsed.cluster_name)] = str(local_dir)
    mounts.update(uploads(parsed, config_dir))
    return config


def uploads(parsed: RayDogConfig, config_dir: Path) -> dict[str, str]:
    """``files_to_upload`` as Ray file mounts: ``~/<name>`` on the head from the local path."""
    mounts = {}
    for index, name in enumerate(parsed.files_to_upload):
        source = (config_dir / Path(name).expanduser()).resolve()
        if not source.exists():
            raise ConfigError(f"provider.files_to_upload[{index}]", f"file not found: {source}")
        mounts[f"~/{source.name}"] = str(source)
    return mounts


def build_plugins(config: RayDogConfig) -> tuple[Any, Any, Any]:
    """The tag store, transport and compute backend a config names, in that order."""
    store = config.tag_store.build(config.cluster_name)
    transport = config.transport.build(config.cluster_name)
    compute = config.compute.build(config.cluster_spec(store))
    return store, transport, compute


def for_head(provider: Mapping[str, Any], head_auth: Mapping[str, Any]) -> dict[str, Any]:
    """The provider section the head's autoscaler gets: it talks to its own store directly."""
    section = copy.deepcopy(dict(provider))
    section[ON_HEAD_KEY] = True
    if isinstance(section.get(NORMALIZED_KEY), dict):
        section[NORMALIZED_KEY]["auth"] = dict(head_auth)
    return section


def _parse_provider(
    provider: Mapping[str, Any],
    cluster_name: str,
    node_types: Mapping[str, NodeTypeSpec],
    head_node_type: str,
    auth: dict[str, Any],
) -> RayDogConfig:
    on_head = provider.get(ON_HEAD_KEY, False) is True
    choices = {kind: _plugin_choice(provider, kind) for kind in plugins.GROUPS}
    flat = {k: v for k, v in provider.items() if k not in CORE_KEYS | RAY_PROVIDER_KEYS}
    choices["compute"] = _merge_flat_options(choices["compute"], flat)
    port = provider.get("head_node_tag_server_port")
    if port is not None:
        choices["tag_store"] = _merge_flat_options(
            choices["tag_store"], {"port": port}, {"port": "provider.head_node_tag_server_port"}
        )
    if on_head:
        choices["transport"] = PluginChoice("transport", "direct", {}, {"": "provider.transport"})
    scripts = {key: _string(provider.get(key, ""), f"provider.{key}") for key in SCRIPT_KEYS}
    return RayDogConfig(
        cluster_name=cluster_name,
        compute=choices["compute"],
        tag_store=choices["tag_store"],
        transport=choices["transport"],
        head_node_type=head_node_type,
        node_types=node_types,
        head_script=scripts["ray_head_node_task_script"],
        worker_script=scripts["ray_worker_node_task_script"],
        files_to_upload=_files_to_upload(provider.get("files_to_upload", [])),
        auth=auth,
        on_head=on_head,
        setup_options=node_setup.parse_options(provider),
        tag_store_read_timeout=_read_timeout(provider.get("tag_store_read_timeout")),
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


def _plugin_choice(provider: Mapping[str, Any], kind: plugins.Kind) -> PluginChoice:
    path = f"provider.{kind}"
    value = provider.get(kind, DEFAULT_PLUGINS[kind])
    if isinstance(value, str):
        return PluginChoice(kind, value, {}, {"": path})
    section = _mapping(value, path, "a plugin name or a mapping with 'type'")
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
    for key in flat:
        if key in choice.options:
            raise ConfigError(
                f"provider.{key}", f"also given as {choice.paths[key]}: keep one of the two"
            )
    flat_paths = paths or {k: f"provider.{k}" for k in flat}
    return PluginChoice(
        choice.kind,
        choice.name,
        {**choice.options, **flat},
        {**choice.paths, **flat_paths},
    )


def _node_types(cluster_config: Mapping[str, Any]) -> tuple[dict[str, NodeTypeSpec], str]:
    types = _mapping(cluster_config.get("available_node_types"), "available_node_types")
    if not types:
        raise ConfigError("available_node_types", "at least one node type is needed")
    head = cluster_config.get("head_node_type")
    if not isinstance(head, str) or head not in types:
        raise ConfigError("head_node_type", f"must name one of the node types, got {head!r}", types)
    specs = {}
    for name, raw in types.items():
        path = f"available_node_types.{name}"
        entry = _mapping(raw, path)
        node_config = _mapping(entry.get("node_config", {}), f"{path}.node_config")
        resources = _mapping(entry.get("resources", {}), f"{path}.resources")
        counts = {}
        for key in ("min_workers", "max_workers"):
            value = entry.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{path}.{key}", f"expected a whole number >= 0, got {value!r}")
            counts[key] = value
        if counts["min_workers"] > counts["max_workers"] and "max_workers" in entry:
            raise ConfigError(f"{path}.min_workers", "is greater than max_workers")
        specs[str(name)] = NodeTypeSpec(
            str(name),
            dict(node_config),
            dict(resources),
            counts["min_workers"],
            counts["max_workers"],
        )
    return specs, head


def _files_to_upload(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError("provider.files_to_upload", f"expected a list of paths, got {value!r}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(
                f"provider.files_to_upload[{index}]", f"expected a path, got {item!r}"
            )
    return tuple(value)


def _mapping(value: Any, path: str, expected: str = "a mapping") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected {expected}, got {value!r}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected text (inline or file:PATH), got {value!r}")
    return value


def ray_config_dir() -> Path:
    """The folder of the YAML that Ray's CLI is working on, found on the call stack.

    Ray hands ``bootstrap_config`` the parsed config only; its command functions
    (``create_or_update_cluster``, ``teardown_cluster``, ``exec_cluster``, ...) all hold the
    path as ``config_file``. Without one (a config built in code) it is the working directory.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("config_file")
            if isinstance(candidate, str) and Path(candidate).is_file():
                return Path(candidate).resolve().parent
            frame = frame.f_back
    finally:
        del frame
    return Path.cwd()


def load_file(path: Path) -> dict[str, Any]:
    """A cluster YAML as a mapping; a ConfigError naming the file otherwise."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(str(path), "expected a mapping at the top level")
    return loaded


def validate(cluster_config: Mapping[str, Any], config_dir: Path) -> RayDogConfig:
    """Every check that needs no credentials and no network, as ``raydog validate`` runs them.

    Ray's own schema first (with the keys it needs but does not fill in for external providers
    reported one by one), then RayDog's section and every plugin's options.
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    from raydog_core.progress import quiet_ray_logs

    provider = _mapping(cluster_config.get("provider"), "provider")
    if provider.get("type") != "external":
        raise ConfigError(
            "provider.type", f"must be 'external' for RayDog, got {provider.get('type')!r}"
        )
    module = "raydog_core.RayDogNodeProvider"
    if provider.get("module") != module:
        raise ConfigError("provider.module", f"must be {module!r}, got {provider.get('module')!r}")
    for key, default in RAY_TOP_LEVEL_DEFAULTS.items():
        if key not in cluster_config:
            raise ConfigError(
                key, f"missing; Ray needs it for external providers (add `{key}: {default!r}`)"
            )
    try:
        with quiet_ray_logs():
            validate_config(prepare_config(copy.deepcopy(dict(cluster_config))))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise ConfigError(where, exc.message) from None
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError("(cluster config)", str(exc)) from None
    parsed = parse(resolve_files(cluster_config, config_dir))
    uploads(parsed, config_dir)
    with scratch_home():
        build_plugins(parsed)
    return parsed


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
