"""``raydog smoke-test``: the smallest real sequence that answers what RayDog assumes of YellowDog.

One work requirement with one task group, one worker pool of at most one node from the head's
template, one tiny task. Each answer is a category or a duration, never an id, an address, a name
or a secret, so a recording can be shared. Every object is named as RayDog names a cluster's
(``raydog-smoke-<random>``), so whatever happens, ``YellowDogFleet.shutdown`` finds and ends it
all: at the end, on an error, on Ctrl-C (a second one is ignored while it ends them), and the
platform itself ends the compute requirement at the deadline (its ``autoShutdown``).

``FACTS`` holds what the emulator answers (docs/emulator.md); tests check the emulator
against every recorded document in tests/data/platform-answers/.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from yellowdog_client.model import (
    AutoShutdown,
    ComputeRequirementStatus,
    ComputeRequirementTemplateUsage,
    InstanceSearch,
    NodeSearch,
    NodeWorkerTarget,
    ProvisionedWorkerPoolProperties,
    RetryPolicy,
    RunSpecification,
    Task,
    TaskGroup,
    TaskStatus,
    WorkerPoolStatus,
    WorkRequirement,
)

from raydog_backends.yellowdog.api import (
    API_ERRORS,
    Api,
    all_items,
    is_duplicate_task_name,
    is_refusal,
    reason,
)
from raydog_backends.yellowdog.cluster import HEAD_GROUP_TAG
from raydog_backends.yellowdog.fleet import YellowDogFleet
from raydog_backends.yellowdog.launch import TASK_SCRIPT_FILE, TASK_TYPE
from raydog_backends.yellowdog.names import ClusterNames, stamp
from raydog_backends.yellowdog.options import Options
from raydog_core.errors import BackendError
from raydog_core.interfaces import ComputeBackend, PlatformAnswer

POLL_SECONDS = 1.0
CLEANUP_SHARE = 0.4
"""The part of the deadline kept for ending everything (and measuring how long that takes)."""
TASK_SCRIPT = "#!/bin/bash\nsleep 600\n"
BAD_TAG = "Smoke_Tag-"
"""A tag outside YellowDog's naming rules (upper case, trailing ``-``)."""

FACTS = {
    "task tag outside the naming rules": "refused",
    "task name repeated in a task group": "refused",
    "pool of 0 nodes grows to its waiting task": "yes",
    "task runs on the pool's node": "yes",
    "instance addresses once the task runs": "private and public",
    "compute requirement status once the task runs": "RUNNING",
    "compute source status once the task runs": "ACTIVE",
}
"""Each compared fact, with the emulator's answer."""
MEASURED = (
    "instance addresses over time",
    "seconds until the pool's node runs the task",
    "seconds from pool shutdown to its nodes gone",
    "seconds from compute requirement termination to TERMINATED",
)
"""Facts only recorded: they depend on the machine, the cloud and the moment."""


class Deadline:
    """When everything must have ended; waits stop ``margin`` before it, for the ending."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.margin = min(60.0, seconds / 10)

    def left(self) -> float:
        return self.end - time.monotonic()

    def lifetime(self) -> timedelta:
        """What is left: the platform's own end (``autoShutdown``) for what is made now."""
        return timedelta(seconds=max(self.left(), 1.0))

    def may_wait(self) -> bool:
        return self.left() > self.margin


