"""A node's task starts only after its setup has finished: the composed scripts, run by bash."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from raydog_core import config as raydog_config
from raydog_core.errors import ConfigError
from raydog_core.interfaces import ClusterSpec
from raydog_core.node_setup import SETUP_FINISHED_ENV, end_marker
from tests.conftest import memory_cluster_config

WORKER_TASK = (
    "#!/usr/bin/env bash\n"
    "set -euo pipefail\n"
    'echo "task started; extra userdata: $(cat "$OUT/extra" 2>/dev/null || echo missing)"\n'
)


def yellowdog_config(**provider: Any) -> dict[str, Any]:
    """A YellowDog cluster config as a user writes it (nothing here reaches the platform)."""
    config = memory_cluster_config(**provider)
    config["provider"]["compute"] = {"type": "yellowdog", "cluster_namespace": "raydog-test"}
    for spec in config["available_node_types"].values():
        spec["node_config"] = {"compute_requirement_template": "yd-demo/template"}
    return config


def spec_of(cluster: dict[str, Any]) -> ClusterSpec:
    parsed = raydog_config.parse(cluster)
    return parsed.cluster_spec(parsed.tag_store.build(parsed.cluster_name))


def setup_script(extra_userdata: str) -> str:
    """The start of the setup ``raydog node-setup`` writes, with a backend's additions after it."""
    return "#!/usr/bin/env bash\nset -euo pipefail\n" + end_marker("test setup") + extra_userdata


@pytest.fixture
def node(tmp_path: Path) -> dict[str, str]:
    """A node's environment: where its setup marker goes, and a folder for what it writes."""
    marker = str(tmp_path / "setup-finished")
    return {**os.environ, SETUP_FINISHED_ENV: marker, "OUT": str(tmp_path)}


def test_a_task_starts_only_after_the_whole_setup_has_finished(
    tmp_path: Path, node: dict[str, str]
) -> None:
    spec = spec_of(yellowdog_config(ray_worker_node_task_script=WORKER_TASK))
    output = tmp_path / "task-output"
    with output.open("w") as sink:
        task = subprocess.Popen(
            ["bash", "-c", spec.worker_script], env=node, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        time.sleep(1.5)
        assert task.poll() is None, output.read_text()
        assert "task started" not in output.read_text()
        # The setup's last step (as extra_userdata is, appended by the backend) takes a while.
        setup = subprocess.run(
            ["bash", "-c", setup_script('sleep 2\necho done > "$OUT/extra"\n')],
            env=node,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert setup.returncode == 0, setup.stderr
        assert task.wait(timeout=60) == 0, output.read_text()
    finally:
        if task.poll() is None:
            task.kill()
    lines = output.read_text().splitlines()
    assert lines[0].startswith("RayDog: waiting up to 20 minutes for this node's setup to finish")
    assert lines[1:] == [
        "RayDog: node setup finished; starting this task",
        "task started; extra userdata: done",
    ]


def test_a_task_whose_setup_never_finishes_fails_with_a_clear_line(
    tmp_path: Path, node: dict[str, str]
) -> None:
    cluster = yellowdog_config(ray_worker_node_task_script=WORKER_TASK)
    cluster["provider"]["node_setup_timeout_minutes"] = 0.05
    task = subprocess.run(
        ["bash", "-c", spec_of(cluster).worker_script],
        env=node,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert task.returncode == 1
    assert "task started" not in task.stdout
    assert (
        "RayDog: this node's setup did not finish within 0.05 minutes "
        f"(no {tmp_path}/setup-finished; provider.node_setup_timeout_minutes): "
        "not starting this task." in task.stderr
    )


def test_a_failed_setup_leaves_no_marker_even_from_an_earlier_setup(
    tmp_path: Path, node: dict[str, str]
) -> None:
    marker = tmp_path / "setup-finished"
    marker.write_text("baked into the image\n")
    setup = subprocess.run(
        ["bash", "-c", setup_script("false\n")], env=node, capture_output=True, text=True
    )
    assert setup.returncode == 1
    assert "RayDog: node setup failed (exit 1); no task will start here" in setup.stderr
    assert not marker.exists()


def test_the_head_waits_before_its_tag_server_starts() -> None:
    head = "#!/usr/bin/env bash\necho head task\n"
    cluster = yellowdog_config(ray_head_node_task_script=head)
    cluster["provider"]["tag_store"] = "valkey"
    script = spec_of(cluster).head_script
    assert script.startswith("#!/usr/bin/env bash\n# Started by RayDog: wait for this node's setup")
    wait = script.index("until [ -e ")
    environment = script.index(". /etc/profile.d/raydog.sh")  # the server's python3: the venv's
    server = script.index("raydog_backends.keyvalue.server")
    assert wait < environment < server < script.index("echo head task")


def test_nodes_without_a_setup_phase_do_not_wait() -> None:
    for compute in ("memory", "local"):
        cluster = memory_cluster_config(
            compute=compute,
            ray_head_node_task_script="#!/bin/bash\nsleep 1\n",
            ray_worker_node_task_script=WORKER_TASK,
        )
        spec = spec_of(cluster)
        assert spec.head_script == "#!/bin/bash\nsleep 1\n", compute
        assert spec.worker_script == WORKER_TASK, compute


@pytest.mark.parametrize("value", [0, -1, "ten", True, None])
def test_the_setup_time_limit_is_checked(value: object) -> None:
    cluster = yellowdog_config(node_setup_timeout_minutes=value)
    with pytest.raises(ConfigError) as error:
        raydog_config.parse(cluster)
    assert str(error.value).startswith("provider.node_setup_timeout_minutes: expected a number")


def test_the_node_setup_ends_by_writing_the_marker(tmp_path: Path) -> None:
    """What `raydog node-setup` prints arms the marker before any install step."""
    import yaml

    from tests.commands import raydog

    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(yellowdog_config()))
    result = raydog("node-setup", str(path), "--node-type", "cpu")
    assert result.returncode == 0, result.stderr
    armed = result.stdout.index("trap raydog_setup_finished EXIT")
    assert result.stdout.index("yd-agent-installer") < armed < result.stdout.index("uv venv")
    # What the backend appends (the tag store's install, extra_userdata) runs with the venv's
    # Python, not the system's.
    assert "\n. /etc/profile.d/raydog.sh  # the rest of this setup" in result.stdout
