"""Drive a RayDog cluster through Ray's own CLI, as a user would, timing each phase.

Shared by the end-to-end tests and ``benchmarks/local_cluster_phases.py`` (nothing in RayDog
imports it). ``RayCluster`` drives a cluster (a private ``RAYDOG_HOME``, the ``ray`` commands, the
phases); a subclass writes its YAML and says how to watch its nodes: the ``local`` backend's is
``raydog_backends.local.testing.LocalCluster``. ``run_lifecycle`` submits ``autoscaling_job.py``
(next to this file), a job that needs more CPUs than the head has.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydog_core.interfaces import NodeInfo

JOB = Path(__file__).with_name("autoscaling_job.py")
RAY = str(Path(sys.executable).parent / "ray")


class CommandFailed(AssertionError):
    """A `ray` command exited non-zero; the message carries its output."""


@dataclass
class RayCluster:
    """Drives a cluster with ``ray``; a subclass writes its YAML and watches its nodes."""

    folder: Path
    cluster_name: str
    idle_timeout_minutes: float = 0.5
    timings: dict[str, float] = field(default_factory=dict)
    transcript: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home = self.folder / "raydog-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.config = self.write_config()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "RAYDOG_HOME": str(self.home),
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            # Shorter autoscaler ticks (inherited by the head's autoscaler); no usage report.
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)

    # --- what a subclass says -----------------------------------------------------------

    def write_config(self) -> Path:
        """The cluster's YAML, written to ``folder``."""
        raise NotImplementedError

    def nodes(self) -> dict[str, NodeInfo]:
        """The cluster's live nodes."""
        raise NotImplementedError

    def leftovers(self) -> list[str]:
        """Everything of the cluster still on this machine, described; empty when clean."""
        raise NotImplementedError

    def destroy(self) -> None:
        """Stop whatever a failed run left (a clean run leaves nothing to stop)."""
        raise NotImplementedError

    def tag_store_paused(self) -> contextlib.AbstractContextManager[None]:
        """The head's tag store stops answering (its server stopped, as a stalled server
        would be) until the block ends; for ``run_lifecycle(hold_writes=True)``."""
        raise NotImplementedError

    # --- driving ------------------------------------------------------------------------

    def ray(self, *args: str, timeout: float = 300.0, stdin: str | None = None) -> str:
        """Run ``ray <args>`` against this cluster's YAML; its output, or CommandFailed."""
        command = [RAY, *args]
        result = subprocess.run(
            command,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.folder,
            timeout=timeout,
        )
        output = result.stdout + result.stderr
        self.transcript.append((" ".join(["ray", *args]), output))
        if result.returncode != 0:
            raise CommandFailed(
                f"`ray {' '.join(args)}` exited {result.returncode}:\n{output[-4000:]}"
            )
        return output

    def raydog(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``raydog <args>`` as the user would beside this cluster; its exit code is the
        caller's to judge."""
        result = subprocess.run(
            [str(Path(RAY).parent / "raydog"), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.folder,
            timeout=timeout,
            check=False,
        )
        self.transcript.append((" ".join(["raydog", *args]), result.stdout + result.stderr))
        return result

    def probe(self, *args: str, timeout: float = 120.0, stdin: str | None = None) -> str:
        """Like ``ray`` for a command the lifecycle does not depend on: a failure is returned
        (for a test to assert on) instead of stopping the run."""
        try:
            return self.ray(*args, timeout=timeout, stdin=stdin)
        except CommandFailed as failure:
            return f"FAILED: {failure}"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings[name] = time.monotonic() - started

    def wait_for(
        self, check: Callable[[dict[str, NodeInfo]], bool], what: str, timeout: float
    ) -> dict[str, NodeInfo]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            if check(nodes):
                return nodes
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {nodes}")
            time.sleep(0.5)

    @staticmethod
    def workers(nodes: dict[str, NodeInfo]) -> dict[str, NodeInfo]:
        return {node_id: info for node_id, info in nodes.items() if not info.is_head}

    def report(self) -> str:
        return "\n".join(f"  {name:<26} {seconds:7.1f} s" for name, seconds in self.timings.items())


@dataclass
class LifecycleResult:
    head: NodeInfo
    get_head_ip: str
    status: str
    attach: str
    job: str
    workers_during_job: dict[str, NodeInfo]
    nodes_after_idle: dict[str, NodeInfo]
    status_after_idle: str
    """`ray status` after the idle workers went; empty unless ``run_lifecycle`` was asked."""
    metrics: str
    leftovers: list[str]


def run_lifecycle(
    cluster: RayCluster, hold_writes: bool = False, status_after_idle: bool = False
) -> LifecycleResult:
    """`ray up` -> job needing workers -> idle workers removed -> `raydog metrics` -> `ray down`,
    each phase timed.

    ``hold_writes``: the head's tag store does not answer while the idle workers are removed
    and ``raydog metrics`` runs, so the head's provider holds their deletes (and its figures
    show it); the store answers again before ``ray down``.
    ``status_after_idle``: `ray exec ... ray status` once more after the idle workers went (the
    autoscaler's account of them), for a caller that asserts on it: it costs a `ray` command on
    the client and on the head."""
    config = str(cluster.config)
    with cluster.phase("head up (ray up)"):
        cluster.ray("up", "-y", "--no-config-cache", config, timeout=300)
    (head,) = [info for info in cluster.nodes().values() if info.is_head]
    head_ip = cluster.probe("get-head-ip", config)
    status = cluster.probe("exec", config, "ray status")
    attach = cluster.probe("attach", config, stdin='echo "ATTACHED to $RAYDOG_NODE_ID at $PWD"\n')

    workers_during_job: dict[str, NodeInfo] = {}

    def record_workers(nodes: dict[str, NodeInfo]) -> None:
        workers_during_job.update(cluster.workers(nodes))

    submitted = time.time()
    with cluster.phase("job (ray submit)"):
        job = cluster.ray("submit", "--no-config-cache", config, str(JOB), timeout=600)
    record_workers(cluster.nodes())
    for line in job.splitlines():
        if line.startswith("FIRST_WORKER_JOINED "):
            cluster.timings["first worker joined"] = float(line.split()[1]) - submitted
    with cluster.tag_store_paused() if hold_writes else contextlib.nullcontext():
        with cluster.phase("scale-down (idle workers)"):
            after_idle = cluster.wait_for(
                lambda nodes: not cluster.workers(nodes),
                "idle workers to be removed",
                timeout=cluster.idle_timeout_minutes * 60 + 240,
            )
        metrics = cluster.raydog("metrics", config, timeout=180)
    status_after = cluster.probe("exec", config, "ray status") if status_after_idle else ""
    with cluster.phase("teardown (ray down)"):
        cluster.ray("down", "-y", config, timeout=300)
    return LifecycleResult(
        head=head,
        get_head_ip=head_ip,
        status=status,
        attach=attach,
        job=job,
        workers_during_job=workers_during_job,
        nodes_after_idle=after_idle,
        status_after_idle=status_after,
        metrics=metrics.stdout if metrics.returncode == 0 else f"FAILED: {metrics.stderr}",
        leftovers=cluster.leftovers(),
    )


def ran_on(job_output: str) -> dict[str, Any]:
    (line,) = [line for line in job_output.splitlines() if line.startswith("RAN_ON ")]
    result: dict[str, Any] = json.loads(line.removeprefix("RAN_ON "))
    return result


def check_tasks_ran_on_workers(result: LifecycleResult) -> None:
    """The job ran on the head and each of its 2-CPU tasks on a worker the autoscaler launched."""
    ran = ran_on(result.job)
    worker_ips = {info.internal_ip for info in result.workers_during_job.values()}
    assert ran["head"] == result.head.internal_ip
    assert len(ran["tasks"]) == 2
    assert set(ran["tasks"]) <= worker_ips, "a 2-CPU task ran somewhere other than a worker"
