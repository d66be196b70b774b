"""End to end: nodes set up as YellowDog runs them, up to Ray running as the agent's user.

The userdata a node type gets (``raydog node-setup``'s script, its ``extra_userdata``, what the
backend appends) runs as root at boot with no ``HOME``; the head's and a worker's tasks, and the
command ``ray up`` runs on the head over SSH (the wheel install), run as ``yd-agent`` with its
own home (``tests/node_machines.py`` says how each node is isolated on this machine). The head
starts Ray and the tag store's server, the worker joins it, and a Ray task on the worker reports
what it ran with. Every example config with userdata goes through it.

Run Ray tests under the shared lock::

    flock /work/ray-e2e.lock .venv/bin/python -m pytest tests/e2e/test_node_setup_users.py
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from raydog_backends.keyvalue.store import PASSWORD_SECRET
from raydog_backends.process_nodes.addresses import LoopbackAddresses, free_port
from raydog_backends.process_nodes.processes import NodeProcess
from raydog_backends.yellowdog.launch import _task_script
from raydog_backends.yellowdog.pools import Pools
from raydog_core import cluster_plugins, config_parsing, file_references, head_packages, node_setup
from raydog_core import config as raydog_config
from raydog_core.cli import node_setup_text
from tests.conftest import memory_cluster_config
from tests.node_machines import (
    AGENT_HOME,
    UV_DEFAULT_PYTHONS,
    NodeMachine,
    find_uv,
    stage_python,
    unavailable,
    unused_id,
)
from tests.waiting import wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "yellowdog"

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))

RAY_STARTUP_RACE = "The current node timed out during startup"
"""What ``ray start`` says when its raylet died before registering: the raylet aborts in
``NodeManager::WaitForDashboardAgentPorts`` ("Timed out waiting for file .../metrics_agent_port_
<node id>") when its dashboard agent has not reported its ports within 15 s. That happened here
beside other tests' Ray clusters on 2 cores while the node's Python had no bytecode (the agent's
user cannot write it; the setup now compiles it as root). The worker's task is started once more
on that message only, as the platform would run it again; any other failure fails."""

DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=os.environ["RAY_ADDRESS"], _node_ip_address=os.environ["RAYDOG_NODE_IP"])
    deadline = time.monotonic() + 120
    while True:
        workers = [n for n in ray.nodes() if n["Alive"]
                   and n["NodeManagerAddress"] == os.environ["WORKER_IP"]]
        if workers or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert workers, ray.nodes()

    @ray.remote(num_cpus=0)
    def report():
        try:
            import numpy
            extra = numpy.__version__
        except ImportError as error:
            extra = f"not importable: {error}"
        return {"python": os.path.realpath(sys.executable), "uid": os.getuid(),
                "home": os.environ.get("HOME"), "numpy": extra}

    strategy = NodeAffinitySchedulingStrategy(workers[0]["NodeID"], soft=False)
    print(json.dumps(ray.get(report.options(scheduling_strategy=strategy).remote())))
    """
)


@pytest.fixture(scope="session")
def uv() -> Path:
    found = find_uv()
    assert found is not None
    return found


@pytest.fixture(scope="session")
def staged_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage_python(tmp_path_factory.mktemp("uv-python"))


def example_clusters() -> list[str]:
    """Every YellowDog example config whose nodes all boot from ``raydog node-setup``'s script.
    The Docker example's head does too (the same script); its workers' userdata is checked by
    the last test here, with stand-ins for Docker."""
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        types = yaml.safe_load(path.read_text())["available_node_types"]
        userdata = [spec.get("node_config", {}).get("userdata", "") for spec in types.values()]
        if all("node-setup" in text for text in userdata):
            found.append(path.name)
    return found


