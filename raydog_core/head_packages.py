"""RayDog on the head without a package index: wheels of the client's own distributions.

The head's autoscaler imports raydog and the plugins the config names, and must run the
client's code. No package index has them (raydog is not published; a plugin may be private), so
the client makes wheels of its installed distributions (raydog, and those providing the
third-party plugins the config names), puts them in the cluster's folder, which Ray's file sync
copies to the head with the cluster's secrets, and the head installs them with
``pip install --no-index --no-deps`` before Ray starts there. Their dependencies come with the
node setup (``raydog node-setup``); workers need Ray only.

A wheel is built once per distribution version and source state and kept in
``$RAYDOG_HOME/wheels/``: from the installed files listed in the distribution's ``RECORD``
(a regular install), or from its source tree with the build backend already installed here (an
editable install), offline either way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from raydog_core import plugins, state
from raydog_core.config_model import RayDogConfig
from raydog_core.errors import RayDogError
from raydog_core.progress import report

WHEELS = "wheels"
"""The cluster folder's subfolder that carries the wheels to the head."""
KEEP_PER_DISTRIBUTION = 3
_INSTALLER_FILES = {
    "RECORD",
    "INSTALLER",
    "REQUESTED",
    "direct_url.json",
    "RECORD.jws",
    "RECORD.p7s",
}
_NOT_SOURCE_DIRS = {"build", "dist", "__pycache__", "node_modules"}


def distributions(config: RayDogConfig) -> list[str]:
    """raydog, then each distribution that provides a plugin the config names (once each)."""
    names = ["raydog"]
    for choice in (config.compute, config.tag_store, config.transport):
        for info in plugins.installed(choice.kind):
            if info.name == choice.name and info.distribution not in names:
                names.append(info.distribution)
    return names


def stage(cluster_name: str, names: list[str]) -> list[Path]:
    """Put wheels of these distributions in the cluster's folder (Ray's file sync takes them to
    the head), and nothing else there: a wheel left from another version would be installed."""
    wheels = [wheel(name) for name in names]
    state.cluster_dir(cluster_name).mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = state.cluster_dir(cluster_name) / WHEELS
    folder.mkdir(exist_ok=True, mode=0o700)
    for old in folder.glob("*.whl"):
        if old.name not in {built.name for built in wheels}:
            old.unlink()
    staged = []
    for built in wheels:
        target = folder / built.name
        if not (target.exists() and target.read_bytes() == built.read_bytes()):
            shutil.copy2(built, target)
        staged.append(target)
    return staged