class SmokeTest:
    """One run against the platform the backend's credentials reach."""

    def __init__(
        self,
        backend: type[ComputeBackend],
        api: Api,
        options: Options,
        deadline_s: float,
        say: Callable[[str], None],
    ) -> None:
        self.backend = backend
        """The yellowdog backend's class, for the fleet that ends everything."""
        self.api = api
        self.options = options
        self.deadline = Deadline(deadline_s)
        self.say = say
        self.cluster = f"raydog-smoke-{secrets.token_hex(3)}"
        head = options.head_node_type
        self.names = ClusterNames.for_cluster(self.cluster, [head])
        self.head = head
        self.generation = stamp()
        self.answers: dict[str, str] = {}
        self.requirement_id: str | None = None
        self._interrupt = _Interrupt()

    def run(self) -> dict[str, str]:
        try:
            with self._interrupt.caught():
                self._sequence()
        finally:
            with _interrupts_held():
                self._end_everything()
        return self.answers

    def _sequence(self) -> None:
        sdk = self.api.sdk
        worker_tag = self.names.worker_tag(self.generation, self.head)
        group = TaskGroup(
            name=self.names.task_group(self.head, 1),
            tag=HEAD_GROUP_TAG,
            runSpecification=RunSpecification(
                taskTypes=[TASK_TYPE],
                workerTags=[worker_tag],
                namespaces=[self.options.namespace],
                taskTimeout=self.deadline.lifetime(),
                retryPolicy=RetryPolicy(maxRetries=0),
                disablePreallocation=True,
            ),
            finishIfAllTasksFinished=False,
            finishIfAnyTaskFailed=False,
        )
        self.say("step 1: a work requirement with one task group")
        made = sdk.work_client.add_work_requirement(
            WorkRequirement(
                namespace=self.options.namespace,
                name=self.names.work_requirement(self.generation),
                tag=self.cluster,
                taskGroups=[group],
            )
        )
        group_id = _id(made.taskGroups[0].id if made.taskGroups else None)
        self.say("step 2: a task whose tag breaks the naming rules")
        self.answers["task tag outside the naming rules"] = self._refused(
            lambda: sdk.work_client.add_tasks_to_task_group_by_id(
                group_id, [self._task("bad-tag", BAD_TAG)]
            )
        )
        self.say("step 3: a pool of 0 nodes (at most 1) from the head's template")
        config = self.options.node_types[self.head]
        name = self.names.pool(self.generation, self.head, stamp())
        usage = ComputeRequirementTemplateUsage(
            templateId=config.template,
            requirementName=name,
            requirementNamespace=self.options.namespace,
            requirementTag=self.cluster,
            targetInstanceCount=0,
            imagesId=config.images_id,
            userData=config.userdata,
            autoShutdown=AutoShutdown(enabled=True, timeout=self.deadline.lifetime()),
        )
        properties = ProvisionedWorkerPoolProperties(
            createNodeWorkers=NodeWorkerTarget.per_node(1),
            minNodes=0,
            maxNodes=1,
            nodeBootTimeout=self.deadline.lifetime(),
            idleNodeShutdown=AutoShutdown(enabled=True, timeout=timedelta(minutes=1)),
            idlePoolShutdown=AutoShutdown(enabled=True, timeout=timedelta(minutes=5)),
            workerTag=worker_tag,
        )
        pool = sdk.worker_pool_client.provision_worker_pool(usage, properties)
        self.requirement_id = pool.computeRequirementId
        self.say("step 4: one tiny task, then the same name again")
        task = self._task("t1", None)
        (added,) = sdk.work_client.add_tasks_to_task_group_by_id(group_id, [task])
        self.answers["task name repeated in a task group"] = self._refused(
            lambda: sdk.work_client.add_tasks_to_task_group_by_id(group_id, [self._task("t1")])
        )
        self.say("step 5: waiting for the pool to grow and the task to run")
        self._watch(_id(pool.id), _id(added.id))
        self.say("step 6: ending the pool and its compute requirement, timed")
        self._time_shutdown(_id(pool.id))

    def _task(self, suffix: str, tag: str | None = None) -> Task:
        return Task(
            name=f"{self.cluster}-{suffix}",
            tag=tag,
            taskType=TASK_TYPE,
            taskData=TASK_SCRIPT,
            arguments=[TASK_SCRIPT_FILE],
        )

    def _refused(self, request: Callable[[], object]) -> str:
        try:
            request()
        except API_ERRORS as exc:
            if is_duplicate_task_name(exc) or is_refusal(exc):
                return "refused"
            raise
        return "accepted"

    def _watch(self, pool_id: str, task_id: str) -> None:
        sdk = self.api.sdk
        started = time.monotonic()
        seen: list[str] = []
        grew = runs = False
        budget = self.deadline.seconds * (1 - CLEANUP_SHARE)
        while time.monotonic() - started < budget and self.deadline.may_wait():
            nodes = all_items(sdk.worker_pool_client.get_nodes(NodeSearch(workerPoolId=pool_id)))
            grew = grew or bool(nodes)
            addresses = "none"
            if self.requirement_id is not None:
                search = InstanceSearch(computeRequirementId=self.requirement_id)
                for instance in all_items(sdk.compute_client.get_instances(search)):
                    addresses = _addresses(instance)
            if not seen or seen[-1] != addresses:
                seen.append(addresses)
            task = sdk.work_client.get_task_by_id(task_id)
            if task.status is TaskStatus.EXECUTING and addresses != "none":
                runs = True
                self.answers["seconds until the pool's node runs the task"] = (
                    f"{time.monotonic() - started:.0f}"
                )
                break
            self._interrupt.pause(POLL_SECONDS)
        self.answers["pool of 0 nodes grows to its waiting task"] = "yes" if grew else "no"
        self.answers["task runs on the pool's node"] = "yes" if runs else "no"
        self.answers["instance addresses over time"] = " -> ".join(seen)
        self.answers["instance addresses once the task runs"] = seen[-1] if runs else "none"
        requirement = sdk.compute_client.get_compute_requirement_by_id(_id(self.requirement_id))
        self.answers["compute requirement status once the task runs"] = _value(requirement.status)
        strategy = requirement.provisionStrategy
        sources = list((strategy.sources if strategy is not None else None) or [])
        self.answers["compute source status once the task runs"] = ",".join(
            sorted({_value(source.status) for source in sources})
        )

    def _time_shutdown(self, pool_id: str) -> None:
        sdk = self.api.sdk
        started = time.monotonic()
        sdk.worker_pool_client.shutdown_worker_pool_by_id(pool_id)
        while self.deadline.may_wait():
            pool = sdk.worker_pool_client.get_worker_pool_by_id(pool_id)
            nodes = all_items(sdk.worker_pool_client.get_nodes(NodeSearch(workerPoolId=pool_id)))
            live = [n for n in nodes if n.status is not None and n.status.active]
            if pool.status in (WorkerPoolStatus.SHUTDOWN, WorkerPoolStatus.TERMINATED) and not live:
                break
            self._interrupt.pause(POLL_SECONDS)
        self.answers["seconds from pool shutdown to its nodes gone"] = (
            f"{time.monotonic() - started:.0f}"
        )
        if self.requirement_id is None:
            return
        started = time.monotonic()
        sdk.compute_client.terminate_compute_requirement_by_id(self.requirement_id)
        while self.deadline.may_wait():
            requirement = sdk.compute_client.get_compute_requirement_by_id(self.requirement_id)
            if requirement.status is ComputeRequirementStatus.TERMINATED:
                break
            self._interrupt.pause(POLL_SECONDS)
        self.answers["seconds from compute requirement termination to TERMINATED"] = (
            f"{time.monotonic() - started:.0f}"
        )

    def _end_everything(self) -> None:
        fleet = YellowDogFleet(self.backend, self.options.namespace, self.options.api_url)
        try:
            ended = fleet.shutdown(self.cluster)
            self.say("ended: " + (", ".join(ended) or "nothing was left"))
        finally:
            fleet.close()


