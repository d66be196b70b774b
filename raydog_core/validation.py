"""What ``ray up`` would refuse, found before it runs, and every problem in one go.

``raydog validate`` runs these checks in the order ``ray up`` meets them: the keys Ray reads
before any provider code runs (``ray_defaults.RAY_REQUIRED``), Ray's own schema on the config with
RayDog's defaults filled in, Ray's other checks, then RayDog's part (``config.check``: the
provider section, ``file:`` targets, uploads and every plugin's options). Each problem is a
ConfigError with its key path and what to write instead; all of them are raised together.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raydog_core import node_setup, plugins, user_input
from raydog_core.config import check, reached_over_ssh
from raydog_core.config_model import RayDogConfig
from raydog_core.config_parsing import mapping, parse, shown
from raydog_core.errors import ConfigError, ConfigErrors, Problems, raise_together
from raydog_core.file_references import file_references, local_file
from raydog_core.ray_defaults import MODULE, RAY_REQUIRED, fill_defaults


def load_file(path: Path) -> dict[str, Any]:
    """A cluster YAML as a mapping; a ConfigError naming the file otherwise."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(
            str(path), "not a text file (not UTF-8): expected a cluster YAML"
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read it: {exc.strerror}") from None
    loaded = user_input.load_yaml(text, str(path))
    if loaded is None:
        raise ConfigError(str(path), "is empty: expected a cluster config (try `raydog init`)")
    if not isinstance(loaded, dict):
        raise ConfigError(
            str(path), f"expected a mapping of keys at the top level, got a {type(loaded).__name__}"
        )
    return loaded


def validate(cluster_config: Mapping[str, Any], for_launch: bool = False) -> RayDogConfig:
    """Every check that needs no credentials and no network, as ``raydog validate`` runs them.

    What ``ray up`` would refuse, in the order it would: the keys Ray reads before any provider
    code runs, Ray's schema on the config with RayDog's defaults filled in, then RayDog's own
    section and every plugin's options. ``for_launch`` adds what only launching nodes needs (the
    SSH key); ``raydog status`` and ``doctor`` look at a cluster without it. Every problem found
    is raised together.
    """
    if not isinstance(cluster_config, Mapping):
        raise ConfigError("(top level)", f"expected a mapping of keys, got {shown(cluster_config)}")
    problems = Problems()
    provider = cluster_config.get("provider")
    identified = False
    with problems.collect():
        _check_provider_identity(provider)
        identified = True
    missing = [key for key in RAY_REQUIRED if key not in cluster_config]
    for key in missing:
        problems.found.append(
            ConfigError(
                key, f"missing; Ray reads it before RayDog can fill it in: `{RAY_REQUIRED[key]}`"
            )
        )
    unreadable = user_input.problems(cluster_config)
    if unreadable:  # Ray's checks, its config cache (JSON) and RayDog's cannot read the rest
        _raise_unique([*problems.found, *unreadable])
    effective = fill_defaults(cluster_config)
    prepare_failed = None
    if not missing and identified:
        try:
            effective = _ray_prepare(cluster_config)
        except ConfigError as error:
            prepare_failed = error
    schema_errors = _ray_schema_errors(effective, skip_required=set(RAY_REQUIRED))
    problems.found += schema_errors
    if not schema_errors:
        if prepare_failed is not None:
            problems.found.append(prepare_failed)
        elif not missing:
            with problems.collect():
                _ray_validate(effective)
    parsed = None
    if isinstance(provider, Mapping):
        with problems.collect():
            parsed = check(effective)
        if for_launch:
            with problems.collect():
                _check_ssh_key(parse(effective, Problems()))
            if parsed is not None:
                problems.found += _node_setup_problems(parsed, effective)
    _raise_unique(problems.found)
    assert parsed is not None
    return parsed


def _check_ssh_key(parsed: RayDogConfig) -> None:
    """``auth.ssh_private_key`` where SSH needs it, and its file there. ``ray up`` reads the
    key only once the head is running (and billed): a missing one, or node setup written without
    one (so the nodes never get its public half), shows only then."""
    compute = plugins.load("compute", parsed.compute.name, parsed.compute.paths[""])
    transport = plugins.load("transport", parsed.transport.name, parsed.transport.paths[""])
    needs = []
    over_ssh = reached_over_ssh(compute)
    if getattr(transport, "uses_ssh", False) and over_ssh:  # else `check` refuses the transport
        needs.append(f"the {parsed.transport.name} transport reaches the head's tag store with it")
    if over_ssh and getattr(compute, "runs_node_setup", False):
        needs.append(
            f"`raydog node-setup` gives its public half to the {parsed.compute.name} nodes, "
            "so that Ray's SSH reaches the head"
        )
    key = parsed.auth.get("ssh_private_key")
    then = "then run `raydog node-setup` again for each node type"
    if not key:
        if needs:
            raise ConfigError(
                "auth.ssh_private_key",
                f"missing: {'; '.join(needs)} (make one with `mkdir -p -m 700 ~/.ssh && "
                "ssh-keygen -t ed25519 -N '' -f ~/.ssh/raydog`, set `ssh_private_key: "
                f"~/.ssh/raydog`, {then})",
            )
        return
    path = Path(str(key)).expanduser()
    if (needs or over_ssh) and not path.is_file():
        raise ConfigError(
            "auth.ssh_private_key",
            f"file not found: {path.absolute()} (taken relative to the folder you run `ray` in; "
            f"make it with `mkdir -p -m 700 {path.parent} && ssh-keygen -t ed25519 -N '' -f "
            f"{path}`, {then})",
        )


