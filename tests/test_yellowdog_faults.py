"""Every API call of ``ray up``'s head launch and of a worker scale-up failing in turn, applied
but its reply lost (a 503 after the change was made), and interrupted (KeyboardInterrupt from
inside the HTTP call, before the request leaves and after its answer came back): afterwards
YellowDog holds nothing billable (no running work requirement, live worker pool, compute
requirement or instance). The head launch must clean up by itself; a scale-up must leave no task
Ray was not told of and no capacity without a task, and nothing after ``ray down``. Provisioning
failures and inconsistent node searches get scenarios of their own.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from ray.autoscaler.node_launch_exception import NodeLaunchException

from raydog_backends.yellowdog.names import slug
from raydog_backends.yellowdog_emulator import Emulator, EmulatorClient, EmulatorConfig
from raydog_core.errors import BackendError
from raydog_core.interfaces import ClusterSpec, LaunchRequest
from tests.waiting import wait_until
from tests.yellowdog_fixtures import (
    NAMESPACE,
    SLEEP_SCRIPT,
    cluster_leaks,
    make_backend,
    make_spec,
    node_config,
)

HEAD = LaunchRequest("head", 1, True)
Phase = Callable[[ClusterSpec, list[str]], None]
"""A step of the cluster's life; it appends the node ids it was given to the list."""
KINDS = (
    "failing",
    "applied, reply lost",
    "interrupted before the request",
    "interrupted after the answer",
)
FINISHED_TASK = ("COMPLETED", "FAILED", "CANCELLED", "ABORTED", "DISCARDED")