def _id(value: str | None) -> str:
    if value is None:
        raise BackendError(
            "smoke-test", "an object YellowDog made", "it was returned without an id"
        )
    return value


def _addresses(instance: Any) -> str:
    private, public = instance.privateIpAddress, instance.publicIpAddress
    if private and public:
        return "private and public"
    if private:
        return "private only"
    if public:
        return "public only"
    return "none"


def _value(status: Any) -> str:
    return str(status.value) if status is not None else "none"


class _Interrupt:
    """Ctrl-C during the run: raised at once as KeyboardInterrupt, and remembered, so that the
    next pause raises it again. CPython 3.11.7 was seen to lose the exception its handler raised
    (while requests built a response, ``requests/cookies.py``): the run went on waiting, leaving
    the ending to the deadline."""

    def __init__(self) -> None:
        self.pressed = False

    def caught(self) -> contextlib.AbstractContextManager[None]:
        return _sigint_handled_by(self._on_sigint)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def pause(self, seconds: float) -> None:
        """Sleep; raise KeyboardInterrupt if Ctrl-C was pressed before or meanwhile."""
        if not self.pressed:
            time.sleep(seconds)
        if self.pressed:
            raise KeyboardInterrupt


def _interrupts_held() -> contextlib.AbstractContextManager[None]:
    """Ctrl-C while everything is being ended would leave it half-ended: ignored meanwhile."""
    return _sigint_handled_by(signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_handled_by(handler: Any) -> Iterator[None]:
    """SIGINT goes to ``handler`` for the block, then as before. Left alone outside the main
    thread (only it may set handlers) and where it is ignored already (a background job)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def smoke_test(
    backend: type[ComputeBackend],
    api: Api,
    options: Options,
    deadline_s: float,
    say: Callable[[str], None],
) -> list[PlatformAnswer]:
    """Run it; each fact with the emulator's answer and the platform's."""
    try:
        answers = SmokeTest(backend, api, options, deadline_s, say).run()
    except API_ERRORS as exc:
        where = f"YellowDog namespace {options.namespace}"
        raise BackendError("smoke-test", where, reason(exc)) from exc
    found = [
        PlatformAnswer(fact, expected, answers.get(fact, "not reached"), compared=True)
        for fact, expected in FACTS.items()
    ]
    found += [
        PlatformAnswer(fact, "", answers.get(fact, "not reached"), compared=False)
        for fact in MEASURED
    ]
    return found
