"""The `raydog` command as a user runs it: output and exit codes, never a traceback.

`raydog(...)` runs the command's `main` in this process; `simulate`, `status` and `doctor` build
providers, whose tag caches install signal handlers for their process, so they run in a process
of their own (`raydog_process`), as does the test of the installed entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from raydog_core.interfaces import NodeState
from tests.commands import raydog, raydog_process, write_config
from tests.conftest import memory_cluster_config
from tests.ray_helpers import head_tags, load_provider, worker_tags


def test_simulate_draws_the_cluster_and_prints_its_figures(tmp_path: Path) -> None:
    path = write_config(tmp_path, memory_cluster_config())
    args = ("simulate", str(path), "--demand", "8 CPU for 5m", "--launch-delay", "60s")
    result = raydog_process(*args, "--events")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "workers per node type (simulated minutes)" in result.stdout
    assert any("cpu" in line and "│" in line for line in lines), "no legend in the chart"
    launches = [line for line in lines if " launch " in line]
    readies = [line for line in lines if " ready " in line]
    terminations = [line for line in lines if " terminate " in line]
    assert len(launches) == len(readies) == len(terminations) == 4
    assert readies[0].split()[0] == "1m05s"
    figures = {line.split()[0]: line.split() for line in lines if line.startswith(("cpu ", "all "))}
    assert figures["cpu"][1] == "4" and figures["all"][1] == "4"
    assert lines[-1] == "workers at the end: none"

    as_json = raydog_process(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    cpu = summary["node_types"]["cpu"]
    assert (cpu["peak"], cpu["launches"], cpu["terminations"]) == (4, 4, 4)
    assert f"{cpu['node_hours']:.2f}" == figures["cpu"][2]
    assert summary["node_types"]["head"]["node_hours"] == pytest.approx(
        summary["duration_s"] / 3600, abs=1e-3
    )
    assert summary["peak_workers"] == 4 and summary["workers_at_end"] == {}


def test_simulate_unavailable_shows_ray_falling_back_to_another_type(tmp_path: Path) -> None:
    """Ray prefers `cpu` for this demand; its pool cannot provision, so `big` does the work."""
    config = memory_cluster_config()
    config["available_node_types"]["big"] = {"resources": {"CPU": 4}, "max_workers": 2}
    path = write_config(tmp_path, config)
    args = ("simulate", str(path), "--demand", "4 CPU for 10m", "--launch-delay", "60s", "--json")
    preferred = json.loads(raydog_process(*args).stdout)["node_types"]
    assert preferred["cpu"]["launches"] > 0 and preferred["big"]["launches"] == 0

    result = raydog_process(*args, "--unavailable", "cpu=quota exceeded")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    failed = [e for e in summary["events"] if e["action"] == "failed"]
    assert failed and {(e["node_type"], e["detail"]) for e in failed} == {("cpu", "quota exceeded")}
    big = [e for e in summary["events"] if e["node_type"] == "big" and e["action"] == "ready"]
    assert big and big[0]["t"] > failed[0]["t"]
    assert summary["node_types"]["big"]["peak"] > 0
    assert summary["node_types"]["cpu"]["failed_launches"] == len(failed)

    refused = raydog_process(
        "simulate", str(path), "--demand", "1 CPU for 1m", "--unavailable", "head"
    )
    assert refused.returncode != 0 and "--unavailable" in refused.stderr


def test_simulate_rejects_a_demand_it_cannot_read(tmp_path: Path) -> None:
    result = raydog(
        "simulate", str(write_config(tmp_path, memory_cluster_config())), "--demand", "lots"
    )
    assert result.returncode == 2
    assert "--demand: expected e.g. '8 CPU for 10m'" in result.stderr
    assert "Traceback" not in result.stderr


def test_node_setup_pins_the_clients_versions_and_key(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = memory_cluster_config()
    config["auth"] = {"ssh_user": "ubuntu", "ssh_private_key": str(key)}
    path = write_config(tmp_path, config)
    head = raydog("node-setup", str(path), "--node-type", "head")
    worker = raydog("node-setup", str(path), "--node-type", "cpu")
    assert head.returncode == 0 and worker.returncode == 0, head.stderr + worker.stderr
    python = ".".join(map(str, sys.version_info[:3]))
    assert f"--python {python} /opt/raydog/venv\n" in head.stdout
    assert f"'ray[default]=={ray.__version__}'" in head.stdout
    assert "'raydog" not in head.stdout and "'raydog" not in worker.stdout  # wheels, not an index
    public = (tmp_path / "id_ed25519.pub").read_text().strip()
    assert public in head.stdout and "RAYDOG_USER=ubuntu" in head.stdout
    # The key is in place before the long installs, so `ray up` is not refused meanwhile; uv
    # keeps the Python it downloads out of root's home (tasks run as another user).
    assert head.stdout.index("authorized_keys") < head.stdout.index("uv venv")
    assert "UV_PYTHON_INSTALL_DIR=/opt/raydog/python" in head.stdout
    assert "PRIVATE KEY" not in head.stdout
    syntax = subprocess.run(["bash", "-n"], input=head.stdout, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


def test_node_setup_names_an_unknown_node_type(tmp_path: Path) -> None:
    result = raydog(
        "node-setup", str(write_config(tmp_path, memory_cluster_config())), "--node-type", "gpu"
    )
    assert result.returncode == 2
    assert "--node-type: no node type 'gpu' (choices: cpu, head)" in result.stderr


@pytest.mark.parametrize(
    "args",
    [("node-setup", "CONFIG", "--node-type", "gpu"), ("node-setup", "CONFIG"), ("--version",)],
    ids=["config-error", "missing-option", "unknown-option"],
)
def test_the_installed_command_prints_and_exits_as_main_does(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """The tests above run ``main`` in this process; a user types ``raydog`` (the script pip
    installs) or ``python -m raydog_core.cli``: each prints the same and exits with the same
    code, a usage error included (argparse's ``SystemExit(2)``)."""
    config = str(write_config(tmp_path, memory_cluster_config()))
    args = tuple(config if arg == "CONFIG" else arg for arg in args)
    console_script = subprocess.run(
        [str(Path(sys.executable).with_name("raydog")), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    seen = [
        (result.returncode, result.stdout, result.stderr)
        for result in (console_script, raydog_process(*args), raydog(*args))
    ]
    assert seen[0][0] == 2 and seen[0][2].startswith(("error: ", "usage: raydog")), seen[0]
    assert seen[0] == seen[1] == seen[2]


def test_doctor_flags_a_key_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    os.chmod(key, 0o644)
    config = memory_cluster_config()
    config["auth"] = {"ssh_user": "ubuntu", "ssh_private_key": str(key)}
    result = raydog_process("doctor", str(write_config(tmp_path, config)))
    assert result.returncode == 1
    assert f"FAIL  ssh key: {key} is readable by others" in result.stdout
    assert f"fix: chmod 600 {key}" in result.stdout
    os.chmod(key, 0o600)
    again = raydog_process("doctor", str(write_config(tmp_path, config)))
    assert again.returncode == 0, again.stdout
    assert again.stdout.splitlines()[-1].endswith("0 failed")


def test_doctor_reports_a_bad_config_as_a_failed_check(tmp_path: Path) -> None:
    config = memory_cluster_config(compute="nosuch")
    result = raydog("doctor", str(write_config(tmp_path, config)))
    assert result.returncode == 1
    assert "FAIL  config: provider.compute: no compute plugin named 'nosuch'" in result.stdout


def test_status_of_a_cluster_that_is_not_up(tmp_path: Path) -> None:
    result = raydog_process("status", str(write_config(tmp_path, memory_cluster_config())))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "no nodes"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux")
def test_status_shows_an_ended_node_every_time_it_is_asked(tmp_path: Path) -> None:
    """`raydog status` looks twice (the provider's snapshot, then the backend) and acts on
    nothing, so a node whose task ended stays listed with why, until the autoscaler acts."""
    config = memory_cluster_config(
        compute="local",
        ray_head_node_task_script="#!/bin/bash\nexec sleep infinity\n",
        ray_worker_node_task_script="#!/bin/bash\nexit 3\n",
    )
    path = write_config(tmp_path, config)
    provider = load_provider(config)
    try:
        provider.create_node({}, head_tags(), 1)
        (worker,) = provider.create_node({}, worker_tags(), 1)
        deadline = time.monotonic() + 30
        while {i.node_id: i.state for i in provider.compute.describe()}.get(worker) is not (
            NodeState.TERMINATED
        ):
            assert time.monotonic() < deadline, "the worker's task script did not end"
            time.sleep(0.1)
        for _ in range(2):
            result = raydog_process("status", str(path))
            assert result.returncode == 0, result.stderr
            (line,) = [line for line in result.stdout.splitlines() if line.startswith(worker)]
            assert "terminated (task script ended)" in line
    finally:
        provider.compute.shutdown()


def test_the_config_testing_example_passes(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "testing"
    # -n0: the repository's pytest options would spread its four quick tests over four xdist
    # workers, each importing Ray (9 CPU-seconds on a machine whose cores the suite keeps busy).
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n0", str(example)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_init_yellowdog_writes_a_config_that_validates_and_its_companions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / ".ssh" / "raydog"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    result = raydog("init", "starter", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "starter"
    names = {p.name for p in folder.iterdir()}
    assert names == {"cluster.yaml", "node-setup-head.sh", "node-setup-worker.sh", ".env"}
    valid = raydog("validate", "cluster.yaml", cwd=folder)
    assert valid.returncode == 0, valid.stderr
    env = (folder / ".env").read_text()
    assignments = [line for line in env.splitlines() if "=" in line and not line.startswith("#")]
    assert assignments == ["YD_API_KEY_ID=", "YD_API_KEY_SECRET=", "YD_API_URL="]
    assert (folder / ".env").stat().st_mode & 0o077 == 0
    # The node setup is `raydog node-setup`'s output for the config as written.
    for node_type, name in (("head", "node-setup-head.sh"), ("cpu_worker", "node-setup-worker.sh")):
        printed = raydog("node-setup", "cluster.yaml", "--node-type", node_type, cwd=folder)
        assert printed.returncode == 0, printed.stderr
        assert (folder / name).read_text() == printed.stdout
        assert subprocess.run(["bash", "-n", str(folder / name)]).returncode == 0
    assert key.with_suffix(".pub").read_text().strip() in printed.stdout


def test_init_before_the_ssh_key_exists_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    result = raydog("init", str(tmp_path / "starter"))
    assert result.returncode == 0, result.stderr
    assert "does not exist yet, so the node setup gives no SSH access" in result.stdout
    folder = tmp_path / "starter"
    refused = raydog("validate", "cluster.yaml", cwd=folder)
    assert refused.returncode == 2
    key = tmp_path / ".ssh" / "raydog"
    assert f"error: auth.ssh_private_key: file not found: {key} " in refused.stderr
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    for node_type, name in (("head", "node-setup-head.sh"), ("cpu_worker", "node-setup-worker.sh")):
        written = raydog(
            "node-setup", "cluster.yaml", "--node-type", node_type, "-o", name, cwd=folder
        )
        assert written.returncode == 0, written.stderr
    valid = raydog("validate", "cluster.yaml", cwd=folder)
    assert valid.returncode == 0, valid.stderr


def test_init_local_writes_one_config_that_validates(tmp_path: Path) -> None:
    result = raydog("init", "--compute", "local", str(tmp_path / "here"))
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "here").iterdir()] == ["cluster.yaml"]
    valid = raydog("validate", str(tmp_path / "here" / "cluster.yaml"))
    assert valid.returncode == 0, valid.stderr


@pytest.mark.parametrize("compute", ["local", "yellowdog"])
def test_a_starter_config_simulates_as_written(tmp_path: Path, compute: str) -> None:
    """A new user's next step after `raydog init`: what would the cluster do?"""
    assert raydog("init", "--compute", compute, str(tmp_path / "c")).returncode == 0
    result = raydog_process(
        "simulate", "cluster.yaml", "--demand", "8 CPU for 5m", cwd=tmp_path / "c"
    )
    assert result.returncode == 0, result.stderr
    assert "workers per node type (simulated minutes)" in result.stdout


def test_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "node-setup-head.sh").write_text("mine\n")
    result = raydog("init", str(tmp_path))
    assert result.returncode == 2
    assert "node-setup-head.sh already there; nothing written" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["node-setup-head.sh"]
    assert (tmp_path / "node-setup-head.sh").read_text() == "mine\n"