def userdata_of(folder: Path, cluster: dict[str, Any]) -> dict[str, str]:
    """Each node type's userdata as the yellowdog backend sends it, after the user wrote the
    files the example names with ``raydog node-setup`` (as its comments say), in ``folder``:
    the working directory, which ``file:`` paths are relative to."""
    for name, setup_of in (("node-setup-head.sh", "head"), ("node-setup-worker.sh", "cpu_worker")):
        (folder / name).write_text(node_setup_text(cluster, setup_of))
    parsed = config_parsing.parse(file_references.resolve_files(cluster))
    with raydog_config.scratch_home():
        _, _, compute = cluster_plugins.build_plugins(parsed)
    pools = SimpleNamespace(options=compute.options, head_setup=compute.pools.head_setup)
    return {
        node_type: Pools._userdata(pools, node_type, config.userdata)  # type: ignore[arg-type]
        or ""
        for node_type, config in compute.options.node_types.items()
    }


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[list[str]]:
    """Two addresses of this machine's own, one per node, held while the test runs."""
    addresses = LoopbackAddresses()
    owners = [tmp_path / f"lease-{n}" for n in range(2)]
    ips = []
    for owner in owners:
        owner.mkdir()
        ips.append(addresses.allocate(owner))
    yield ips
    for owner, ip in zip(owners, ips, strict=True):
        addresses.release(ip, owner)


