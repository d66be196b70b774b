"""The ``local`` compute backend, its command runner and its process runner, on real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from ray.autoscaler._private import command_runner as ray_command_runner
from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError

from raydog_backends.local import LocalComputeBackend
from raydog_backends.local.nodes import BASE_DIR_VARIABLE, NodeRecord
from raydog_backends.local.runner import LocalCommandRunner
from raydog_backends.process_nodes.addresses import LoopbackAddresses, bound_addresses
from raydog_backends.process_nodes.copying import sync
from raydog_backends.process_nodes.processes import NodeProcess, pid_alive, read_stat
from raydog_core.errors import BackendError, ConfigError
from raydog_core.interfaces import (
    ClusterSpec,
    LaunchRequest,
    NodeInfo,
    NodeState,
    NodeTypeSpec,
)
from raydog_core.testing import ComputeBackendContract
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the local backend runs on Linux only"
)

SLEEP = "#!/bin/bash\nexec sleep infinity\n"
REPORT_ENV = (
    "#!/bin/bash\n"
    "python3 -c \"import json, os; print(json.dumps({**os.environ, 'CWD': os.getcwd()}))\""
    " > ~/env.json\n"
    "exec sleep infinity\n"
)


def make_spec(head_script: str = SLEEP, worker_script: str = SLEEP) -> ClusterSpec:
    return ClusterSpec(
        cluster_name=f"local-{uuid.uuid4().hex[:8]}",
        head_node_type="head",
        node_types={
            "head": NodeTypeSpec("head", {}, {"CPU": 1}, 0, 0),
            "cpu": NodeTypeSpec("cpu", {}, {"CPU": 2, "GPU": 0}, 0, 10),
        },
        head_script=head_script,
        worker_script=worker_script,
    )


@pytest.fixture
def backends() -> Iterator[Callable[[ClusterSpec], LocalComputeBackend]]:
    """Backends made by a test; every cluster is shut down afterwards, whatever happened."""
    made: list[LocalComputeBackend] = []

    def make(spec: ClusterSpec) -> LocalComputeBackend:
        backend = LocalComputeBackend(spec, grace_seconds=2.0)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.shutdown()


def launch_cluster(backend: LocalComputeBackend, workers: int = 0) -> tuple[str, list[str]]:
    (head,) = backend.launch(LaunchRequest("head", 1, True))
    return head, backend.launch(LaunchRequest("cpu", workers, False)) if workers else []


def described(backend: LocalComputeBackend) -> dict[str, NodeInfo]:
    return {info.node_id: info for info in backend.describe()}


def record(backend: LocalComputeBackend, node_id: str) -> NodeRecord:
    found = backend.node_record(node_id)
    assert found is not None, f"no record of {node_id}"
    return found


def node_env(backend: LocalComputeBackend, node_id: str) -> dict[str, str]:
    path = backend.folder.home(node_id) / "env.json"
    wait_until(lambda: path.exists() and path.stat().st_size > 0, f"{node_id} to report its env")
    env: dict[str, str] = json.loads(path.read_text())
    return env


# --- the contract every compute backend honours ---------------------------------------------


class TestLocalBackendContract(ComputeBackendContract):
    settle_seconds = 30.0

    @pytest.fixture
    def make_backend(self) -> Callable[[ClusterSpec], LocalComputeBackend]:
        return lambda spec: LocalComputeBackend(spec, grace_seconds=2.0)

    @pytest.fixture
    def lose_node(self, raydog_home: Path) -> Callable[[str], None]:
        """The machine "crashes": every process of the node dies at once."""

        def lose(node_id: str) -> None:
            (path,) = (raydog_home / "local").glob(f"*/nodes/{node_id}/node.json")
            os.killpg(json.loads(path.read_text())["pid"], signal.SIGKILL)

        return lose


# --- the backend ----------------------------------------------------------------------------


def test_tasks_get_the_node_environment(backends: Callable[..., LocalComputeBackend]) -> None:
    backend = backends(make_spec(REPORT_ENV, REPORT_ENV))
    head, (worker,) = launch_cluster(backend, workers=1)
    head_env, worker_env = node_env(backend, head), node_env(backend, worker)
    head_ip, worker_ip = (
        str(described(backend)[head].internal_ip),
        str(described(backend)[worker].internal_ip),
    )
    assert head_ip != worker_ip and head_ip.startswith("127.") and worker_ip.startswith("127.")

    assert worker_env["RAYDOG_CLUSTER_NAME"] == backend.spec.cluster_name
    assert (worker_env["RAYDOG_NODE_TYPE"], worker_env["RAYDOG_NODE_ID"]) == ("cpu", worker)
    assert worker_env["RAYDOG_NODE_IP"] == worker_ip
    assert worker_env["RAY_HEAD_IP"] == head_ip
    assert worker_env["RAY_ADDRESS"] == f"{head_ip}:{worker_env['RAYDOG_GCS_PORT']}"
    assert "RAY_OVERRIDE_RESOURCES" not in worker_env  # resources come with the task script
    assert worker_env["HOME"] == worker_env["CWD"] == str(backend.folder.home(worker))
    assert worker_env["RAYDOG_GCS_PORT"] == head_env["RAYDOG_GCS_PORT"]
    assert worker_env["RAYDOG_DASHBOARD_AGENT_PORT"] != head_env["RAYDOG_DASHBOARD_AGENT_PORT"]
    assert worker_env["RAY_TMPDIR"] != head_env["RAY_TMPDIR"]
    assert (head_env["RAYDOG_NODE_TYPE"], head_env["RAYDOG_NODE_ID"]) == ("head", head)
    assert head_env["RAYDOG_NODE_IP"] == head_ip
    # `raydog status --why`: a local node is created and boots as it is launched.
    record = backend.node_record(worker)
    assert record is not None
    steps = described(backend)[worker].steps
    assert steps.created == steps.booted == record.launched_at


def test_nodes_do_not_inherit_the_launchers_identity(
    backends: Callable[..., LocalComputeBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head's autoscaler launches workers: they must not see the head's own variables."""
    monkeypatch.setenv("RAYDOG_NODE_ID", "the-launchers-node")
    monkeypatch.setenv("RAY_TMPDIR", "/launcher/tmp")
    monkeypatch.setenv("USER_SETTING", "kept")
    backend = backends(make_spec(REPORT_ENV))
    head, _ = launch_cluster(backend)
    env = node_env(backend, head)
    assert env["RAYDOG_NODE_ID"] == head
    assert env["RAY_TMPDIR"] != "/launcher/tmp"
    assert env["USER_SETTING"] == "kept"
    assert "RAYDOG_HOME" not in env, "the head must find its secrets in its own home"


