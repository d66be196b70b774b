"""Names from the cluster config that reach file paths, scripts and shell commands.

The cluster name becomes a folder (``~/.raydog/clusters/<name>``, on the client and the head) and,
like each node type's name, appears in scripts RayDog writes (``raydog node-setup``'s runs as
root) and in backends' resource names. A name with a newline would become a command there, and
``../x`` or ``/x`` would put RayDog's files outside its folder. So names are checked once, where
the config is read, against a short list of characters that are safe everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from raydog_core.errors import ConfigError, Problems

MAX_LENGTH = 100
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RULE = (
    f"use letters, digits, '.', '_' and '-', starting with a letter or digit, "
    f"at most {MAX_LENGTH} characters"
)


def check(key_path: str, name: object) -> str:
    """``name`` if it is safe in a path, a script and a shell; a ConfigError at ``key_path``."""
    if not isinstance(name, str) or not name:
        raise ConfigError(key_path, f"expected a non-empty name, got {name!r}")
    if not _SAFE.fullmatch(name) or len(name) > MAX_LENGTH:
        raise ConfigError(key_path, f"{name!r} cannot be used as a name: {RULE}")
    return name


def problems(cluster_name: object, node_types: Iterable[object]) -> list[ConfigError]:
    """What is wrong with the cluster's name and each node type's name."""
    found = Problems()
    named = [("cluster_name", cluster_name)]
    for node_type in node_types:
        shown = str(node_type).encode("unicode_escape").decode()
        named.append((f"available_node_types.{shown}", node_type))
    for key_path, name in named:
        with found.collect():
            check(key_path, name)
    return found.found