def _node_setup_problems(parsed: RayDogConfig, written: Mapping[str, Any]) -> list[ConfigError]:
    """Each node type whose tasks wait for RayDog's setup (``node_setup.runs_raydog_setup``) and
    whose boot script is one ``raydog node-setup`` printed: made for its role (head or worker)
    and this client's Python and Ray, still ending with its marker, and on the head giving the
    nodes the key of ``auth.ssh_private_key``. Otherwise its tasks wait out the setup's time
    limit, Ray refuses the versions, or ``ray up`` cannot reach the head: all once it runs."""
    compute = plugins.load("compute", parsed.compute.name, parsed.compute.paths[""])
    boot = getattr(compute, "boot_setup", None)
    if not getattr(compute, "runs_node_setup", False) or boot is None:
        return []
    client = node_setup.Versions.of_this_client()
    try:
        key = node_setup.public_key(dict(parsed.auth))
    except ConfigError:
        key = None  # `_check_ssh_key` names it
    found = []
    for name, spec in parsed.node_types.items():
        userdata = boot(spec.node_config)
        if userdata is None or not node_setup.runs_raydog_setup(parsed, name):
            continue
        made = node_setup.written_for(userdata)
        if made is None:
            continue  # a setup of one's own that writes the marker: nothing to compare
        head = name == parsed.head_node_type
        wrong = []
        if made.head != head:
            wrong.append(f"it was made for a {'head' if made.head else 'worker'}")
        if (made.versions.python, made.versions.ray) != (client.python, client.ray):
            wrong.append(
                f"it installs python={made.versions.python} ray={made.versions.ray}, this client "
                f"has python={client.python} ray={client.ray} (Ray refuses to mix them)"
            )
        if node_setup.END_HOOK not in userdata:
            wrong.append(
                f"it no longer writes its marker {node_setup.SETUP_FINISHED} "
                f"(`{node_setup.END_HOOK}` is gone), so every task would wait for it and fail"
            )
        if head and key is not None and key not in userdata:
            wrong.append(
                "it does not give the head the key of auth.ssh_private_key (made before that "
                "key, or for another), so `ray up` could not reach the head"
            )
        if wrong:
            raw = mapping(written.get("available_node_types", {}), "").get(name, {})
            files = [ref for _, ref in file_references(raw.get("node_config", {}))]
            target = local_file(files[0]) if len(files) == 1 else "FILE"
            found.append(
                ConfigError(
                    f"available_node_types.{name}.node_config",
                    f"its setup (from `raydog node-setup`) does not fit: {'; '.join(wrong)}. Run "
                    f"`raydog node-setup CONFIG --node-type {name} -o {target}` again",
                )
            )
    return found


def _check_provider_identity(provider: Any) -> None:
    section = mapping(provider, "provider")
    problems = Problems()
    with problems.collect():
        if section.get("type") != "external":
            raise ConfigError(
                "provider.type", f"must be 'external' for RayDog, got {section.get('type')!r}"
            )
    with problems.collect():
        if section.get("module") != MODULE:
            raise ConfigError(
                "provider.module", f"must be {MODULE!r}, got {section.get('module')!r}"
            )
    problems.raise_any()


def _ray_prepare(cluster_config: Mapping[str, Any]) -> dict[str, Any]:
    """What ``ray up`` makes of the config before Ray checks it: Ray's ``prepare_config``, then
    RayDog's defaults (``fillout_available_node_types_resources``)."""
    from ray.autoscaler._private.util import prepare_config

    from raydog_core.progress import quiet_ray_logs

    try:
        with quiet_ray_logs():
            return fill_defaults(prepare_config(copy.deepcopy(dict(cluster_config))))
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as exc:
        raise ConfigError("(cluster config)", f"Ray cannot read it: {exc!r}") from None