def test_a_second_process_sees_and_stops_the_same_nodes(
    backends: Callable[..., LocalComputeBackend],
) -> None:
    """`ray up`, the head's autoscaler and `ray down` are different processes."""
    spec = make_spec()
    backend = backends(spec)
    head, workers = launch_cluster(backend, workers=2)
    program = (
        "import json, sys\n"
        "from raydog_backends.local import LocalComputeBackend\n"
        "from raydog_core.interfaces import ClusterSpec, NodeTypeSpec\n"
        f"spec = ClusterSpec({spec.cluster_name!r}, 'head', "
        "{'head': NodeTypeSpec('head'), 'cpu': NodeTypeSpec('cpu')}, '', '')\n"
        "backend = LocalComputeBackend(spec, grace_seconds=2.0)\n"
        "backend.terminate(sys.argv[1:])\n"
        "print(json.dumps({n.node_id: n.state.value for n in backend.describe()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, workers[0]],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(result.stdout)
    assert seen == {head: "running", workers[1]: "running"}
    assert set(described(backend)) == {head, workers[1]}


def test_terminate_stops_processes_that_left_the_node_session(
    backends: Callable[..., LocalComputeBackend],
) -> None:
    escapes = "#!/bin/bash\nsetsid sleep 1000 &\necho $! > ~/escaped.pid\nexec sleep infinity\n"
    backend = backends(make_spec(worker_script=escapes))
    _, (worker,) = launch_cluster(backend, workers=1)
    pid_file = backend.folder.home(worker) / "escaped.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the escape")
    escaped = int(pid_file.read_text())
    session = record(backend, worker).pid

    def left_the_session() -> bool:
        found = read_stat(escaped)
        return found is not None and found.sid != session

    wait_until(left_the_session, "the process to leave the node's session")
    backend.terminate([worker])
    assert not pid_alive(escaped)


