"""A node's task starts only after its setup has finished: the composed scripts, run by bash."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from raydog_core import cluster_plugins, config_parsing, node_setup
from raydog_core.errors import ConfigError
from raydog_core.interfaces import ClusterSpec
from raydog_core.node_setup import SETUP_FINISHED, SETUP_FINISHED_ENV, end_marker
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
    parsed = config_parsing.parse(cluster)
    return cluster_plugins.cluster_spec(parsed, parsed.tag_store.build(parsed.cluster_name))


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
    assert script.startswith("#!/usr/bin/env bash\n")
    wait = script.index("# Started by RayDog: wait for this node's setup")
    assert wait < script.index("until [ -e ")
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
        assert spec.head_script.endswith("\nsleep 1\n"), compute
        assert spec.worker_script == WORKER_TASK, compute
        for script in (spec.head_script, *spec.worker_scripts.values()):
            assert SETUP_FINISHED not in script, compute


@pytest.mark.parametrize("value", [0, -1, "ten", True, None])
def test_the_setup_time_limit_is_checked(value: object) -> None:
    cluster = yellowdog_config(node_setup_timeout_minutes=value)
    with pytest.raises(ConfigError) as error:
        config_parsing.parse(cluster)
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


# A node setup that is not RayDog's, in the shape of yellowdog-ray's example setup
# (github yellowdog/raydog, examples/autoscaler/scripts/example-node-setup.sh): the YellowDog
# agent, then Python and Ray in a venv of the agent's user; it writes no RayDog marker.
OTHER_SETUP = (
    "#!/usr/bin/bash\nset -euo pipefail\n"
    "curl -LsSf https://example.invalid/yd-agent-installer.sh | bash\n"
    "uv venv --python 3.11 /opt/yellowdog/agent/venv\n"
    "echo 'source /opt/yellowdog/agent/venv/bin/activate' >> /opt/yellowdog/agent/.bashrc\n"
)


def test_only_nodes_whose_userdata_is_raydogs_setup_wait_for_it() -> None:
    """yellowdog-ray's setup never writes RayDog's marker: its nodes' tasks (and the head's
    setup commands) must not wait 20 minutes for it. Nodes with RayDog's setup still do."""
    cluster = yellowdog_config(ray_worker_node_task_script=WORKER_TASK)
    types = cluster["available_node_types"]
    types["head"]["node_config"]["userdata"] = OTHER_SETUP
    types["cpu"]["node_config"]["userdata"] = setup_script("echo extra\n")
    types["other"] = {
        "resources": {"CPU": 2},
        "max_workers": 2,
        "node_config": {"compute_requirement_template": "t", "userdata": OTHER_SETUP},
    }
    spec = spec_of(cluster)
    assert SETUP_FINISHED not in spec.head_script
    assert SETUP_FINISHED not in spec.script("other", is_head=False)
    assert SETUP_FINISHED in spec.script("cpu", is_head=False)
    parsed = config_parsing.parse(cluster)
    assert node_setup.head_setup_commands(parsed, ["echo mine"]) == ["echo mine"]
    assert not node_setup.ships_wheels(parsed)


def test_raydogs_own_setup_is_recognised() -> None:
    """What `raydog node-setup` prints (and a hand-written setup that writes the marker, as
    examples/yellowdog/docker-setup.sh does) is RayDog's setup; other userdata is not."""
    parsed = config_parsing.parse(yellowdog_config())
    versions = node_setup.Versions("3.11.9", "2.49.2", "0.1.0")
    for node_type in ("head", "cpu"):
        assert node_setup.is_raydog_setup(node_setup.common_setup(parsed, node_type, versions))
    docker = Path(__file__).parents[1] / "examples" / "yellowdog" / "docker-setup.sh"
    assert node_setup.is_raydog_setup(docker.read_text())
    assert not node_setup.is_raydog_setup(OTHER_SETUP)


def test_without_userdata_the_image_is_taken_to_run_raydogs_setup() -> None:
    """A node type with no userdata boots an image: RayDog cannot tell, so its tasks wait."""
    spec = spec_of(yellowdog_config())
    assert SETUP_FINISHED in spec.head_script
    assert SETUP_FINISHED in spec.script("cpu", is_head=False)
