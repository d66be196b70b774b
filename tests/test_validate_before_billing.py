"""What `raydog validate` catches that would otherwise show only once instances run (and bill):
each test starts from `raydog init`'s YellowDog starter, valid as written, and makes one
mistake a new user makes."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from raydog_core import validation
from raydog_core.errors import ConfigError, ConfigErrors
from tests.commands import raydog


@pytest.fixture
def starter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`raydog init`'s YellowDog folder, with the SSH key its config names (in a private HOME);
    the working directory is that folder, as the docs say."""
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / ".ssh" / "raydog"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    assert raydog("init", "starter", cwd=tmp_path).returncode == 0
    folder = tmp_path / "starter"
    monkeypatch.chdir(folder)
    validation.validate(validation.load_file(folder / "cluster.yaml"), for_launch=True)
    return folder


def problems(folder: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> list[str]:
    """Every problem `raydog validate` finds in the folder's cluster.yaml, after ``edit``."""
    path = folder / "cluster.yaml"
    config = validation.load_file(path)
    if edit is not None:
        edit(config)
        path.write_text(yaml.safe_dump(config))
    try:
        validation.validate(validation.load_file(path), for_launch=True)
    except ConfigErrors as errors:
        return [str(error) for error in errors.errors]
    except ConfigError as error:
        return [str(error)]
    return []


def test_an_empty_userdata_file_is_refused(starter: Path) -> None:
    (starter / "node-setup-worker.sh").write_text("")
    (found,) = problems(starter)
    assert found.startswith("available_node_types.cpu_worker.node_config.userdata: ")
    assert f"{starter / 'node-setup-worker.sh'} is empty" in found


def test_node_setup_writes_nothing_when_it_fails(starter: Path, tmp_path: Path) -> None:
    """`> FILE` empties the file before the command runs; `-o FILE` writes all or nothing."""
    written = raydog("node-setup", "cluster.yaml", "--node-type", "head", "-o", "fresh.sh")
    assert written.returncode == 0, written.stderr
    printed = raydog("node-setup", "cluster.yaml", "--node-type", "head")
    assert (starter / "fresh.sh").read_text() == printed.stdout
    before = (starter / "node-setup-head.sh").read_text()
    (tmp_path / ".ssh" / "raydog").unlink()  # the key it must read
    for target in ("node-setup-head.sh", "new.sh"):
        failed = raydog("node-setup", "cluster.yaml", "--node-type", "head", "-o", target)
        assert failed.returncode == 2
        assert "auth.ssh_private_key: file not found" in failed.stderr
    assert (starter / "node-setup-head.sh").read_text() == before
    assert sorted(p.name for p in starter.iterdir() if p.name.endswith(".sh")) == [
        "fresh.sh",
        "node-setup-head.sh",
        "node-setup-worker.sh",
    ]


def test_a_missing_ssh_key_file_is_refused(starter: Path, tmp_path: Path) -> None:
    (tmp_path / ".ssh" / "raydog").unlink()
    (found,) = problems(starter)
    assert found.startswith(f"auth.ssh_private_key: file not found: {tmp_path}/.ssh/raydog ")


def test_no_ssh_key_where_ray_and_the_tunnel_need_one(starter: Path) -> None:
    (found,) = problems(starter, lambda config: config["auth"].pop("ssh_private_key"))
    assert found.startswith("auth.ssh_private_key: missing: the sshtunnel transport reaches")
    assert "`raydog node-setup` gives its public half to the yellowdog nodes" in found


def test_the_local_backend_with_the_default_ssh_tunnel_is_refused(tmp_path: Path) -> None:
    assert raydog("init", "--compute", "local", str(tmp_path / "c")).returncode == 0
    path = tmp_path / "c" / "cluster.yaml"
    config = yaml.safe_load(path.read_text())
    del config["provider"]["transport"]  # the default: sshtunnel
    path.write_text(yaml.safe_dump(config))
    result = raydog("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(
        "error: provider.transport: the sshtunnel transport reaches the head over SSH, but the "
        "local backend's nodes are not reached over SSH"
    )


def test_every_node_type_whose_names_do_not_fit_is_named(starter: Path) -> None:
    """YellowDog's names are at most 60 characters: the plugin's check, for each node type."""

    def lengthen(config: dict[str, Any]) -> None:
        config["cluster_name"] = "a-cluster-name-of-forty-characters-x1234"

    found = dict(line.split(": ", 1) for line in problems(starter, lengthen))
    assert sorted(found) == ["available_node_types.cpu_worker", "available_node_types.head"]
    assert "worker pool names of 61 characters" in found["available_node_types.head"]
    assert "worker pool names of 67 characters" in found["available_node_types.cpu_worker"]


def test_a_node_setup_made_before_the_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`raydog init` before the key exists, then the key: the head's setup does not have it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert raydog("init", "starter", cwd=tmp_path).returncode == 0
    key = tmp_path / ".ssh" / "raydog"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    monkeypatch.chdir(tmp_path / "starter")
    (found,) = problems(tmp_path / "starter")
    assert found.startswith("available_node_types.head.node_config: its setup ")
    assert "does not give the head the key of auth.ssh_private_key" in found
    assert "--node-type head -o node-setup-head.sh` again" in found


def test_the_heads_setup_on_a_worker_is_refused(starter: Path) -> None:
    head = (starter / "node-setup-head.sh").read_text()
    (starter / "node-setup-worker.sh").write_text(head)
    (found,) = problems(starter)
    assert found.startswith("available_node_types.cpu_worker.node_config: its setup ")
    assert "it was made for a head" in found


def test_a_setup_for_other_versions_of_python_and_ray_is_refused(starter: Path) -> None:
    """A client whose Ray changed since `raydog node-setup`: Ray would refuse the nodes."""
    worker = starter / "node-setup-worker.sh"
    text = worker.read_text()
    worker.write_text(text.replace(f" ray={ray.__version__} ", " ray=2.0.0 ", 1))
    (found,) = problems(starter)
    assert f"it installs python={platform.python_version()} ray=2.0.0, this client has" in found


def test_a_setup_that_no_longer_writes_its_marker_is_refused(starter: Path) -> None:
    worker = starter / "node-setup-worker.sh"
    worker.write_text(worker.read_text().replace("trap raydog_setup_finished EXIT\n", ""))
    (found,) = problems(starter)
    assert "it no longer writes its marker /opt/raydog/setup-finished" in found


def test_a_node_type_without_userdata_is_noted(starter: Path) -> None:
    """Valid (an image may have the setup baked in), but said: otherwise its tasks fail later."""
    path = starter / "cluster.yaml"
    config = yaml.safe_load(path.read_text())
    del config["available_node_types"]["cpu_worker"]["node_config"]["userdata"]
    path.write_text(yaml.safe_dump(config))
    result = raydog("validate", "cluster.yaml", cwd=starter)
    assert result.returncode == 0, result.stderr
    assert (
        "note: available_node_types.cpu_worker.node_config: no setup (userdata), so its tasks "
        "wait for /opt/raydog/setup-finished"
    ) in result.stdout
    assert "available_node_types.head.node_config" not in result.stdout