def test_a_node_whose_task_script_ends_is_reported_terminated_until_terminate_cleans_it_up(
    backends: Callable[..., LocalComputeBackend],
) -> None:
    backend = backends(make_spec(worker_script="#!/bin/bash\nsleep 0.2\nexit 3\n"))
    head, (worker,) = launch_cluster(backend, workers=1)
    worker_dir = backend.folder.node_dir(worker)
    wait_until(
        lambda: (
            described(backend).get(worker, NodeInfo("", "", False, NodeState.RUNNING)).state
            is NodeState.TERMINATED
        ),
        "the worker to be reported terminated",
    )
    assert described(backend)[worker].state is NodeState.TERMINATED, "describe() only reports"
    assert worker_dir.exists()
    backend.terminate([worker])
    assert not worker_dir.exists()
    assert worker not in described(backend)
    assert backend.folder.log_path(worker).exists(), "its output is kept for the user"
    assert described(backend)[head].state is NodeState.RUNNING


def test_exit_code_of_an_ended_task_is_reported(
    backends: Callable[..., LocalComputeBackend],
) -> None:
    backend = backends(make_spec(worker_script="#!/bin/bash\nexit 3\n"))
    _, (worker,) = launch_cluster(backend, workers=1)
    process = backend._process(record(backend, worker))
    assert process is not None
    wait_until(lambda: not process.running(), "the task script to end")
    assert "exit code 3" in described(backend)[worker].detail


def test_a_head_whose_script_fails_at_once_raises_and_leaves_nothing(
    backends: Callable[..., LocalComputeBackend],
) -> None:
    backend = backends(make_spec(head_script="#!/bin/bash\necho no such luck\nexit 1\n"))
    with pytest.raises(BackendError) as raised:
        backend.launch(LaunchRequest("head", 1, True))
    assert "exit code 1" in str(raised.value)
    assert raised.value.cleaned_up
    log = Path(str(raised.value).split("output: ")[1].split(" ")[0])
    assert "no such luck" in log.read_text()
    assert described(backend) == {}
    assert list(backend.folder.nodes_dir.iterdir()) == []


def test_workers_need_a_running_head(backends: Callable[..., LocalComputeBackend]) -> None:
    backend = backends(make_spec())
    with pytest.raises(BackendError, match="no running head"):
        backend.launch(LaunchRequest("cpu", 1, False))
    launch_cluster(backend)
    with pytest.raises(BackendError, match="already running"):
        backend.launch(LaunchRequest("head", 1, True))


def test_concurrent_launches_get_distinct_addresses(
    backends: Callable[..., LocalComputeBackend],
) -> None:
    spec = make_spec()
    backend = backends(spec)
    launch_cluster(backend)
    ids: list[str] = []

    def launch() -> None:
        # A separate instance per thread, as separate processes would have.
        ids.extend(LocalComputeBackend(spec).launch(LaunchRequest("cpu", 3, False)))

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    nodes = described(backend)
    assert len(ids) == 12 and set(ids) <= set(nodes)
    ips = [info.internal_ip for info in nodes.values()]
    assert len(set(ips)) == len(ips) == 13


