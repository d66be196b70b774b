"""The third-party tag store example works as a plugin author would ship it.

It is installed as its own distribution (not through RayDog's pyproject), and then RayDog finds
it by its entry point, validates configs that name it, and its own contract tests pass.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler.tags import TAG_RAY_NODE_NAME

from raydog_core import RayDogNodeProvider
from raydog_core.testing import TagStoreContract
from raydog_core.testing.tag_store_contract import (
    TagStoreChangesContract,
    TagStoreTombstoneContract,
    TagStoreValueLimitContract,
)
from tests.conftest import memory_cluster_config
from tests.ray_helpers import bootstrap, head_tags, load_provider, worker_tags

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "thirdparty-tagstore"
DISTRIBUTION = "raydog-sqlite-tagstore"


@pytest.fixture(scope="module")
def example_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's source, copied so that building it leaves nothing in the work tree."""
    copy = tmp_path_factory.mktemp("example") / EXAMPLE.name
    shutil.copytree(
        EXAMPLE,
        copy,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*_cache"),
    )
    return copy


@pytest.fixture(scope="module")
def site_dir(example_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed by pip into a folder of its own, offline: building it without
    build isolation needs setuptools>=70.1 (or the wheel package) here, as the dev extra has."""
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    command += ["--no-build-isolation", "--target", str(target), str(example_copy)]
    installed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, (
        "pip could not install the example (setuptools>=70.1 or wheel missing?):\n"
        + installed.stdout
        + installed.stderr
    )
    return target


def run(
    site_dir: Path | None, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("PYTHONPATH", None)
    if site_dir is not None:
        env["PYTHONPATH"] = str(site_dir)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def tag_store_lines(listing: str) -> list[str]:
    section = listing.split("tag_store (raydog.tag_stores):", 1)[1]
    return section.split("transport (", 1)[0].strip().splitlines()


def test_the_example_installs_as_its_own_distribution(site_dir: Path) -> None:
    (dist_info,) = site_dir.glob("raydog_sqlite_tagstore-*.dist-info")
    assert "[raydog.tag_stores]" in (dist_info / "entry_points.txt").read_text()
    assert (site_dir / "raydog_sqlite" / "__init__.py").is_file()


def test_raydog_plugins_lists_it_only_once_installed(site_dir: Path) -> None:
    without = run(None, "-m", "raydog_core.cli", "plugins")
    assert without.returncode == 0, without.stderr
    assert not any(line.split()[0] == "sqlite" for line in tag_store_lines(without.stdout))

    listed = run(site_dir, "-m", "raydog_core.cli", "plugins")
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in tag_store_lines(listed.stdout) if line.split()[0] == "sqlite"]
    assert line.split()[1:3] == [DISTRIBUTION, "raydog_sqlite:SQLiteTagStore"]


def write_config(folder: Path, tag_store: Any) -> Path:
    config = memory_cluster_config("thirdparty", tag_store=tag_store)
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_config_naming_it_validates_without_creating_the_file(
    site_dir: Path, tmp_path: Path
) -> None:
    database = tmp_path / "tags.sqlite"
    config = write_config(tmp_path, {"type": "sqlite", "path": str(database)})
    validated = run(site_dir, "-m", "raydog_core.cli", "validate", str(config))
    assert validated.returncode == 0, validated.stderr
    assert "tag_store=sqlite" in validated.stdout
    assert not database.exists(), "validating a config must not open the store"


@pytest.mark.parametrize(
    ("tag_store", "message"),
    [
        (
            {"type": "sqlite", "pth": "/tmp/tags.sqlite"},
            "provider.tag_store.pth: unknown option (choices: busy_timeout, path)",
        ),
        ("sqlite", "provider.tag_store.path: missing required option"),
        (
            {"type": "sqlite", "path": "tags.sqlite"},
            "provider.tag_store.path: expected an absolute path",
        ),
        (
            {"type": "sqlite", "path": "/tmp/tags.sqlite", "busy_timeout": "10s"},
            "provider.tag_store.busy_timeout: expected a number, got str '10s'",
        ),
    ],
)
def test_a_wrong_option_is_a_config_error_at_its_key_path(
    site_dir: Path, tmp_path: Path, tag_store: Any, message: str
) -> None:
    validated = run(
        site_dir, "-m", "raydog_core.cli", "validate", str(write_config(tmp_path, tag_store))
    )
    assert validated.returncode == 2
    assert message in validated.stderr


def test_the_readme_documents_every_option(site_dir: Path) -> None:
    """The README's options table is what RayDog's reference generator makes of the class."""
    table = run(
        site_dir,
        "-c",
        "from raydog_core.reference import options_table; "
        "print(options_table('tag_store', 'sqlite'))",
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.strip() in (EXAMPLE / "README.md").read_text()


def test_the_examples_own_contract_tests_pass(site_dir: Path, example_copy: Path) -> None:
    tested = run(site_dir, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=example_copy)
    summary = tested.stdout.strip().splitlines()[-1] if tested.stdout.strip() else ""
    assert tested.returncode == 0, tested.stdout + tested.stderr
    passed = re.search(r"(\d+) passed", summary)
    contract_tests = [name for name in dir(TagStoreContract) if name.startswith("test_")]
    # The example has the required methods only: the optional contracts' tests (changes_since,
    # update_unless_deleted, max_value_bytes) are all that skip.
    optional = [
        name
        for kit in (TagStoreChangesContract, TagStoreTombstoneContract, TagStoreValueLimitContract)
        for name in dir(kit)
        if name.startswith("test_")
    ]
    assert passed and int(passed.group(1)) > len(contract_tests) - len(optional), summary
    assert f"{len(optional)} skipped" in summary and "failed" not in summary


def test_client_and_head_providers_share_tags_through_the_file(
    site_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    forget_memory_clusters: Callable[[str], None],
) -> None:
    """Ray's loader builds the provider with the example's store; Ray's threads call it (one at
    a time, through the core), and a head-side provider reads and writes the same file."""
    monkeypatch.syspath_prepend(str(site_dir))
    database = tmp_path / "tags.sqlite"
    config = memory_cluster_config(tag_store={"type": "sqlite", "path": str(database)})
    forget_memory_clusters(config["cluster_name"])
    client = load_provider(config)
    (head,) = client.create_node({}, head_tags(), 1)
    workers: list[str] = []
    errors: list[BaseException] = []

    def launch_workers() -> None:
        try:
            workers.extend(client.create_node({}, worker_tags(), 2))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=launch_workers) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert client.tags.flush(timeout=30)  # writes return at once; the sender sends them

    remote = client.prepare_for_head_node(bootstrap(config))
    on_head = RayDogNodeProvider(remote["provider"], config["cluster_name"])
    assert set(on_head.non_terminated_nodes({})) == {head, *workers}
    assert on_head.node_tags(head)[TAG_RAY_NODE_NAME] == "ray-head"
    on_head.set_node_tags(workers[0], {"written-by": "head"})
    assert on_head.tags.flush(timeout=30)
    client.non_terminated_nodes({})
    assert client.node_tags(workers[0])["written-by"] == "head"
    with contextlib.closing(sqlite3.connect(database)) as db:
        (stored,) = db.execute(
            "SELECT COUNT(DISTINCT node) FROM tags WHERE cluster = ?", (config["cluster_name"],)
        ).fetchone()
    assert stored == 1 + len(workers) == 9
    client.close()
    on_head.close()
