"""The fleet commands (``raydog clusters``, ``raydog shutdown``): every cluster a compute
backend can see, and ending one or every failed run's leftovers, without a config."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from raydog_backends.local import LocalComputeBackend
from raydog_backends.process_nodes.processes import pid_alive
from raydog_backends.yellowdog.launch import Launcher
from raydog_backends.yellowdog.names import ClusterNames
from raydog_backends.yellowdog_emulator import EmulatorClient
from raydog_core import cli
from raydog_core.interfaces import LaunchRequest, NodeState
from tests.test_local_backend import launch_cluster, record
from tests.test_local_backend import make_spec as local_spec
from tests.test_yellowdog_backend import yellowdog_cluster_config
from tests.waiting import wait_until
from tests.yellowdog_fixtures import NAMESPACE, make_backend, make_spec

pytest_plugins = ["tests.yellowdog_fixtures"]

HEAD = LaunchRequest("head", 1, True)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()  # what came before (a launch's progress lines)
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def clusters(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code, out = run(capsys, "clusters", "--compute", "yellowdog", "--json", *extra)
    assert code == 0
    return {cluster["name"]: cluster for cluster in json.loads(out)["clusters"]}


def interrupted_ray_up(monkeypatch: pytest.MonkeyPatch, cluster_name: str) -> None:
    """A `ray up` killed after its head's pool was made: nothing undone, no head task."""

    def killed(*_: object, **__: object) -> list[str]:
        raise KeyboardInterrupt

    backend = make_backend(make_spec(cluster_name))
    with monkeypatch.context() as patch:
        patch.setattr(Launcher, "_add_tasks", killed)
        patch.setattr(Launcher, "_undo_head", lambda *_: [])
        with pytest.raises(KeyboardInterrupt):
            backend.launch(HEAD)
    backend.close()