def test_shutdown_leaves_no_process_folder_or_address(
    backends: Callable[..., LocalComputeBackend],
) -> None:
    backend = backends(make_spec())
    head, workers = launch_cluster(backend, workers=2)
    records = [record(backend, node_id) for node_id in [head, *workers]]
    backend.shutdown()
    assert not any(pid_alive(r.pid) for r in records if r.pid is not None)
    assert not backend.folder.root.exists()
    assert not any(Path(r.tmp_dir).exists() for r in records)
    # Another test may lease a freed address at once: only a lease naming this cluster's
    # folder (released or not, it is gone) would be left behind by the shutdown.
    leases = [backend.addresses.lease_dir / r.ip for r in records]
    root = backend.folder.root.absolute()
    assert not any(
        lease.is_symlink() and Path(os.readlink(lease)).is_relative_to(root) for lease in leases
    )


def test_options_are_checked_without_touching_the_disk(raydog_home: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        LocalComputeBackend(make_spec(), base_dir="relative/nodes")
    assert raised.value.key_path == "base_dir"
    with pytest.raises(ConfigError) as raised:
        LocalComputeBackend(make_spec(), grace_seconds=-1)
    assert raised.value.key_path == "grace_seconds"
    LocalComputeBackend(make_spec())
    assert not (raydog_home / "local").exists()


def test_the_head_finds_the_nodes_where_the_client_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the head, HOME is the node's folder; the node's environment names the real base."""
    monkeypatch.setenv(BASE_DIR_VARIABLE, str(tmp_path / "client-base"))
    backend = LocalComputeBackend(make_spec(), base_dir="~/elsewhere")
    assert backend.base_dir == tmp_path / "client-base"


# --- the command runner -----------------------------------------------------------------------


def runner_for(backend: LocalComputeBackend, node_id: str) -> LocalCommandRunner:
    runner = backend.command_runner(
        log_prefix="test: ",
        node_id=node_id,
        auth_config={},
        cluster_name=backend.spec.cluster_name,
        process_runner=subprocess,
        use_internal_ip=False,
    )
    assert isinstance(runner, LocalCommandRunner)
    return runner


@pytest.fixture
def head_runner(
    backends: Callable[..., LocalComputeBackend],
) -> tuple[LocalComputeBackend, str, LocalCommandRunner]:
    backend = backends(make_spec())
    head, _ = launch_cluster(backend)
    return backend, head, runner_for(backend, head)


def test_commands_run_as_if_on_the_node(
    head_runner: tuple[LocalComputeBackend, str, LocalCommandRunner],
) -> None:
    backend, head, runner = head_runner
    output = runner.run(
        'echo "$PWD|$HOME|$RAYDOG_NODE_ID|$RAYDOG_NODE_IP|$RAY_ADDRESS|$RAY_OVERRIDE_RESOURCES"',
        with_output=True,
    )
    home = str(backend.folder.home(head))
    ip = described(backend)[head].internal_ip
    gcs = record(backend, head).ports["gcs"]
    assert output.decode().strip() == f"{home}|{home}|{head}|{ip}|{ip}:{gcs}|"


def test_failed_commands_fail_as_with_ssh(
    head_runner: tuple[LocalComputeBackend, str, LocalCommandRunner],
) -> None:
    _, _, runner = head_runner
    with pytest.raises(click.ClickException, match="Command failed"):
        runner.run("exit 7", exit_on_fail=True)
    ray_command_runner.set_using_login_shells(False)
    try:
        with pytest.raises(ProcessRunnerError) as raised:
            runner.run("exit 7")
        assert raised.value.code == 7
    finally:
        ray_command_runner.set_using_login_shells(True)


def test_ray_environment_variables_are_exported_as_json(
    head_runner: tuple[LocalComputeBackend, str, LocalCommandRunner],
) -> None:
    _, _, runner = head_runner
    output = runner.run(
        'echo "$RAY_USAGE_STATS_ENABLED $RAY_OVERRIDE_RESOURCES"',
        with_output=True,
        environment_variables={"RAY_USAGE_STATS_ENABLED": 0, "RAY_OVERRIDE_RESOURCES": {"CPU": 1}},
    )
    assert output.decode().strip() == '0 {"CPU":1}'


def test_commands_started_through_the_runner_belong_to_the_node(
    head_runner: tuple[LocalComputeBackend, str, LocalCommandRunner],
) -> None:
    backend, head, runner = head_runner
    runner.run("nohup sleep 1000 >/dev/null 2>&1 & echo $! > ~/daemon.pid")
    daemon = int((backend.folder.home(head) / "daemon.pid").read_text())
    assert pid_alive(daemon)
    backend.shutdown()
    assert not pid_alive(daemon)


def test_commands_on_a_node_that_is_gone_fail(
    head_runner: tuple[LocalComputeBackend, str, LocalCommandRunner],
) -> None:
    backend, _, runner = head_runner
    backend.shutdown()
    with pytest.raises(click.ClickException):
        runner.run("true", exit_on_fail=True)


def test_shutdown_after_run_stops_only_the_node(
    backends: Callable[..., LocalComputeBackend],
) -> None:
    backend = backends(make_spec())
    head, (worker,) = launch_cluster(backend, workers=1)
    runner_for(backend, worker).run("echo done", shutdown_after_run=True)
    wait_until(
        lambda: described(backend)[worker].state is NodeState.TERMINATED, "the worker to stop"
    )
    assert described(backend)[head].state is NodeState.RUNNING


def fake_ray_process(folder: Path, name: str) -> str:
    """A ``sleep`` that `ray stop` takes for one of Ray's processes (it matches by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / name
    if not link.exists():
        link.symlink_to(subprocess.check_output(["which", "sleep"], text=True).strip())
    return str(link)


def test_ray_stop_on_a_node_stops_that_nodes_ray_only(
    backends: Callable[..., LocalComputeBackend], tmp_path: Path
) -> None:
    raylet = fake_ray_process(tmp_path / "bin", "raylet")
    gcs = fake_ray_process(tmp_path / "bin", "gcs_server")
    script = (
        "#!/bin/bash\n"
        f"{raylet} 1000 & echo $! > ~/raylet.pid\n"
        f"{gcs} 1000 & echo $! > ~/gcs.pid\n"
        "sleep 1000 & echo $! > ~/other.pid\n"
        "exec sleep infinity\n"
    )
    backend = backends(make_spec(script, script))
    head, (worker,) = launch_cluster(backend, workers=1)
    outsider = subprocess.Popen([raylet, "1000"])
    try:

        def pids(node_id: str) -> dict[str, int]:
            home = backend.folder.home(node_id)
            files = {name: home / f"{name}.pid" for name in ("raylet", "gcs", "other")}
            wait_until(lambda: all(f.exists() and f.read_text() for f in files.values()), "pids")
            return {name: int(path.read_text()) for name, path in files.items()}

        head_pids, worker_pids = pids(head), pids(worker)
        output = runner_for(backend, head).run("ray stop", with_output=True)
        assert b"Stopped 2 Ray processes" in output
        assert not pid_alive(head_pids["raylet"]) and not pid_alive(head_pids["gcs"])
        assert pid_alive(head_pids["other"]), "`ray stop` stops Ray's processes, nothing else"
        # A task that does not run `ray start --block` keeps its node: configs whose
        # head_start_ray_commands stop Ray and start it again rely on that.
        assert described(backend)[head].state is NodeState.RUNNING
        assert all(pid_alive(pid) for pid in worker_pids.values()), "another node's Ray was stopped"
        assert outsider.poll() is None, "a Ray process outside the cluster was stopped"
    finally:
        outsider.kill()
        outsider.wait()


def test_ray_stop_ends_the_nodes_blocking_ray_start_so_its_task_ends(
    backends: Callable[..., LocalComputeBackend], tmp_path: Path
) -> None:
    """`ray down` runs `ray stop` on the head, then lists the nodes: the head whose task was
    `exec ray start --block` must be gone by then, or Ray terminates it and waits 5 s more."""
    raylet = fake_ray_process(tmp_path / "bin", "raylet")
    ray = tmp_path / "bin" / "ray"
    # Like Ray's `ray start --block`: it goes on blocking once its raylet ended by SIGTERM.
    ray.write_text(
        f"#!/bin/bash\n{raylet} 1000 & echo $! > ~/raylet.pid\nwhile true; do sleep 0.2; done\n"
    )
    ray.chmod(0o755)
    script = f"#!/bin/bash\nexec {ray} start --block\n"
    backend = backends(make_spec(script, script))
    head, (worker,) = launch_cluster(backend, workers=1)
    for node_id in (head, worker):
        pid_file = backend.folder.home(node_id) / "raylet.pid"
        wait_until(lambda f=pid_file: f.exists() and f.read_text(), f"{node_id}'s raylet")

    output = runner_for(backend, head).run("ray stop", with_output=True)

    assert b"Stopped 1 Ray processes" in output
    assert described(backend)[head].state is NodeState.TERMINATED, output
    assert described(backend)[worker].state is NodeState.RUNNING, "another node was ended"


def test_node_commands_refuse_to_act_outside_a_node() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYDOG_LOCAL")}
    result = subprocess.run(
        [sys.executable, "-m", "raydog_backends.process_nodes.node_commands", "stop-ray"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "not on a RayDog local node" in result.stderr


def test_port_forwarding_reaches_the_nodes_address(
    head_runner: tuple[LocalComputeBackend, str, LocalCommandRunner],
) -> None:
    backend, head, runner = head_runner
    ip = described(backend)[head].internal_ip
    assert ip is not None
    with socket.create_server((ip, 0)) as server:
        remote = server.getsockname()[1]

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"hello from the node")

        threading.Thread(target=answer, daemon=True).start()
        local = _free_local_port()
        fetch = (
            f'{sys.executable} -c "import socket; '
            f"print(socket.create_connection(('127.0.0.1', {local})).recv(100).decode())\""
        )
        output = runner.run(fetch, with_output=True, port_forward=[(local, remote)])
    assert output.decode().strip() == "hello from the node"


def _free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_rsync_up_and_down_copy_locally_keeping_modes(
    head_runner: tuple[LocalComputeBackend, str, LocalCommandRunner], tmp_path: Path
) -> None:
    backend, head, runner = head_runner
    home = backend.folder.home(head)
    source = tmp_path / "project"
    (source / "sub").mkdir(parents=True)
    (source / "secret").write_text("s3cret")
    (source / "secret").chmod(0o600)
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o755)
    (source / "sub" / "data.txt").write_text("data")
    (source / "build.log").write_text("noise")

    runner.run_rsync_up(str(source) + "/", "~/project/", {"rsync_exclude": ["*.log"]})
    assert stat.S_IMODE((home / "project" / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "project" / "run.sh").stat().st_mode) == 0o755
    assert (home / "project" / "sub" / "data.txt").read_text() == "data"
    assert not (home / "project" / "build.log").exists()

    runner.run_rsync_up(str(source), "~/copies/")
    assert (home / "copies" / "project" / "sub" / "data.txt").exists(), "no slash: the folder"

    runner.run_rsync_up(str(source / "secret"), "~/single")
    assert (home / "single").read_text() == "s3cret"

    back = tmp_path / "back"
    runner.run_rsync_down("~/project/secret", str(back) + "/")
    assert (back / "secret").read_text() == "s3cret"
    assert stat.S_IMODE((back / "secret").stat().st_mode) == 0o600

    with pytest.raises(click.ClickException):
        runner.run_rsync_up(str(tmp_path / "missing"), "~/missing")


def test_sync_honours_filter_files_per_folder(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "a" / "cache").mkdir(parents=True)
    (source / ".gitignore").write_text("# comment\n*.pyc\n")
    (source / "a" / ".gitignore").write_text("/cache/\n")
    (source / "a" / "keep.py").write_text("")
    (source / "a" / "drop.pyc").write_text("")
    (source / "a" / "cache" / "big").write_text("")
    sync(str(source) + "/", str(tmp_path / "dst"), {"rsync_filter": [".gitignore"]})
    copied = sorted(str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*"))
    assert copied == [".gitignore", "a", "a/.gitignore", "a/keep.py"]


# --- the process runner (also used by the YellowDog emulator) --------------------------------


def test_node_process_runs_a_script_in_its_own_session(tmp_path: Path) -> None:
    node = NodeProcess.start(
        "echo started $HOME $GREETING; pwd; exec sleep infinity\n",
        env={"PATH": os.environ["PATH"], "GREETING": "hi"},
        home=tmp_path / "home",
        log_path=tmp_path / "task.log",
    )
    try:
        assert node.running() and node.returncode is None
        stat_ = read_stat(node.pid)
        assert stat_ is not None and stat_.sid == stat_.pgid == node.pid == node.pgid
        home = tmp_path / "home"
        wait_until(lambda: "started" in (tmp_path / "task.log").read_text(), "the output")
        assert (tmp_path / "task.log").read_text() == f"started {home} hi\n{home}\n"
        seen_elsewhere = NodeProcess.attach(node.pid, node.start_ticks, node.token)
        assert seen_elsewhere.running() and seen_elsewhere.members() == node.members()
    finally:
        node.stop(timeout=2.0)
    assert not node.running()
    assert node.returncode == -signal.SIGTERM


def test_node_process_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    node = NodeProcess.start(
        "trap '' TERM; sleep 1000 & wait\n",
        env={"PATH": os.environ["PATH"]},
        home=tmp_path,
        log_path=tmp_path / "log",
    )
    wait_until(lambda: len(node.members()) == 2, "the script and its child")
    children = node.members()
    started = time.monotonic()
    node.stop(timeout=0.5)
    assert not any(pid_alive(pid) for pid in children)
    assert time.monotonic() - started < 5.0


def test_a_finished_script_reports_its_exit_code(tmp_path: Path) -> None:
    node = NodeProcess.start(
        "exit 4\n", env={"PATH": os.environ["PATH"]}, home=tmp_path, log_path=tmp_path / "log"
    )
    wait_until(lambda: not node.running(), "the script to end")
    assert node.returncode == 4
    assert not NodeProcess.attach(node.pid, node.start_ticks, node.token).running()


def test_loopback_addresses_are_distinct_and_skip_bound_ones(tmp_path: Path) -> None:
    addresses = LoopbackAddresses(tmp_path / "leases")
    owners = [tmp_path / f"node{i}" for i in range(4)]
    for owner in owners:
        owner.mkdir()
    first = addresses.allocate(owners[0])
    # Some program (not ours) listens on the next address: it is not handed out.
    taken = _next_address(first)
    with socket.create_server((taken, 0)):
        assert taken in bound_addresses()
        second = addresses.allocate(owners[1])
    assert len({first, second, taken}) == 3
    assert addresses.holder(first) == owners[0].absolute()
    addresses.release(first, owners[0])
    assert addresses.holder(first) is None
    assert addresses.allocate(owners[2]) == first
    assert addresses.holder(first) == owners[2].absolute()
    owners[1].rmdir()  # a node that vanished without releasing: its lease is stale
    assert {addresses.allocate(owners[0]), addresses.allocate(owners[3])} == {taken, second}


def _next_address(ip: str) -> str:
    import ipaddress

    candidate = ipaddress.IPv4Address(ip) + 1
    while str(candidate) in bound_addresses():
        candidate += 1
    return str(candidate)
