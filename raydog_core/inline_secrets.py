"""No secret inline in what Ray caches or prints.

Ray writes the bootstrapped cluster config to ``/tmp/ray-config-<hash>`` (readable by every user
of the machine) and the head's autoscaler prints it to ``monitor.log``. So a password, token or
key must reach a plugin by reference: the name of an environment variable (or a 0600 file) that
holds it. This check finds the shapes a secret takes in a config: a URL with a password in it
(before the host, or in its query under a secret's name, percent-encoded or not), an option whose
name says it is a secret (``password``, ``token``, ``api_key``...) given a value rather than a
reference (options ending in ``_env`` or ``_file`` are references), and, anywhere, the value of a
secret a plugin knows (``known_values``: the YellowDog API key secret, the tag store's password).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from raydog_core.errors import ConfigError

WHY = (
    "Ray copies the cluster config to /tmp/ray-config-<hash> (readable by every user) and the "
    "head's monitor.log prints it"
)
_SECRET_NAME = re.compile(r"password|passwd|secret|token|api_?key|credential", re.IGNORECASE)
_REFERENCE_SUFFIXES = ("_env", "_file", "_path", "_id")
_URL_WITH_USERINFO = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@'\"]*:[^\s/@'\"]*@")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_SECRET_PARAMETER = re.compile(r"password|passwd|secret|token|api_?key", re.IGNORECASE)
# Ray's own keys whose values run on the nodes or on the machine: what the config writes out.
_RAY_COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
    "docker",
)
MIN_KNOWN_LENGTH = 8
"""A known secret shorter than this is not looked for (it would match ordinary words)."""
# Provider keys that are RayDog's own copies (``_raydog``) or Ray's (``auth``): not user options.
_SKIPPED = frozenset({"_raydog", "_raydog_on_head", "auth"})


def find(cluster_config: Mapping[str, Any]) -> list[ConfigError]:
    """A ConfigError for each key that carries a secret inline, with what to write instead."""
    provider = cluster_config.get("provider")
    places: list[tuple[str, Any]] = []
    if isinstance(provider, Mapping):
        places += [(f"provider.{k}", v) for k, v in provider.items() if k not in _SKIPPED]
    types = cluster_config.get("available_node_types")
    if isinstance(types, Mapping):
        for name, entry in types.items():
            if isinstance(entry, Mapping) and "node_config" in entry:
                places.append((f"available_node_types.{name}.node_config", entry["node_config"]))
    places += [(key, cluster_config[key]) for key in _RAY_COMMAND_KEYS if key in cluster_config]
    found = []
    for key_path, value in places:
        for path, leaf_key, leaf in _leaves(key_path, value):
            problem = _inline_secret(leaf_key, leaf)
            if problem:
                found.append(ConfigError(path, problem))
    return found


def known_values(
    cluster_config: Mapping[str, Any], secrets: Mapping[str, str]
) -> list[ConfigError]:
    """A ConfigError for each value that holds one of ``secrets`` (what it is -> its value).

    Looks everywhere but ``auth`` (Ray's SSH settings) and RayDog's own copies: a setup command,
    a task script, ``docker.run_options``, a ``node_config``'s userdata; the error names the
    secret by what it is, never by its value.
    """
    wanted = {what: value for what, value in secrets.items() if len(value) >= MIN_KNOWN_LENGTH}
    found = []
    for key, section in cluster_config.items():
        if key == "auth" or not wanted:
            continue
        if key == "provider" and isinstance(section, Mapping):
            section = {k: v for k, v in section.items() if k not in _SKIPPED}
        for path, _, leaf in _leaves(str(key), section):
            if not isinstance(leaf, str):
                continue
            for what, value in wanted.items():
                if value in leaf:
                    found.append(
                        ConfigError(
                            path,
                            f"holds {what}; {WHY}, and what runs on a node is sent to its "
                            "platform. Give it by reference: an environment variable's name",
                        )
                    )
                    break
    return found


def _leaves(path: str, value: Any, key: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(f"{path}.{k}", v, str(k))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(f"{path}[{index}]", item, key)
    else:
        yield path, key or path.rsplit(".", 1)[-1], value


def _inline_secret(key: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    for match in _URL_WITH_USERINFO.finditer(value):
        password = _password(match.group(0) + "host")
        if password and not password.startswith("$"):  # $VAR, ${VAR}: a shell reference
            return (
                f"holds a URL with a password in it; {WHY}. Write the URL without the password "
                "and give the password by reference: the name of an environment variable that "
                "holds it (for the valkey and redis tag stores: `password_env: NAME`)"
            )
    if any(_secret_in_query(match.group(0)) for match in _URL.finditer(value)):
        return (
            f"holds a URL with a secret in its query; {WHY}. Write the URL without it and give "
            "the secret by reference: the name of an environment variable that holds it (for "
            "the valkey and redis tag stores: `password_env: NAME`)"
        )
    if _SECRET_NAME.search(key) and not key.lower().endswith(_REFERENCE_SUFFIXES):
        return (
            f"is a secret given inline; {WHY}. Give it by reference instead: put it in an "
            f"environment variable or a 0600 file and name that in the plugin's option for it "
            f"(such as `{key}_env`)"
        )
    return None


def _secret_in_query(url: str) -> bool:
    """Whether a URL's query gives a secret-named parameter a value (not a ``$VAR``); names are
    read as the server reads them, percent-decoded (``pass%77ord`` is ``password``)."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return False
    return any(
        _SECRET_PARAMETER.search(name) and value.strip() and not value.startswith("$")
        for name, value in parse_qsl(query, keep_blank_values=True)
    )


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None
