"""Every API call of ``ray up``'s head launch and of a worker scale-up failing in turn, and the
same steps interrupted (KeyboardInterrupt from inside the HTTP call, before the request leaves and
after its answer came back): afterwards YellowDog holds no running work requirement and no live
worker pool. The head launch must clean up by itself; a scale-up is checked after ``ray down``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from ray.autoscaler.node_launch_exception import NodeLaunchException

from raydog_backends.yellowdog.names import slug
from raydog_backends.yellowdog_emulator import Emulator, EmulatorClient
from raydog_core.errors import BackendError
from raydog_core.interfaces import ClusterSpec, LaunchRequest

pytest.register_assert_rewrite("tests.yellowdog_fixtures")
from tests.yellowdog_fixtures import (  # noqa: E402
    NAMESPACE,
    SLEEP_SCRIPT,
    cluster_leaks,
    make_backend,
    make_spec,
    node_config,
)

pytest_plugins = ["tests.yellowdog_fixtures"]

HEAD = LaunchRequest("head", 1, True)
Phase = Callable[[ClusterSpec], None]


@dataclass
class Matrix:
    """Scenarios run, how many really hit their step, and every leak found."""

    phase: str
    calls: list[str] = field(default_factory=list)
    scenarios: int = 0
    hit: int = 0
    leaks: list[str] = field(default_factory=list)

    def report(self) -> str:
        distinct = len(dict.fromkeys(self.calls))
        return (
            f"{self.phase}: {len(self.calls)} API calls ({distinct} distinct); "
            f"{self.scenarios} scenarios, {self.hit} hit their step, {len(self.leaks)} leaks"
        )


class Interrupt:
    """Raise KeyboardInterrupt from inside the ``at``-th HTTP call the SDK makes, once."""

    def __init__(self, at: int, after_answer: bool) -> None:
        self.at = at
        self.after_answer = after_answer
        self.count = 0
        self.fired = False
        self._send = requests.Session.send

    def install(self, patch: pytest.MonkeyPatch) -> None:
        def send(session: requests.Session, request: Any, **kwargs: Any) -> Any:
            return self.send(session, request, **kwargs)

        patch.setattr(requests.Session, "send", send)

    def send(self, session: requests.Session, request: Any, **kwargs: Any) -> Any:
        self.count += 1
        due = self.count == self.at and not self.fired
        if due and not self.after_answer:
            self.fired = True
            raise KeyboardInterrupt
        response = self._send(session, request, **kwargs)
        if due:
            self.fired = True
            raise KeyboardInterrupt
        return response


def route(path: str) -> str:
    return re.sub(r"ydid:[^/]+", "{id}", path)


def head_launch(spec: ClusterSpec) -> None:
    """What ``ray up`` asks of the backend on a new cluster: look, then launch the head."""
    backend = make_backend(spec)
    try:
        backend.describe()
        backend.launch(HEAD)
    finally:
        backend.close()


def worker_scale_up(spec: ClusterSpec) -> None:
    """The head's autoscaler (a fresh process): look, add 3 workers, then 2 more."""
    backend = make_backend(spec)
    try:
        backend.describe()
        backend.launch(LaunchRequest("cpu", 3, False))
        backend.launch(LaunchRequest("cpu", 2, False))
    finally:
        backend.close()


def provider_for(spec: ClusterSpec) -> Any:
    """RayDogNodeProvider as Ray loads it, on yellowdog with the memory tag store."""
    from tests.conftest import memory_cluster_config
    from tests.ray_helpers import load_provider

    config = memory_cluster_config(
        spec.cluster_name,
        compute="yellowdog",
        cluster_namespace=NAMESPACE,
        api_max_attempts=1,
        ray_head_node_task_script=SLEEP_SCRIPT,
        ray_worker_node_task_script=SLEEP_SCRIPT,
    )
    for node_type in config["available_node_types"].values():
        node_type["node_config"] = node_config()
    return load_provider(config)


def close_provider(provider: Any, spec: ClusterSpec) -> None:
    from raydog_backends.memory.tag_store import MemoryTagStore

    provider.close()
    MemoryTagStore.forget(spec.cluster_name)


def ray_up_through_the_provider(spec: ClusterSpec) -> None:
    from tests.ray_helpers import head_tags

    provider = provider_for(spec)
    try:
        provider.non_terminated_nodes({})
        provider.create_node(node_config(), head_tags(), 1)
    finally:
        close_provider(provider, spec)


def scale_up_through_the_provider(spec: ClusterSpec) -> None:
    from tests.ray_helpers import worker_tags

    provider = provider_for(spec)
    try:
        provider.non_terminated_nodes({})
        provider.create_node(node_config(), worker_tags(), 3)
        provider.create_node(node_config(), worker_tags(), 2)
    finally:
        close_provider(provider, spec)


def start_head(spec: ClusterSpec) -> None:
    backend = make_backend(spec)
    backend.launch(HEAD)
    backend.close()


def ray_down(spec: ClusterSpec) -> None:
    backend = make_backend(spec)
    backend.shutdown()
    backend.close()


