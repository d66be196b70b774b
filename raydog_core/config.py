"""A RayDog cluster config: Ray's defaults filled in, validation, ``file:`` references.

Ray hands a provider only its ``provider`` section, so ``bootstrap`` (run through Ray's
``bootstrap_config`` before anything is created) validates the whole config and stores what the
provider needs from the rest of it (node types, ``auth``) under ``provider._raydog``. That section
travels with the bootstrap config to the head, so both sides build plugins from the same facts.

``file:PATH`` references stay references in what Ray caches (``/tmp/ray-config-<hash>``, keyed
by the YAML alone): the file is read where the provider is built, relative to the working
directory as Ray reads its own local paths, and travels to the head with the cluster's files.
So an edited script takes effect on the next ``ray up``, cache or not.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from raydog_core import (
    clock,
    inline_secrets,
    names,
    node_setup,
    plugins,
    state,
    task_scripts,
    user_input,
)
from raydog_core.errors import ConfigError, Problems, raise_together
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
MODULE = "raydog_core.RayDogNodeProvider"
# Five minutes: several autoscaler ticks for Ray to try another node type, short enough that a
# platform problem fixed meanwhile costs little.
DEFAULT_LAUNCH_FAILURE_MEMORY = 300.0

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
    setup_options: node_setup.NodeSetupOptions = field(default_factory=node_setup.NodeSetupOptions)
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

    def cluster_spec(self, store: TagStore | None) -> ClusterSpec:
        server = store.head_server_command() if store is not None else None
        return ClusterSpec(
            cluster_name=self.cluster_name,
            head_node_type=self.head_node_type,
            node_types=self.node_types,
            head_script=self.task_script(self.head_node_type, True, server),
            worker_script=task_scripts.compose(
                self.worker_script,
                ray_environment=task_scripts.ray_exports(
                    is_head=False, autoscaler_v2=self.autoscaler_v2
                ),
                setup_wait=node_setup.task_wait(self, "", head=False),
            ),
            worker_scripts={name: self.task_script(name, False) for name in self.node_types},
            auth=self.auth,
            head_setup=(store.head_server_install() or "") if store is not None else "",
            clock=clock.of_cluster(self.cluster_name),
            internal_ips=self.internal_ips,
        )

    def task_script(self, node_type: str, head: bool, server: str | None = None) -> str:
        """What a node of ``node_type`` runs: the configured script, after what the core puts
        in front of it (``task_scripts.compose``): Ray's environment, the type's resources,
        the wait for RayDog's setup where the type runs it, the tag store's server."""
        spec = self.node_types.get(node_type)
        return task_scripts.compose(
            self.head_script if head else self.worker_script,
            ray_environment=task_scripts.ray_exports(
                is_head=head, autoscaler_v2=self.autoscaler_v2
            ),
            resources=task_scripts.resource_exports(node_type, spec.resources) if spec else None,
            setup_wait=node_setup.task_wait(self, node_type, head),
            head_server_command=server,
        )


# --- Ray's defaults ------------------------------------------------------------------------


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


# --- file: references ----------------------------------------------------------------------


def local_file(reference: str) -> Path:
    """Where a ``file:`` reference points on this machine: relative to the working directory,
    as Ray takes ``file_mounts`` and ``auth.ssh_private_key``."""
    return Path(reference[len(FILE_PREFIX) :].strip()).expanduser()


def remote_file(cluster_name: str, reference: str) -> str:
    """Where the head keeps a copy of a referenced file (a path for Ray's ``file_mounts``)."""
    digest = hashlib.sha256(reference.encode()).hexdigest()[:12]
    name = PurePosixPath(reference[len(FILE_PREFIX) :].strip()).name or "file"
    return f"{state.REMOTE_HOME}/files/{cluster_name}/{digest}-{name}"


def file_references(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``file:`` string in a value, with its key path."""
    if isinstance(value, str) and value.startswith(FILE_PREFIX):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from file_references(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from file_references(item, f"{path}[{index}]")


def resolve_files(
    value: Any,
    path: str = "",
    missing_ok: bool = False,
    locate: Callable[[str], Path] = local_file,
) -> Any:
    """A copy of a value with every ``file:PATH`` string replaced by that file's text.

    ``locate`` says where a reference's file is (here, or the head's copy); ``missing_ok``
    leaves references to missing files as they are and takes empty ones as they are (``raydog
    node-setup`` writes the very files a config's ``userdata`` refers to); otherwise an empty
    file is an error, as a missing one is: what a failed ``> FILE`` leaves behind would boot
    nodes that never join. Every unreadable file is reported, not just the first.
    """
    problems = Problems()

    def resolve(item: Any, where: str) -> Any:
        if isinstance(item, str) and item.startswith(FILE_PREFIX):
            target = locate(item)
            with problems.collect():
                try:
                    text = target.read_text()
                    if not text.strip() and not missing_ok:
                        raise ConfigError(
                            where,
                            f"{target.absolute()} is empty: nothing for a node to run (a failed "
                            "`raydog node-setup ... > FILE` leaves an empty file; `-o FILE` "
                            "writes nothing on an error)",
                        )
                    return text
                except FileNotFoundError:
                    if missing_ok:
                        return item
                    raise ConfigError(
                        where,
                        f"file not found: {target.absolute()} (a file: path is taken relative to "
                        f"the folder you run `ray`/`raydog` in: {Path.cwd()})",
                    ) from None
                except (OSError, UnicodeDecodeError) as exc:
                    raise ConfigError(where, f"cannot read {target}: {exc}") from None
            return item
        if isinstance(item, Mapping):
            return {k: resolve(v, f"{where}.{k}" if where else str(k)) for k, v in item.items()}
        if isinstance(item, list):
            return [resolve(v, f"{where}[{i}]") for i, v in enumerate(item)]
        return item

    resolved = resolve(value, path)
    problems.raise_any()
    return resolved


# --- reading a config -----------------------------------------------------------------------


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
    from raydog_core.interfaces import ComputeBackend

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


def build_plugins(config: RayDogConfig, problems: Problems | None = None) -> tuple[Any, Any, Any]:
    """The tag store, transport and compute backend a config names, in that order.

    With ``problems``, each plugin's errors are collected there (and a plugin that failed is
    returned as None) so one run reports them all.
    """
    if problems is None:
        store = _tag_store(config)
        transport = config.transport.build(config.cluster_name)
        compute = config.compute.build(config.cluster_spec(store))
        return store, transport, compute
    store = transport = compute = None
    with problems.collect():
        store = _tag_store(config)
    with problems.collect():
        transport = config.transport.build(config.cluster_name)
    with problems.collect():
        compute = config.compute.build(config.cluster_spec(store))
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
    setup_options = node_setup.NodeSetupOptions()
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