@pytest.mark.e2e
@pytest.mark.parametrize("example", example_clusters())
def test_an_example_cluster_boots_as_yellowdog_runs_it(
    example: str,
    tmp_path: Path,
    staged_python: Path,
    uv: Path,
    loopback: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "example"
    shutil.copytree(EXAMPLES, folder)
    monkeypatch.chdir(folder)
    cluster = yaml.safe_load((folder / example).read_text())
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cluster["auth"]["ssh_private_key"] = str(key)
    tag_port = free_port()
    cluster["provider"]["head_node_tag_server_port"] = tag_port
    userdata = userdata_of(folder, cluster)
    parsed = config_parsing.parse(file_references.resolve_files(cluster, missing_ok=True))
    spec = cluster_plugins.cluster_spec(parsed, parsed.tag_store.build(parsed.cluster_name))

    uid = unused_id()
    head_ip, worker_ip = loopback
    head = NodeMachine(tmp_path / "head", staged_python, uv, uid)
    worker = NodeMachine(tmp_path / "worker", staged_python, uv, uid)
    ray_tmp = [Path(tempfile.mkdtemp(prefix="rdn-")) for _ in range(2)]
    gcs = free_port()
    try:
        for machine in (head, worker):
            machine.start()
        for tmp in ray_tmp:
            os.chown(tmp, uid, uid)
        # The agent takes the node's task at once, before the setup has finished.
        head_task = head.start_task(
            _task_script(spec.head_script),
            {
                "YD_TASK_ID": "ydid:task:head",
                "RAYDOG_NODE_TYPE": parsed.head_node_type,
                "RAYDOG_NODE_IP": head_ip,
                "RAY_TMPDIR": str(ray_tmp[0]),
                "RAYDOG_GCS_PORT": str(gcs),
                "RAYDOG_CLIENT_PORT": str(free_port()),
                "RAYDOG_DASHBOARD_AGENT_PORT": str(free_port()),
            },
            "head",
        )
        with ThreadPoolExecutor(2) as pool:
            head_setup, worker_setup = pool.map(
                lambda m: m[0].run_userdata(userdata[m[1]]),
                [(head, parsed.head_node_type), (worker, "cpu_worker")],
            )
        assert head_setup.returncode == 0, head_setup.stdout + head_setup.stderr
        assert worker_setup.returncode == 0, worker_setup.stdout + worker_setup.stderr

        # Nothing in root's home but the Python placed where uv's default would download it.
        placed = Path(UV_DEFAULT_PYTHONS)
        for machine in (head, worker):
            root_home = machine.host_path("/root")
            written = {Path("/root") / p.relative_to(root_home) for p in root_home.rglob("*")}
            others = {
                p for p in written if not (placed.is_relative_to(p) or p.is_relative_to(placed))
            }
            assert others == set(), f"the setup wrote in root's home: {sorted(others)}"

        # Python's bytecode was compiled at setup, as root: the agent's user cannot write it, and
        # without it each of Ray's processes compiles what it imports, each time it starts.
        for machine in (head, worker):
            venv = machine.host_path(node_setup.VENV)
            pythons = machine.host_path(node_setup.PYTHONS)
            assert list(venv.glob("lib/python3*/site-packages/ray/__pycache__/__init__.*.pyc"))
            assert list(pythons.glob("*/lib/python3*/asyncio/__pycache__/__init__.*.pyc"))

        # The SSH key is the agent's, for `ray up`.
        keys = head.host_path(f"{AGENT_HOME}/.ssh/authorized_keys")
        assert key.with_suffix(".pub").read_text().strip() in keys.read_text()
        assert (keys.stat().st_uid, keys.stat().st_mode & 0o777) == (uid, 0o600)

        # `ray up`: the cluster's files (wheels, secrets, the autoscaler's config), then the
        # head's setup command over SSH, as the agent's user.
        remote = head.host_path(f"{AGENT_HOME}/.raydog/clusters/{parsed.cluster_name}")
        (remote / head_packages.WHEELS).mkdir(parents=True)
        for wheel in node_setup.stage_head_wheels(parsed):
            shutil.copy(wheel, remote / head_packages.WHEELS)
        (remote / PASSWORD_SECRET).write_text("p" * 43)
        # The autoscaler's config: RayDog's provider, imported from the wheels as yd-agent, on
        # the memory backends (no YellowDog account here), with nothing it may launch.
        stand_in = memory_cluster_config(parsed.cluster_name)
        stand_in["max_workers"] = 0
        stand_in["available_node_types"] = {"head": {"resources": {"CPU": 0}, "max_workers": 0}}
        head_config = raydog_config.bootstrap(stand_in)
        head_config["file_mounts"] = {}  # Ray's head keeps its copies where they are
        (remote.parents[2] / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(head_config))
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(remote.parents[2])], check=True)
        (setup_command,) = node_setup.head_setup_commands(parsed, [])
        installed = head.run_as_agent(setup_command)
        assert installed.returncode == 0, installed.stdout + installed.stderr

        # Ray's head runs (its autoscaler imports RayDog from the wheels), so does the tag store.
        wait_until(
            lambda: (
                (ray_tmp[0] / "ray" / "ray_current_cluster").exists()
                or head_task.returncode is not None
            ),
            "Ray on the head",
            timeout=180,
        )
        head_log = (head.folder / "tasks" / "head.log").read_text()
        assert head_task.running(), head_log
        assert head_log.startswith("RayDog: waiting up to 20 minutes for this node's setup")
        wait_until(lambda: _listening("127.0.0.1", tag_port), "the tag store's server", 120)

        # Ray asks for the worker once its head runs; the worker had booted meanwhile.
        def start_worker(name: str) -> NodeProcess:
            environment = {
                "YD_TASK_ID": "ydid:task:worker",
                "RAYDOG_NODE_TYPE": "cpu_worker",
                "RAYDOG_NODE_IP": worker_ip,
                "RAY_HEAD_IP": head_ip,
                "RAY_ADDRESS": f"{head_ip}:{gcs}",
                "RAY_TMPDIR": str(ray_tmp[1]),
                "RAYDOG_DASHBOARD_AGENT_PORT": str(free_port()),
            }
            return worker.start_task(_task_script(spec.worker_script), environment, name)

        def run_driver() -> subprocess.CompletedProcess[str]:
            environment = {
                "RAY_ADDRESS": f"{head_ip}:{gcs}",
                "RAYDOG_NODE_IP": head_ip,
                "WORKER_IP": worker_ip,
            }
            return head.run_as_agent(f"python -c {shlex.quote(DRIVER)}", environment, timeout=240)

        worker_task = start_worker("worker")
        worker_log = worker.folder / "tasks" / "worker.log"
        wait_until(
            lambda: not worker_task.running() or "Ray runtime started" in worker_log.read_text(),
            "Ray to start on the worker, or its task to end",
            timeout=180,
        )
        if not worker_task.running() and RAY_STARTUP_RACE in worker_log.read_text():
            # See RAY_STARTUP_RACE: Ray's own start-up, not the node's setup; once more.
            worker_task = start_worker("worker-again")
        driver = run_driver()
        assert driver.returncode == 0, driver.stdout + driver.stderr + _logs(head, worker)
        # Ray may print the autoscaler's events too; the report is the line of JSON.
        (line,) = [line for line in driver.stdout.splitlines() if line.startswith('{"python"')]
        report = json.loads(line)
        assert report["uid"] == uid and report["home"] == AGENT_HOME
        assert report["python"].startswith(node_setup.PYTHONS + "/")
        extra = cluster["available_node_types"]["cpu_worker"]["node_config"].get("extra_userdata")
        if extra and "numpy" in extra:
            # extra_userdata's package is where the worker's Ray sees it.
            assert report["numpy"][0].isdigit(), report
        assert worker_task.running()
    finally:
        worker.stop()
        head.stop()
        for tmp in ray_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def _logs(*machines: NodeMachine) -> str:
    return "".join(
        f"\n--- {log}\n{log.read_text()[-3000:]}"
        for machine in machines
        for log in sorted((machine.folder / "tasks").glob("*.log"))
    )