def requirements(names: list[str]) -> list[str]:
    """What the head needs besides Ray for these distributions' wheels: their declared
    dependencies (raydog's with its ``head`` extra), without Ray and the wheels themselves."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    skip = {canonicalize_name(name) for name in [*names, "ray"]}
    found: list[str] = []
    for name in names:
        extras = {"", "head"} if name == "raydog" else {""}
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and "extra" in str(marker):
                # Extras are the client's choice; other markers are left for the head to judge.
                if not any(marker.evaluate({"extra": extra}) for extra in extras):
                    continue
                requirement.marker = None
            if canonicalize_name(requirement.name) not in skip and str(requirement) not in found:
                found.append(str(requirement))
    return found


def wheel(name: str) -> Path:
    """A wheel of the installed distribution ``name``, from the cache or built now."""
    dist = _distribution(name)
    source = _editable_source(dist)
    state_key = _tree_key(source) if source is not None else _record_key(dist)
    version = dist.version
    label = f"{_normalized(name)}-{version}"
    cache = state.raydog_home() / WHEELS
    entry = cache / f"{label}-{state_key[:16]}"
    found = sorted(entry.glob("*.whl")) if entry.is_dir() else []
    if found:
        return found[0]
    origin = f"source tree {source}" if source is not None else "its installed files"
    report("building a wheel of %s %s for the head, from %s", name, version, origin)
    started = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=cache))
    try:
        if source is not None:
            _build_from_source(name, source, scratch)
        else:
            _build_from_record(dist, scratch)
        try:
            scratch.rename(entry)
        except OSError:  # another process built the same one meanwhile
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (built,) = sorted(entry.glob("*.whl"))
    report("built %s in %.1fs (kept in %s)", built.name, time.monotonic() - started, cache)
    _forget_old(cache, label, entry)
    return built


def _distribution(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise RayDogError(
            f"{name} is not installed as a distribution here, so there is no wheel of it for "
            "the head: install it with pip (pip install -e works), or set "
            "provider.raydog_install: index"
        ) from None


def _editable_source(dist: metadata.Distribution) -> Path | None:
    """The source tree of an editable install (PEP 660's ``direct_url.json``), or of a
    checkout on ``sys.path`` (its ``.egg-info`` found first), else None."""
    text = dist.read_text("direct_url.json")
    if text:
        direct = json.loads(text)
        url = str(direct.get("url", ""))
        if direct.get("dir_info", {}).get("editable") and url.startswith("file://"):
            return Path(url[len("file://") :])
    if dist.read_text("RECORD") is None:
        root = Path(str(dist.locate_file("")))
        if (root / "pyproject.toml").is_file() or (root / "setup.py").is_file():
            return root
    return None


def _source_files(source: Path) -> Iterator[Path]:
    """The files of a source tree that can go into its wheel: not VCS data, virtual
    environments, caches or earlier build output."""
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in _NOT_SOURCE_DIRS
            and not d.endswith(".egg-info")
            and not (Path(folder, d) / "pyvenv.cfg").exists()
        )
        for file in sorted(files):
            if not file.endswith(".pyc"):
                yield Path(folder, file)


def _tree_key(source: Path) -> str:
    digest = hashlib.sha256()
    for path in _source_files(source):
        info = path.stat()
        digest.update(f"{path.relative_to(source)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _record_key(dist: metadata.Distribution) -> str:
    record = dist.read_text("RECORD")
    if not record:
        raise RayDogError(
            f"{dist.metadata['Name']} {dist.version}: its installed files are not listed "
            "(no RECORD), so no wheel can be made of it; reinstall it with pip, or set "
            "provider.raydog_install: index"
        )
    return hashlib.sha256(record.encode()).hexdigest()


def _build_from_source(name: str, source: Path, out: Path) -> None:
    """``pip wheel`` of a copy of the source tree, offline, with the build backend installed
    here (a copy, so no earlier build output is reused and none is left in the tree)."""
    copy = out / "source"
    for path in _source_files(source):
        target = copy / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    command += ["--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(out)]
    built = subprocess.run(
        [*command, str(copy)], capture_output=True, text=True, timeout=600, check=False
    )
    shutil.rmtree(copy)
    if built.returncode != 0:
        tail = "\n".join((built.stdout + built.stderr).strip().splitlines()[-15:])
        raise RayDogError(
            f"cannot build a wheel of {name} from {source} offline (its build backend, such "
            f"as setuptools, must be installed here; or set provider.raydog_install: index):"
            f"\n{tail}"
        )


def _build_from_record(dist: metadata.Distribution, out: Path) -> None:
    """A wheel of exactly the files the installer put in site-packages (scripts are made again
    from ``entry_points.txt`` when the head installs it)."""
    files = [
        file
        for file in dist.files or []
        if file.parts[0] != ".."
        and "__pycache__" not in file.parts
        and not (file.parts[0].endswith(".dist-info") and file.name in _INSTALLER_FILES)
    ]
    dist_info = next(
        (file.parts[0] for file in files if file.parts[0].endswith(".dist-info")), None
    )
    wheel_info = dist.read_text("WHEEL") or ""
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_info.splitlines() if line.startswith("Tag:")
    ]
    if dist_info is None or not tags:
        raise RayDogError(f"{dist.metadata['Name']}: its install has no wheel metadata (WHEEL)")
    path = out / f"{_normalized(dist.metadata['Name'])}-{dist.version}-{_tag_set(tags)}.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        # Package files first and the .dist-info last, as the wheel format recommends.
        for file in sorted(files, key=lambda f: (f.parts[0] == dist_info, str(f))):
            data = Path(str(file.locate())).read_bytes()
            archive.writestr(str(file), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{file},sha256={digest.decode()},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")


def _tag_set(tags: list[str]) -> str:
    """Wheel tags as a file name's compressed tag set (``py2.py3-none-any``)."""
    parts = [tag.split("-") for tag in tags]
    return "-".join(".".join(dict.fromkeys(part[i] for part in parts)) for i in range(3))


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _forget_old(cache: Path, label: str, keep: Path) -> None:
    """Keep the newest few builds of a distribution version; each edit of a source tree makes
    one."""
    entries = sorted(
        (entry for entry in cache.glob(f"{label}-*") if entry.is_dir() and entry != keep),
        key=lambda entry: entry.stat().st_mtime,
        reverse=True,
    )
    for entry in entries[KEEP_PER_DISTRIBUTION - 1 :]:
        shutil.rmtree(entry, ignore_errors=True)