def _ray_validate(config: Mapping[str, Any]) -> None:
    """Ray's ``validate_config``: its checks beyond the schema (``_ray_schema_errors``)."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(dict(config))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise ConfigError(where, exc.message) from None
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError("(cluster config)", str(exc)) from None


def _ray_schema_errors(config: Mapping[str, Any], skip_required: set[str]) -> list[ConfigError]:
    """Every error of Ray's own schema (ray-schema.json), as ConfigErrors that say what to write."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).with_name("ray-schema.json")
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    found = []
    for error in validator.iter_errors(config):
        where = ".".join(str(part) for part in error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else "?"
            if not where and missing in skip_required:
                continue
            found.append(ConfigError(_join(where, missing), "missing (Ray's schema requires it)"))
        elif error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            for extra in sorted(map(str, set(error.instance) - set(allowed))):
                found.append(
                    ConfigError(
                        _join(where, str(extra)),
                        "not a key Ray knows: remove it, or fix its spelling",
                        allowed,
                    )
                )
        elif error.validator == "type":
            found.append(
                ConfigError(
                    where or "(top level)",
                    f"expected {_schema_type(error.validator_value)}, got {shown(error.instance)}",
                )
            )
        else:
            found.append(ConfigError(where or "(top level)", error.message))
    return found


def _schema_type(expected: Any) -> str:
    names = {
        "object": "a mapping",
        "array": "a list",
        "string": "text",
        "integer": "a whole number",
        "number": "a number",
        "boolean": "true or false",
        "null": "null",
    }
    if isinstance(expected, list):
        return " or ".join(names.get(str(e), str(e)) for e in expected)
    return names.get(str(expected), str(expected))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _raise_unique(found: list[ConfigError]) -> None:
    """Raise what was found, one error per key path (Ray's schema and RayDog may both see it)."""
    flat = [
        e for error in found for e in (error.errors if isinstance(error, ConfigErrors) else [error])
    ]
    unique: dict[str, ConfigError] = {}
    for error in flat:
        unique.setdefault(error.key_path, error)
    raise_together(list(unique.values()))


def notes(cluster_config: Mapping[str, Any], parsed: RayDogConfig | None = None) -> list[str]:
    """What is valid but likely not meant, for ``raydog validate`` to mention (never an error);
    with ``parsed``, also what the compute backend says of each node type's boot script."""
    found = [] if parsed is None else _boot_setup_notes(parsed) + _worker_script_notes(parsed)
    types = cluster_config.get("available_node_types")
    head = cluster_config.get("head_node_type")
    if isinstance(types, Mapping):
        for name, entry in types.items():
            if name != head and isinstance(entry, Mapping) and "resources" not in entry:
                found.append(
                    f"available_node_types.{name}: no resources, so Ray's autoscaler cannot "
                    "plan with this type (it launches only its min_workers); e.g. "
                    "`resources: {CPU: 4}`"
                )
    return found


_RAY_START = re.compile(r"\bray\s+start\b")


def _worker_script_notes(parsed: RayDogConfig) -> list[str]:
    """A worker task script that starts Ray without ``--block``: its task does not last as long
    as its Ray. It ends at once (and the node with it), or something else keeps it running after
    Ray stopped; with Ray's liveness check off (config.bootstrap), nothing replaces that worker."""
    script = parsed.worker_script
    if not _RAY_START.search(script) or "--block" in script:
        return []
    return [
        "provider.ray_worker_node_task_script: starts Ray without --block, so the task does not "
        "last as long as its Ray: it ends at once, ending its node, or it keeps running (and "
        "billing) after its Ray stopped, and nothing replaces that worker (Ray's "
        "worker_liveness_check is off unless you set it); start Ray with "
        "`exec ray start --block ...`"
    ]


def _boot_setup_notes(parsed: RayDogConfig) -> list[str]:
    """A node type whose tasks wait for RayDog's setup but whose config names no boot script
    (no userdata): only an image with that setup baked in writes its marker; any other waits
    out ``node_setup_timeout_minutes`` and fails."""
    compute = plugins.load("compute", parsed.compute.name, parsed.compute.paths[""])
    boot = getattr(compute, "boot_setup", None)
    if boot is None or not getattr(compute, "runs_node_setup", False):
        return []
    return [
        f"available_node_types.{name}.node_config: no setup (userdata), so its tasks wait for "
        f"{node_setup.SETUP_FINISHED}, which only an image with `raydog node-setup`'s script "
        f"baked in writes; otherwise they fail after {parsed.setup_options.timeout_minutes:g} "
        "minutes"
        for name, spec in parsed.node_types.items()
        if boot(spec.node_config) is None and node_setup.runs_raydog_setup(parsed, name)
    ]