def stray_capacity(client: EmulatorClient, cluster: str) -> int:
    """Nodes a cluster's live worker pools are asked for beyond its live tasks."""
    state = client.state()
    pools = [p for p in state["pools"] if p["live"] and p["name"].startswith(f"{cluster}_")]
    requirements = {
        r["id"] for r in state["work_requirements"] if r["name"].startswith(f"{cluster}_")
    }
    tasks = [
        t
        for t in state["tasks"]
        if t["work_requirement_id"] in requirements
        and t["status"] not in ("COMPLETED", "FAILED", "CANCELLED", "ABORTED", "DISCARDED")
    ]
    return sum(p["target"] for p in pools) - len(tasks)


class Scenarios:
    def __init__(self, emulator: Emulator, with_head: bool, phase: Phase) -> None:
        self.client = EmulatorClient(emulator.url)
        self.with_head = with_head
        self.phase = phase

    def fresh_cluster(self) -> ClusterSpec:
        spec = make_spec(f"faults-{uuid.uuid4().hex[:8]}")
        if self.with_head:
            start_head(spec)
        return spec

    def record(self) -> list[str]:
        """The phase's API calls, in order, when nothing goes wrong."""
        spec = self.fresh_cluster()
        before = self.client.request_count()
        self.phase(spec)
        calls = [f"{r['method']} {route(r['path'])}" for r in self.client.requests(before)]
        ray_down(spec)
        return calls

    def run(self, step: int, kind: str) -> tuple[bool, list[str]]:
        """One scenario; whether it hit its step, and what leaked."""
        spec = self.fresh_cluster()
        cluster = slug(spec.cluster_name) or ""
        before = self.client.request_count()
        interrupt = Interrupt(step, after_answer=kind == "interrupted after the answer")
        with pytest.MonkeyPatch.context() as patch:
            if kind == "failing":
                self.client.fail(".", 500, nth=step)
            else:
                interrupt.install(patch)
            try:
                self.phase(spec)
            except (BackendError, NodeLaunchException, KeyboardInterrupt):
                pass
            finally:
                self.client.clear_faults()
        if kind == "failing":
            hit = any(r["status"] == 500 for r in self.client.requests(before))
        else:
            hit = interrupt.fired
        leaks = []
        if not self.with_head:
            leaks += [f"after the failure: {leak}" for leak in cluster_leaks(self.client, cluster)]
        elif kind == "failing" and (extra := stray_capacity(self.client, cluster)) > 0:
            leaks.append(f"after the failure: {extra} node(s) asked for with no task")
        ray_down(spec)
        leaks += [f"after ray down: {leak}" for leak in cluster_leaks(self.client, cluster)]
        return hit, leaks


def run_matrix(
    emulator: Emulator, name: str, with_head: bool, phase: Phase, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.platform.config.provision_delay = 0.0
    emulator.platform.config.task_start_delay = 0.0
    emulator.platform.config.boot_delay = 0.02
    scenarios = Scenarios(emulator, with_head, phase)
    matrix = Matrix(name, scenarios.record())
    assert matrix.calls, "the phase made no API call"
    for kind in ("failing", "interrupted before the request", "interrupted after the answer"):
        for step in range(1, len(matrix.calls) + 1):
            hit, leaks = scenarios.run(step, kind)
            matrix.scenarios += 1
            matrix.hit += hit
            where = matrix.calls[step - 1]
            matrix.leaks += [f"call {step} ({where}) {kind}: {leak}" for leak in leaks]
    with capsys.disabled():
        print(f"\n[yellowdog fault matrix] {matrix.report()}")
        print(f"[yellowdog fault matrix] {name} calls: {', '.join(matrix.calls)}")
    assert matrix.leaks == [], "\n".join(matrix.leaks)
    assert matrix.hit >= matrix.scenarios * 2 // 3, "most scenarios must hit their step"


def test_a_head_launch_cleans_up_after_any_failed_or_interrupted_call(
    emulator: Emulator, yd_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_matrix(emulator, "head launch", False, head_launch, capsys)


def test_a_worker_scale_up_leaves_nothing_after_ray_down(
    emulator: Emulator, yd_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_matrix(emulator, "worker scale-up", True, worker_scale_up, capsys)


def test_ray_up_through_the_node_provider_cleans_up_after_any_failed_or_interrupted_call(
    emulator: Emulator, yd_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_matrix(emulator, "ray up via the provider", False, ray_up_through_the_provider, capsys)


def test_a_scale_up_through_the_node_provider_leaves_nothing_after_ray_down(
    emulator: Emulator, yd_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_matrix(emulator, "scale-up via the provider", True, scale_up_through_the_provider, capsys)


def test_the_matrix_catches_a_backend_that_does_not_clean_up(
    emulator: Emulator, yd_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raydog_backends.yellowdog import YellowDogComputeBackend

    monkeypatch.setattr(YellowDogComputeBackend, "_undo_head_launch", lambda self, *a: [])
    scenarios = Scenarios(emulator, False, head_launch)
    calls = scenarios.record()
    step = calls.index("POST /work/taskGroups/{id}/tasks") + 1
    hit, leaks = scenarios.run(step, "failing")
    assert hit and any(leak.startswith("after the failure: worker pool") for leak in leaks)