def test_clusters_and_shutdown_find_and_end_yellowdog_clusters_without_their_config(
    yd_env: str,
    emulator_client: EmulatorClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running = make_backend(make_spec("fleet-running"))
    running.launch(HEAD)
    running.close()
    interrupted_ray_up(monkeypatch, "fleet-failed")

    found = clusters(capsys, "--namespace", NAMESPACE)
    assert {name: c["state"] for name, c in found.items()} == {
        "fleet-running": "running",
        "fleet-failed": "leftovers",
    }
    assert found["fleet-running"]["head_address"]
    assert found["fleet-running"]["nodes"] == {"head": {"running": 1}}
    assert found["fleet-running"]["ends"] > found["fleet-running"]["started"]
    assert any("worker pool fleet-failed_" in item for item in found["fleet-failed"]["billable"])

    code, out = run(capsys, "shutdown", "--leftovers", "--namespace", NAMESPACE, "--yes")
    assert (
        code == 0
        and "ended fleet-failed: " in out
        and "fleet-running" not in out.split("ended")[-1]
    )
    left = [leak.split(" ")[2] for leak in emulator_client.leaks()]
    assert left and all(name.startswith("fleet-running_") for name in left), left
    assert set(clusters(capsys, "--namespace", NAMESPACE)) == {"fleet-running"}

    code, out = run(capsys, "shutdown", "fleet-running", "--namespace", NAMESPACE, "--yes")
    assert code == 0 and "ended fleet-running: work requirement fleet-running_" in out
    assert emulator_client.leaks() == []
    assert clusters(capsys, "--namespace", NAMESPACE) == {}

    code, out = run(capsys, "shutdown", "fleet-running", "--namespace", NAMESPACE, "--yes")
    assert code == 0 and "nothing to end" in out


def test_shutdown_asks_first_and_ends_nothing_unless_told_yes(
    yd_env: str,
    emulator_client: EmulatorClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    interrupted_ray_up(monkeypatch, "fleet-asked")
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out = run(capsys, "shutdown", "fleet-asked", "--namespace", NAMESPACE)
    assert code == 1 and "worker pool fleet-asked_" in out and "nothing ended" in out
    assert any(leak.startswith("worker pool fleet-asked_") for leak in emulator_client.leaks())
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert run(capsys, "shutdown", "fleet-asked", "--namespace", NAMESPACE)[0] == 0
    assert emulator_client.leaks() == []


def test_objects_named_like_raydogs_but_not_raydogs_are_left_alone(
    yd_env: str,
    emulator_client: EmulatorClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from yellowdog_client.model import RunSpecification, TaskGroup, WorkRequirement

    from tests.yellowdog_fixtures import sdk_client

    names = ClusterNames.for_cluster("other-tool", [])
    client = sdk_client(yd_env)
    group = TaskGroup(
        name="batch", tag="not-ray", runSpecification=RunSpecification(taskTypes=["bash"])
    )
    client.work_client.add_work_requirement(
        WorkRequirement(
            namespace=NAMESPACE, name=names.work_requirement("0000001"), taskGroups=[group]
        )
    )
    client.close()
    assert clusters(capsys, "--namespace", NAMESPACE) == {}
    code, out = run(capsys, "shutdown", "other-tool", "--namespace", NAMESPACE, "--yes")
    assert code == 0 and "nothing to end" in out
    assert len(emulator_client.leaks()) == 1


def test_a_backend_without_a_fleet_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["clusters", "--compute", "memory"])
    assert code == 2
    assert "does not implement ComputeBackend.fleet" in capsys.readouterr().err


def test_a_failed_end_is_an_error_naming_what_failed(
    yd_env: str,
    emulator_client: EmulatorClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    interrupted_ray_up(monkeypatch, "fleet-stuck")
    emulator_client.fail("/workerPools/", 500, method="DELETE")
    # The namespace, the backend and one attempt per request from the config next to it.
    Path("cluster.yaml").write_text(yaml.safe_dump(yellowdog_cluster_config("elsewhere")))
    before = emulator_client.request_count()
    code = cli.main(["shutdown", "fleet-stuck", "--yes"])
    error = capsys.readouterr().err
    assert code == 2 and "shut down worker pool fleet-stuck_" in error, error
    deletes = [r for r in emulator_client.requests(before) if r["method"] == "DELETE"]
    assert len(deletes) == 1, f"the config's api_max_attempts: 1 was not kept: {deletes}"


# --- local clusters -----------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux only")
def test_clusters_and_shutdown_find_and_end_local_clusters_without_their_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two local clusters of sleeping nodes: one whole, one whose head died (its worker left)."""
    whole = LocalComputeBackend(local_spec(), grace_seconds=1.0)
    broken = LocalComputeBackend(local_spec(), grace_seconds=1.0)
    try:
        launch_cluster(whole, workers=1)
        dead_head, (orphan,) = launch_cluster(broken, workers=1)
        records = [*whole.folder.records(), *broken.folder.records()]
        head_pid = record(broken, dead_head).pid
        assert head_pid is not None
        os.killpg(head_pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(head_pid), "the broken cluster's head to end")

        code, out = run(capsys, "clusters", "--compute", "local", "--json")
        found = {c["name"]: c for c in json.loads(out)["clusters"]}
        assert {name: c["state"] for name, c in found.items()} == {
            whole.spec.cluster_name: "running",
            broken.spec.cluster_name: "leftovers",
        }
        running = found[whole.spec.cluster_name]
        assert running["nodes"] == {"head": {"running": 1}, "cpu": {"running": 1}}
        assert running["head_address"].startswith("127.")
        assert found[broken.spec.cluster_name]["nodes"]["cpu"] == {"running": 1}

        code, out = run(capsys, "shutdown", "--leftovers", "--compute", "local", "--yes")
        assert code == 0 and f"node {orphan} (running)" in out
        assert not broken.folder.root.exists()
        assert [info.state for info in whole.describe()] == [NodeState.RUNNING] * 2

        code, out = run(capsys, "shutdown", whole.spec.cluster_name, "--compute", "local", "--yes")
        assert code == 0 and not whole.folder.root.exists()
        assert not any(pid_alive(r.pid) for r in records if r.pid is not None)
        assert not any(Path(r.tmp_dir).exists() for r in records)
        assert run(capsys, "clusters", "--compute", "local", "--json")[1].count('"name"') == 0
        code, out = run(capsys, "shutdown", whole.spec.cluster_name, "--compute", "local")
        assert code == 0 and "nothing to end" in out
    finally:
        whole.shutdown()
        broken.shutdown()
