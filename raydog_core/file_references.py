"""``file:PATH`` references in a cluster config: where their files are and their text.

They stay references in what Ray caches (``/tmp/ray-config-<hash>``, keyed by the YAML alone):
the file is read where the provider is built, relative to the working directory as Ray reads
its own local paths, and travels to the head with the cluster's files. So an edited script
takes effect on the next ``ray up``, cache or not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from raydog_core import state
from raydog_core.errors import ConfigError, Problems

FILE_PREFIX = "file:"


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