@dataclass
class Matrix:
    """Scenarios run, how many really hit their step, and every leak found."""

    phase: str
    calls: list[str] = field(default_factory=list)
    scenarios: int = 0
    hit: int = 0
    unreached: int = 0
    leaks: list[str] = field(default_factory=list)

    def report(self) -> str:
        distinct = len(dict.fromkeys(self.calls))
        return (
            f"{self.phase}: {len(self.calls)} API calls ({distinct} distinct); "
            f"{self.scenarios} scenarios, {self.hit} hit their step, {self.unreached} ended "
            f"before it, {len(self.leaks)} leaks"
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


def head_launch(spec: ClusterSpec, launched: list[str]) -> None:
    """What ``ray up`` asks of the backend on a new cluster: look, then launch the head."""
    backend = make_backend(spec)
    try:
        backend.describe()
        launched += backend.launch(HEAD)
    finally:
        backend.close()


def worker_scale_up(spec: ClusterSpec, launched: list[str]) -> None:
    """The head's autoscaler (a fresh process): look, add 3 workers, then 2 more, look."""
    backend = make_backend(spec)
    try:
        backend.describe()
        launched += backend.launch(LaunchRequest("cpu", 3, False))
        launched += backend.launch(LaunchRequest("cpu", 2, False))
        backend.describe()
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


def ray_up_through_the_provider(spec: ClusterSpec, launched: list[str]) -> None:
    from tests.ray_helpers import head_tags

    provider = provider_for(spec)
    try:
        provider.non_terminated_nodes({})
        launched += provider.create_node(node_config(), head_tags(), 1) or {}
    finally:
        close_provider(provider, spec)


def scale_up_through_the_provider(spec: ClusterSpec, launched: list[str]) -> None:
    from tests.ray_helpers import worker_tags

    provider = provider_for(spec)
    try:
        provider.non_terminated_nodes({})
        launched += provider.create_node(node_config(), worker_tags(), 3) or {}
        launched += provider.create_node(node_config(), worker_tags(), 2) or {}
        provider.non_terminated_nodes({})
    finally:
        close_provider(provider, spec)


def start_head(spec: ClusterSpec) -> str:
    backend = make_backend(spec)
    (head,) = backend.launch(HEAD)
    backend.close()
    return head


@contextlib.contextmanager
def booting_at_once(config: EmulatorConfig) -> Iterator[None]:
    """Nodes made meanwhile provision, boot, start their task and list their addresses at once:
    a scale-up scenario's head is only its starting point (each step's time is fixed when the
    step begins, so the phase under test meets the platform's delays again)."""
    delays = ("provision_delay", "boot_delay", "task_start_delay", "address_delay")
    kept = {name: getattr(config, name) for name in delays}
    config.update(dict.fromkeys(delays, 0.0))
    try:
        yield
    finally:
        config.update(kept)


def ray_down(spec: ClusterSpec) -> None:
    backend = make_backend(spec)
    backend.shutdown()
    backend.close()


def live_tasks(client: EmulatorClient, cluster: str) -> set[str]:
    state = client.state()
    requirements = {
        r["id"] for r in state["work_requirements"] if r["name"].startswith(f"{cluster}_")
    }
    return {
        t["id"]
        for t in state["tasks"]
        if t["work_requirement_id"] in requirements and t["status"] not in FINISHED_TASK
    }


def stray_capacity(client: EmulatorClient, cluster: str) -> int:
    """Nodes a cluster's live worker pools are asked for beyond its live tasks."""
    pools = [p for p in client.live_pools() if p["name"].startswith(f"{cluster}_")]
    return sum(p["target"] for p in pools) - len(live_tasks(client, cluster))


class Scenarios:
    def __init__(self, emulator: Emulator, with_head: bool, phase: Phase) -> None:
        self.client = EmulatorClient(emulator.url)
        self.config = emulator.platform.config
        self.with_head = with_head
        self.phase = phase
        self.head = ""

    def fresh_cluster(self) -> ClusterSpec:
        spec = make_spec(f"faults-{uuid.uuid4().hex[:8]}")
        if self.with_head:
            with booting_at_once(self.config):
                self.head = start_head(spec)
        return spec

    def record(self) -> list[str]:
        """The phase's API calls, in order, when nothing goes wrong."""
        spec = self.fresh_cluster()
        before = self.client.request_count()
        self.phase(spec, [])
        calls = [f"{r['method']} {route(r['path'])}" for r in self.client.requests(before)]
        ray_down(spec)
        return calls

    def run(self, step: int, kind: str) -> tuple[bool, bool, list[str]]:
        """One scenario: whether its run made ``step`` calls, whether the fault hit the
        ``step``-th, and what leaked."""
        spec = self.fresh_cluster()
        cluster = slug(spec.cluster_name) or ""
        before = self.client.request_count()
        interrupt = Interrupt(step, after_answer=kind == "interrupted after the answer")
        launched: list[str] = []
        failed = True
        with pytest.MonkeyPatch.context() as patch:
            if kind.startswith("interrupted"):
                interrupt.install(patch)
            else:
                self.client.fail(".", 503, nth=step, after_apply=kind == "applied, reply lost")
            try:
                self.phase(spec, launched)
                failed = False  # a fault the backend recovered from: nothing to clean up
            except (BackendError, NodeLaunchException, KeyboardInterrupt):
                pass
            finally:
                self.client.clear_faults()
        if kind.startswith("interrupted"):
            reached, hit = interrupt.count >= step, interrupt.fired
        else:
            served = self.client.requests(before)
            reached, hit = len(served) >= step, any(r["status"] == 503 for r in served)
        return reached, hit, self.leaks(spec, cluster, kind, launched, failed)

    def leaks(
        self, spec: ClusterSpec, cluster: str, kind: str, launched: list[str], failed: bool
    ) -> list[str]:
        leaks = []
        if not self.with_head:
            if failed:
                found = cluster_leaks(self.client, cluster)
                leaks += [f"after the failure: {leak}" for leak in found]
            elif not launched:
                leaks.append("the head launch neither failed nor returned a node")
        else:
            # Interrupted once its tasks were added, a launch cancels them; the pool may have
            # grown for them meanwhile (it scales itself to its tasks, yellowdog-cli README),
            # and those nodes end through its idle shutdown: not capacity the backend asked for.
            if (
                kind != "interrupted after the answer"
                and (extra := stray_capacity(self.client, cluster)) > 0
            ):
                leaks.append(f"after the failure: {extra} node(s) asked for with no task")
            unknown = live_tasks(self.client, cluster) - {self.head, *launched}
            if unknown:
                leaks.append(f"after the failure: {len(unknown)} task(s) Ray was not told of")
            if self.head not in live_tasks(self.client, cluster):
                leaks.append("after the failure: the head's task ended")
        ray_down(spec)
        leaks += [f"after ray down: {leak}" for leak in cluster_leaks(self.client, cluster)]
        return leaks


def run_matrix(
    emulator: Emulator,
    name: str,
    with_head: bool,
    phase: Phase,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each API call of ``phase`` meets a fault of ``kind`` in turn: every scenario must hit its
    call, and leave nothing behind."""
    emulator.platform.config.provision_delay = 0.0
    emulator.platform.config.task_start_delay = 0.0
    emulator.platform.config.boot_delay = 0.02
    scenarios = Scenarios(emulator, with_head, phase)
    matrix = Matrix(f"{name}, {kind}", scenarios.record())
    assert matrix.calls, "the phase made no API call"
    missed = []
    for step in range(1, len(matrix.calls) + 1):
        where = f"call {step} ({matrix.calls[step - 1]})"
        reached, hit, leaks = scenarios.run(step, kind)
        matrix.scenarios += 1
        matrix.hit += hit
        # The last calls depend on how far the nodes booted meanwhile: a run may end before
        # its step (the report counts those); one that made the call must have met the fault.
        matrix.unreached += not reached
        if reached and not hit:
            missed.append(where)
        matrix.leaks += [f"{where} {kind}: {leak}" for leak in leaks]
    with capsys.disabled():
        print(f"\n[yellowdog fault matrix] {matrix.report()}")
        print(f"[yellowdog fault matrix] {name} calls: {', '.join(matrix.calls)}")
    assert matrix.leaks == [], "\n".join(matrix.leaks)
    assert missed == [], f"scenarios that made their call but met no fault: {missed}"
    assert matrix.hit >= matrix.scenarios - 2, "only the last calls may be left unreached"


@pytest.mark.waits  # on the emulator booting each scenario's head
@pytest.mark.parametrize("kind", KINDS)
def test_a_head_launch_cleans_up_after_any_failed_or_interrupted_call(
    emulator: Emulator, yd_env: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_matrix(emulator, "head launch", False, head_launch, kind, capsys)


@pytest.mark.waits  # on the emulator booting each scenario's head
@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_scale_up_leaves_nothing_after_ray_down(
    emulator: Emulator, yd_env: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_matrix(emulator, "worker scale-up", True, worker_scale_up, kind, capsys)


@pytest.mark.waits  # on the emulator booting each scenario's head
@pytest.mark.parametrize("kind", KINDS)
def test_ray_up_through_the_node_provider_cleans_up_after_any_failed_or_interrupted_call(
    emulator: Emulator, yd_env: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_matrix(
        emulator, "ray up via the provider", False, ray_up_through_the_provider, kind, capsys
    )


@pytest.mark.waits  # on the emulator booting each scenario's head
@pytest.mark.parametrize("kind", KINDS)
def test_a_scale_up_through_the_node_provider_leaves_nothing_after_ray_down(
    emulator: Emulator, yd_env: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_matrix(
        emulator, "scale-up via the provider", True, scale_up_through_the_provider, kind, capsys
    )


def test_the_matrix_catches_a_backend_that_does_not_clean_up(
    emulator: Emulator, yd_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raydog_backends.yellowdog.launch import Launcher

    monkeypatch.setattr(Launcher, "_undo_head", lambda self, *a: [])
    scenarios = Scenarios(emulator, False, head_launch)
    calls = scenarios.record()
    step = calls.index("POST /work/taskGroups/{id}/tasks") + 1
    _, hit, leaks = scenarios.run(step, "failing")
    assert hit and any(leak.startswith("after the failure: worker pool") for leak in leaks)


def test_a_head_whose_pool_cannot_provision_fails_with_the_reason_and_leaves_nothing(
    emulator: Emulator, yd_env: str
) -> None:
    client = EmulatorClient(emulator.url)
    client.fail_provisioning("InsufficientInstanceCapacity in eu-west-2a")
    spec = make_spec(f"faults-{uuid.uuid4().hex[:8]}")
    backend = make_backend(spec, node_recheck_seconds=0.1)
    with pytest.raises(BackendError, match="InsufficientInstanceCapacity") as failed:
        backend.launch(HEAD)
    backend.close()
    assert any("work requirement" in item for item in failed.value.cleaned_up)
    assert cluster_leaks(client, slug(spec.cluster_name) or "") == []


def test_workers_whose_pool_cannot_provision_end_and_leave_nothing_after_ray_down(
    emulator: Emulator, yd_env: str
) -> None:
    client = EmulatorClient(emulator.url)
    spec = make_spec(f"faults-{uuid.uuid4().hex[:8]}")
    head = start_head(spec)
    client.fail_provisioning("image ydid:image:gone not found")
    backend = make_backend(spec, node_recheck_seconds=0.05)
    started = backend.launch(LaunchRequest("cpu", 3, False))
    ended = wait_until(
        lambda: [
            n for n in backend.describe() if n.node_id in started and n.state.value == "terminated"
        ],
        "the workers to end",
    )
    assert len(ended) == 3 and all("image ydid:image:gone not found" in n.detail for n in ended)
    backend.terminate(started)  # what the provider's tick does with nodes reported ended
    assert {n.node_id for n in backend.describe()} == {head}
    backend.close()
    ray_down(spec)
    assert cluster_leaks(client, slug(spec.cluster_name) or "") == []


def test_inconsistent_node_searches_end_no_node_and_leave_nothing_after_ray_down(
    emulator: Emulator, yd_env: str
) -> None:
    client = EmulatorClient(emulator.url)
    spec = make_spec(f"faults-{uuid.uuid4().hex[:8]}")
    head = start_head(spec)
    backend = make_backend(spec, node_recheck_seconds=0.01)
    started = backend.launch(LaunchRequest("cpu", 3, False))
    wait_until(
        lambda: sum(n.state.value == "running" for n in backend.describe()) == 4,
        "the cluster to run",
    )
    left_out = client.searches_with_a_node_left_out()
    client.hide_node_from_searches(None, times=10)

    def ten_searches_left_a_node_out() -> bool:
        """Each describe, those of the 10 inconsistent searches included."""
        nodes = {n.node_id: n for n in backend.describe()}
        assert {nodes[n].state.value for n in (head, *started)} == {"running"}
        return client.searches_with_a_node_left_out() >= left_out + 10

    wait_until(ten_searches_left_a_node_out, "10 node searches that leave a node out")
    assert live_tasks(client, slug(spec.cluster_name) or "") == {head, *started}
    backend.close()
    ray_down(spec)
    assert cluster_leaks(client, slug(spec.cluster_name) or "") == []
