"""Finding plugins by name (stevedore entry points) and checking their options.

Only the plugin a config names is imported (stevedore's ``DriverManager``); listing reads the
entry points' metadata without importing any. A plugin whose own dependencies are missing
answers with what to install. Both see the plugins installed now, on the current ``sys.path``:
the entry points are read again whenever ``sys.path`` or one of its folders changed (installing a
distribution adds a folder or file to one), and come from memory otherwise (reading them scans
every installed distribution, ~10 ms, and a config load asks several times).
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal, TypeVar, Union

from stevedore import driver

from raydog_core.errors import ConfigError, Problems
from raydog_core.interfaces import ComputeBackend, TagStore, Transport

Kind = Literal["compute", "tag_store", "transport"]

GROUPS: dict[Kind, str] = {
    "compute": "raydog.compute",
    "tag_store": "raydog.tag_stores",
    "transport": "raydog.transports",
}
BASES: dict[Kind, type] = {
    "compute": ComputeBackend,
    "tag_store": TagStore,
    "transport": Transport,
}
# The arguments the core passes positionally; not options a user may set.
_CORE_ARGUMENTS = {"cluster_name", "spec"}

P = TypeVar("P")


@dataclass(frozen=True)
class PluginInfo:
    kind: Kind
    name: str
    target: str
    distribution: str


def installed(kind: Kind) -> list[PluginInfo]:
    """Every installed plugin of a kind, without importing any of them."""
    found: dict[str, PluginInfo] = {}
    for entry, dist in _installed_entry_points(GROUPS[kind]):
        found.setdefault(entry.name, PluginInfo(kind, entry.name, entry.value, dist))
    return sorted(found.values(), key=lambda info: info.name)


def load(kind: Kind, name: str, key_path: str) -> type:
    """The plugin class registered as ``name``; a ConfigError naming ``key_path`` otherwise."""
    plugins = {info.name: info for info in installed(kind)}
    if name not in plugins:
        raise ConfigError(key_path, f"no {kind} plugin named {name!r}", sorted(plugins))
    info = plugins[name]
    try:
        manager = _InstalledNow(GROUPS[kind], name, invoke_on_load=False)
    except Exception as exc:  # stevedore wraps import failures in several types
        missing = _missing_module(exc)
        if missing is None:
            raise ConfigError(key_path, f"{kind} plugin {name!r} failed to load: {exc}") from exc
        install = f"raydog[{name}]" if info.distribution == "raydog" else info.distribution
        raise ConfigError(
            key_path,
            f"{kind} plugin {name!r} needs the module {missing!r}: pip install '{install}'",
        ) from exc
    plugin = manager.driver
    if not (isinstance(plugin, type) and issubclass(plugin, BASES[kind])):
        raise ConfigError(
            key_path, f"{kind} plugin {name!r} ({info.target}) is not a {BASES[kind].__name__}"
        )
    return plugin


class _InstalledNow(driver.DriverManager):
    """stevedore's driver over the entry points installed now: stevedore's own list is the one
    it saw first in this process, which misses a plugin installed (or a ``sys.path`` changed)
    since. ``list_entry_points`` is its documented way to say where the entry points come from."""

    def list_entry_points(self) -> list[metadata.EntryPoint]:
        return entry_points(self.namespace)


_entry_points_seen: tuple[tuple[tuple[str, int], ...], dict[str, list[tuple[Any, str]]]] = ((), {})


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The entry points of ``group`` installed now on ``sys.path``."""
    return [entry for entry, _ in _installed_entry_points(group)]


def _installed_entry_points(group: str) -> list[tuple[metadata.EntryPoint, str]]:
    """Each entry point of ``group`` with its distribution's name, read again only when
    ``sys.path`` or one of its folders changed."""
    global _entry_points_seen
    fingerprint = tuple((folder, _modified_ns(folder)) for folder in sys.path)
    seen, groups = _entry_points_seen
    if seen != fingerprint:
        groups = {}
        _entry_points_seen = (fingerprint, groups)
    if group not in groups:
        groups[group] = [
            (entry, entry.dist.name if entry.dist is not None else "?")
            for entry in metadata.entry_points(group=group)
        ]
    return groups[group]


def _modified_ns(folder: str) -> int:
    try:
        return os.stat(folder or ".").st_mtime_ns
    except OSError:
        return -1


def _missing_module(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError):
            return seen.name
        seen = seen.__cause__ or seen.__context__
    return None


def option_names(plugin: type) -> dict[str, inspect.Parameter]:
    """The keyword options a plugin's constructor accepts."""
    signature = inspect.signature(plugin)
    return {
        name: param
        for name, param in signature.parameters.items()
        if name not in _CORE_ARGUMENTS
        and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)
    }


def check_options(plugin: type, options: Mapping[str, Any], paths: Mapping[str, str]) -> None:
    """Unknown, missing and mistyped options become a ConfigError at the option's key path."""
    accepted = option_names(plugin)
    hints = type_hints(plugin)
    problems = Problems()
    for option, value in options.items():
        expected = hints.get(option)
        with problems.collect():
            if option not in accepted:
                raise ConfigError(paths[option], "unknown option", sorted(accepted))
            if expected is not None and not _matches(value, expected):
                got = f"{type(value).__name__} {value!r}"
                if isinstance(value, float) and not math.isfinite(value):
                    got = f"{value!r}, which is no usable setting"
                raise ConfigError(paths[option], f"expected {_describe(expected)}, got {got}")
    for option, param in accepted.items():
        if param.default is inspect.Parameter.empty and option not in options:
            owner = paths.get("", "provider")
            problems.found.append(ConfigError(f"{owner}.{option}", "missing required option"))
    problems.raise_any()


def construct(
    plugin: type[P], args: tuple[Any, ...], options: Mapping[str, Any], paths: Mapping[str, str]
) -> P:
    """Build a plugin; a ConfigError it raises about one of its options gets that option's path."""
    check_options(plugin, options, paths)
    try:
        return plugin(*args, **options)
    except ConfigError as exc:
        option = exc.key_path.split(".", 1)[0]
        if option in paths and option:
            rest = exc.key_path[len(option) :]
            raise ConfigError(paths[option] + rest, exc.problem, exc.choices) from None
        raise


def type_hints(plugin: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(plugin.__init__)  # type: ignore[misc]
    except (NameError, TypeError):
        return {}


def _matches(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if origin is Literal:
        return value in typing.get_args(expected)
    if expected is type(None):
        return value is None
    target = origin or expected
    if not isinstance(target, type):
        return True
    if target is float:  # .inf and .nan are YAML floats, never a usable setting
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if target is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if target is str:
        return isinstance(value, str)
    if issubclass(target, Mapping):
        return isinstance(value, Mapping)
    if issubclass(target, Sequence):
        return isinstance(value, (list, tuple))
    return isinstance(value, target)


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(expected))
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return "null"
    target = origin or expected
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
    }.get(target, getattr(target, "__name__", str(target)))