STOCK_IMAGE_TOOLS = {
    "apt-get": """#!/bin/bash
# apt-get as far as the userdata uses it: installing docker.io adds the docker group and docker.
if [ "$1" = install ]; then
  groupadd --system docker && install -m 755 /usr/local/lib/docker-client /usr/local/bin/docker
fi
""",
    "curl": """#!/bin/bash
# What the agent's installer does that tasks see: its home, and the agent started at once, with
# the groups its user has now.
echo 'mkdir -p /opt/yellowdog/agent && id -nG yd-agent > /opt/yellowdog/agent-started-with'
""",
}
DOCKER_CLIENT = """#!/bin/bash
# docker's client: the daemon's socket is root:docker, mode 660.
id -nG | grep -qw docker || {
  echo "permission denied while trying to connect to the Docker daemon socket" >&2; exit 1; }
echo "docker $*"
"""


def test_the_docker_example_gives_its_agent_the_docker_group_before_the_agent_starts(
    tmp_path: Path, staged_python: Path, uv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a stock image (no Docker, no agent), the Docker example's worker userdata installs
    both, and the worker's task reaches Docker as the agent's user. Docker, apt-get and the
    agent's installer are stand-ins (this machine has none to give); useradd and usermod are
    real, on the node's own /etc."""
    monkeypatch.chdir(EXAMPLES)
    cluster = yaml.safe_load((EXAMPLES / "cluster-docker.yaml").read_text())
    parsed = config_parsing.parse(file_references.resolve_files(cluster, missing_ok=True))
    spec = cluster_plugins.cluster_spec(parsed, parsed.tag_store.build(parsed.cluster_name))
    worker = NodeMachine(tmp_path / "worker", staged_python, uv, 0, agent_installed=False)
    try:
        worker.start()
        tools = worker.host_path("/usr/local/bin")
        if Path("/usr/local/bin/docker").exists():  # hidden on the node (an overlay whiteout)
            os.mknod(tools / "docker", stat.S_IFCHR, 0)
        for name, text in STOCK_IMAGE_TOOLS.items():
            (tools / name).write_text(text)
            (tools / name).chmod(0o755)
        worker.host_path("/usr/local/lib").mkdir(exist_ok=True)
        worker.host_path("/usr/local/lib/docker-client").write_text(DOCKER_CLIENT)
        userdata = (EXAMPLES / "docker-setup.sh").read_text()
        setup = worker.run_userdata(userdata)
        assert setup.returncode == 0, setup.stdout + setup.stderr

        uid = worker.account("yd-agent")
        assert uid is not None, "the userdata installed no agent (no yd-agent user)"
        started_with = worker.host_path("/opt/yellowdog/agent-started-with").read_text().split()
        assert "docker" in started_with
        worker.uid, worker.groups = uid, [g for g in started_with if g != "yd-agent"]
        task = worker.start_task(
            _task_script(spec.worker_script),
            {"YD_TASK_ID": "ydid:task:worker", "RAY_HEAD_IP": "10.0.0.1"},
            "worker",
        )
        wait_until(lambda: task.returncode is not None, "the worker's task", timeout=60)
        log = (worker.folder / "tasks" / "worker.log").read_text()
        assert task.returncode == 0, log
        assert "docker run --rm --network host" in log
        assert "ray start --address=10.0.0.1:6379 --block" in log
    finally:
        worker.stop()
