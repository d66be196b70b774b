"""End to end: yellowdog-ray 2.0's example config (tests/data/yellowdog-ray, in its shape) with
only ``module:`` changed runs on the YellowDog emulator: `ray up`, a job on workers, `ray down`.

What RayDog must do for it (issue 17): no wait for RayDog's setup marker on nodes whose userdata
is yellowdog-ray's setup (it never writes one); the head's own valkey-server on the tag store's
port is used, not fought over; the head's ``resources: {CPU: 0}`` keeps the job's tasks off it;
``ray up`` says how long the cluster lives (0.5 h, as the config says).

What the emulator needs changed, and nothing else (``for_the_emulator``): its own compute plugin
and the direct transport (an emulated node has no SSH server); the addresses and ports each
emulated node gets on this shared machine instead of Ray's and Valkey's fixed ones (6379, 16667,
0.0.0.0); the agent's home (``/opt/yellowdog/agent``) is the task's folder; the valkey-server their
extra_userdata would install is this machine's. The emulated setup takes no time: yellowdog-ray's
task scripts do not wait for their own setup (on the platform too), which is not RayDog's to fix.

    .venv/bin/python -m pytest -m e2e tests/e2e/test_yellowdog_ray_config.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from raydog_backends.process_nodes.addresses import free_port
from raydog_core.testing.lifecycle import JOB, ran_on
from tests.e2e.emulated import EmulatedCluster, emulator_running_tasks
from tests.servers import valkey_server_binary
from tests.yellowdog_fixtures import EmulatorProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="local task processes"),
]

DATA = Path(__file__).resolve().parents[1] / "data" / "yellowdog-ray"
NODE_FLAGS = (
    " --node-ip-address=$RAYDOG_NODE_IP --temp-dir=$RAY_TMPDIR/ray"
    " --dashboard-agent-listen-port=$RAYDOG_DASHBOARD_AGENT_PORT"
)


def for_the_emulator(config: dict[str, Any], store_port: int) -> dict[str, Any]:
    """Only what running on the emulator needs (see the module docstring)."""
    provider = config["provider"]
    provider["compute"] = "yellowdog-emulated"
    provider["transport"] = "direct"
    provider["head_node_tag_server_port"] = store_port
    for key in ("ray_head_node_task_script", "ray_worker_node_task_script"):
        script = provider[key]
        script = script.replace(
            "$HOME/valkey*/bin/valkey-server --port 16667",
            f"{valkey_server_binary()} --port {store_port} --bind 127.0.0.1 $RAYDOG_NODE_IP",
        )
        script = script.replace("/opt/yellowdog/agent/", "$HOME/")
        script = script.replace(":6379", ":$RAYDOG_GCS_PORT").replace("=6379", "=$RAYDOG_GCS_PORT")
        script = script.replace("--dashboard-host=0.0.0.0", "--dashboard-host=$RAYDOG_NODE_IP")
        flags = NODE_FLAGS
        if "--head" in script:
            flags += " --ray-client-server-port=$RAYDOG_CLIENT_PORT"
        start = "ray start --disable-usage-stats"
        provider[key] = script.replace(start, start + flags)
    return config


@dataclass
class YellowDogRayCluster(EmulatedCluster):
    def write_config(self) -> Path:
        shutil.copytree(DATA / "scripts", self.folder / "scripts")
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.folder / "private-key")],
            check=True,
        )
        config = yaml.safe_load((DATA / "raydog.yaml").read_text())
        assert config["provider"]["module"] == "raydog_core.RayDogNodeProvider"
        config["cluster_name"] = self.cluster_name
        path = self.folder / "raydog.yaml"
        path.write_text(yaml.safe_dump(for_the_emulator(config, free_port()), sort_keys=False))
        return path


@dataclass
class Run:
    up: str
    head_ip: str
    job: str
    worker_ips: set[str]
    leftovers: list[str]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    work_dir = tmp_path_factory.mktemp("e2e-yellowdog-ray")
    # Unscaled: the config's lifetime (0.5 h, each task's timeout too) must outlast the module,
    # and nothing here waits for an idle shutdown.
    with emulator_running_tasks(work_dir, "--setup-delay", "0", time_scale="1") as process:
        yield process


@pytest.fixture(scope="module")
def run(emulator: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    cluster = YellowDogRayCluster(
        tmp_path_factory.mktemp("e2e-ydr"),
        f"raydog-cluster-{uuid.uuid4().hex[:6]}",
        emulator_url=emulator.url,
    )
    config = str(cluster.config)
    try:
        up = cluster.ray("up", "-y", "--no-config-cache", config, timeout=300)
        (head,) = cluster.nodes().values()
        # Their head_start_ray_commands is empty: `ray up` returns before the head's Ray runs.
        deadline = time.monotonic() + 120
        while cluster.probe("exec", config, "ray status").startswith("FAILED"):
            assert time.monotonic() < deadline, "the head's Ray never started"
            time.sleep(2)
        workers: set[str] = set()
        # The example's worker type offers 1 CPU: tasks of 1 CPU each.
        job = cluster.ray("submit", "--no-config-cache", config, str(JOB), "1", timeout=600)
        workers |= {str(n.internal_ip) for n in cluster.workers(cluster.nodes()).values()}
        cluster.ray("down", "-y", config, timeout=300)
        yield Run(up, str(head.internal_ip), job, workers, cluster.leftovers())
    finally:
        cluster.destroy()


def test_ray_up_says_how_long_the_cluster_lives(run: Run) -> None:
    assert "RayDog: cluster lifetime 0.5 h (provider.cluster_lifetime_hours" in run.up, run.up[
        -3000:
    ]


def test_the_jobs_tasks_run_on_workers_only(run: Run) -> None:
    ran = ran_on(run.job)
    assert ran["head"] == run.head_ip
    assert len(ran["tasks"]) == 2 and set(ran["tasks"]) <= run.worker_ips, (ran, run.worker_ips)


def test_ray_down_leaves_nothing(run: Run) -> None:
    assert run.leftovers == []
