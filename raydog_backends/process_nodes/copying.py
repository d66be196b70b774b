"""Ray's ``rsync`` for a node on this machine: a local copy with rsync's meaning of a trailing
slash, ``rsync_exclude`` and ``rsync_filter``. File modes are kept (secrets stay 0600) and each
file is written atomically, so a task script waiting for a file never reads half of it."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any


def sync(source: str, target: str, options: Mapping[str, Any]) -> None:
    """Copy like ``rsync -a`` (no ``--delete``): a directory source ending in ``/`` copies its
    contents into ``target``, otherwise the directory itself; ``rsync_exclude`` patterns and
    ``rsync_filter`` files (e.g. ``.gitignore``: exclude lines only) are honoured."""
    src = Path(source)
    if src.is_dir():
        dst = Path(target) if source.endswith("/") else Path(target) / src.name
        excludes = [(PurePosixPath(), p) for p in options.get("rsync_exclude") or []]
        _copy_tree(src, dst, PurePosixPath(), excludes, list(options.get("rsync_filter") or []))
    elif src.exists() or src.is_symlink():
        dst = Path(target)
        if target.endswith("/") or dst.is_dir():
            dst = dst / src.name
        _copy_file(src, dst)
    else:
        raise FileNotFoundError(2, "No such file or directory", source)


Pattern = tuple[PurePosixPath, str]


def _copy_tree(
    src: Path, dst: Path, where: PurePosixPath, patterns: list[Pattern], filter_files: list[str]
) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    patterns = patterns + [
        (where, line.strip())
        for name in filter_files
        if (src / name).is_file()
        for line in (src / name).read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "!"))
    ]
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        relative = where / entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if _excluded(relative, is_dir, patterns):
            continue
        if is_dir:
            _copy_tree(Path(entry.path), dst / entry.name, relative, patterns, filter_files)
        else:
            _copy_file(Path(entry.path), dst / entry.name)
    shutil.copymode(src, dst)


def _excluded(relative: PurePosixPath, is_dir: bool, patterns: list[Pattern]) -> bool:
    for base, pattern in patterns:
        if pattern.endswith("/") and not is_dir:
            continue
        pattern = pattern.rstrip("/")
        if "/" in pattern:  # anchored at the folder the pattern came from
            if base != relative and base not in relative.parents:
                continue
            if fnmatch.fnmatch(str(relative.relative_to(base)), pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatch(relative.name, pattern):
            return True
    return False


def _copy_file(src: Path, dst: Path) -> None:
    """Copy one file or symlink; the new file is never readable by others, even for a moment."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    temporary = dst.with_name(f".{dst.name}.raydog-partial")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    if src.is_symlink():
        temporary.symlink_to(os.readlink(src))
    else:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as source:
            shutil.copyfileobj(source, out)
        shutil.copystat(src, temporary)
    os.replace(temporary, dst)
