"""The ``yellowdog`` compute backend: a Ray cluster as one YellowDog work requirement.

Each Ray node is one YellowDog task (its id is the Ray node id). The head's task and each worker
node type's tasks go to task groups of the cluster's work requirement; each node type gets one
provisioned worker pool from its compute requirement template, and the pool's worker tag is what
that type's task groups ask for. The platform's idle node and idle pool shutdowns are the safety
net: a node whose task was cancelled goes away by itself, and so does a pool nobody uses.

The parts, one concern each: ``options`` (checked before anything is created), ``api`` (the SDK
clients and error translation), ``cluster`` (finding the cluster by its names), ``pools``,
``launch`` (and undo), ``addresses`` and ``describe``, ``teardown``. See docs/yellowdog.md for
what this costs in API calls and what it leaves behind (nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raydog_backends.yellowdog import credentials, doctor, smoke
from raydog_backends.yellowdog.addresses import Addresses
from raydog_backends.yellowdog.api import API_ERRORS, Api, is_refusal, reason
from raydog_backends.yellowdog.cluster import (
    LIVE_POOL,
    LIVE_WORK_REQUIREMENT,
    UNENDED_REQUIREMENT,
    Clusters,
)
from raydog_backends.yellowdog.describe import Describer
from raydog_backends.yellowdog.fleet import fleet as fleet_of
from raydog_backends.yellowdog.heads import Heads
from raydog_backends.yellowdog.launch import Launcher
from raydog_backends.yellowdog.options import DEFAULT_LIFETIME_HOURS, Options, userdata_of
from raydog_backends.yellowdog.pools import Pools
from raydog_backends.yellowdog.teardown import shutdown_everything
from raydog_core.errors import BackendError
from raydog_core.interfaces import (
    Check,
    ClusterSpec,
    ComputeBackend,
    Fleet,
    LaunchRequest,
    NodeInfo,
    PlatformAnswer,
)

if TYPE_CHECKING:
    pass

AGENT_HOME = "/opt/yellowdog/agent"
AGENT_INSTALLER = (
    "https://raw.githubusercontent.com/yellowdog/resources/refs/heads/main"
    "/agent-install/linux/yd-agent-installer.sh"
)


class YellowDogComputeBackend(ComputeBackend):
    """Ray nodes as YellowDog tasks on provisioned worker pools (see the module docstring)."""

    runs_node_setup = True  # the agent takes tasks before the rest of the setup has finished

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        cluster_namespace: str = "default",
        cluster_tag: str | None = None,
        cluster_lifetime_hours: float = DEFAULT_LIFETIME_HOURS,
        head_node_build_timeout_minutes: float = 20.0,
        idle_node_shutdown_minutes: float = 1.0,
        idle_pool_shutdown_minutes: float = 10.0,
        node_recheck_seconds: float = 30.0,
        api_url: str | None = None,
        api_max_attempts: int = 3,
    ) -> None:
        """The provider section's options, checked; no I/O.

        - ``cluster_namespace``: the YellowDog namespace of everything the cluster creates.
        - ``cluster_tag``: the tag of its work requirement and pools (default: the cluster's name).
        - ``cluster_lifetime_hours``: each task's timeout, and each pool's compute requirement's
          ``autoShutdown``: no node outlives it, even if RayDog is gone. The default is
          yellowdog-ray's (1 hour); ``ray up`` says when the head will end. This and each
          time below: at most 3650 days.
        - ``head_node_build_timeout_minutes``: how long ``ray up`` waits for the head to run
          (and a pool's node boot timeout).
        - ``idle_node_shutdown_minutes``: a node without a task shuts down after this.
        - ``idle_pool_shutdown_minutes``: a pool without nodes shuts down after this.
        - ``node_recheck_seconds``: how often a tick checks that nodes are alive and that the
          pools of nodes still waiting can start them.
        - ``api_url``: the YellowDog API (default: ``YD_API_URL``, else the public platform).
        - ``api_max_attempts``: attempts per API request (429 and 5xx are retried).
        """
        super().__init__(spec)
        self.options = Options.check(
            spec,
            cluster_namespace=cluster_namespace,
            cluster_tag=cluster_tag,
            cluster_lifetime_hours=cluster_lifetime_hours,
            head_node_build_timeout_minutes=head_node_build_timeout_minutes,
            idle_node_shutdown_minutes=idle_node_shutdown_minutes,
            idle_pool_shutdown_minutes=idle_pool_shutdown_minutes,
            node_recheck_seconds=node_recheck_seconds,
            api_url=api_url,
            api_max_attempts=api_max_attempts,
        )
        self.api = Api(spec.cluster_name, self.options.api_url, self.options.api_max_attempts)
        self.clusters = Clusters(
            self.api, self.options.names, self.options.namespace, list(spec.node_types)
        )
        self.pools = Pools(self.api, self.clusters, self.options, spec.head_setup)
        self.addresses = Addresses(self.api, self.clusters)
        self.heads = Heads(spec, self.options, self.api, self.clusters, self.pools, self.addresses)
        self.launcher = Launcher(
            spec,
            self.options,
            self.api,
            self.clusters,
            self.pools,
            self.heads,
            self._shutdown_everything,
        )
        self.describer = Describer(
            self.api,
            self.clusters,
            self.pools,
            self.addresses,
            self.heads,
            self.options.node_recheck_seconds,
        )

    # --- the ComputeBackend interface ----------------------------------------------------

    def launch(self, request: LaunchRequest) -> list[str]:
        if request.node_type not in self.options.node_types:
            raise BackendError(
                "launch", f"node type {request.node_type!r}", "not in available_node_types"
            )
        if request.count < 1:
            return []
        if request.is_head:
            return self.launcher.head(request.node_type, request.launch_config)
        return self.launcher.workers(request.node_type, request.count, request.launch_config)

    def describe(self) -> list[NodeInfo]:
        return self.describer.describe()

    def terminate(self, node_ids: Collection[str]) -> None:
        """Cancel these nodes' tasks; ids already ended or unknown are not an error."""
        failures = []
        for node_id in dict.fromkeys(node_ids):
            try:
                self.api.sdk.work_client.cancel_task_by_id(node_id, True)
            except API_ERRORS as exc:
                if not is_refusal(exc):
                    failures.append(f"{node_id}: {reason(exc)}")
        self.describer.forget(node_ids)
        if failures:
            raise BackendError("terminate", f"nodes of {self.clusters.what()}", "; ".join(failures))

    def shutdown(self) -> None:
        with self.launcher.lock:
            cleaned, failures = self._shutdown_everything()
        if failures:
            raise BackendError("shut down", self.clusters.what(), "; ".join(failures), cleaned)

    def _shutdown_everything(self) -> tuple[list[str], list[str]]:
        self.heads.forget()
        self.addresses.clear()
        self.describer.clear()
        return shutdown_everything(self.api, self.clusters, self.pools)

    def known_secrets(self) -> dict[str, str]:
        """The API key secrets this machine holds for the cluster (no request, nothing saved)."""
        return credentials.known_secrets(self.api.cluster_name, os.environ)

    def preflight(self) -> list[Check]:
        """``raydog doctor``: the key is found and accepted; no pool outlived its cluster and no
        compute requirement its pool (an interrupted ``ray down`` leaves them); the namespace's
        policy lets the cluster reach its size, and the templates give the head a public IP
        where Ray needs one (see ``doctor``). Reads only."""
        try:
            found = self.api.credentials()
        except BackendError as exc:
            return [Check("yellowdog credentials", False, exc.reason, "set them, or add a .env")]
        detail = f"key {found.key_id} from {found.source}"
        if found.source == credentials.saved_source(self.api.cluster_name):
            detail += (
                f" (neither the environment nor {Path.cwd() / credentials.DOTENV} sets one: the "
                "copy an earlier `ray up` saved is used; `ray down` removes it)"
            )
        checks = [Check("yellowdog credentials", True, detail)]
        try:
            requirements = self.clusters.work_requirements(LIVE_WORK_REQUIREMENT)
            pools = self.clusters.pools(LIVE_POOL)
            computes = self.clusters.compute_requirements(UNENDED_REQUIREMENT)
        except BackendError as exc:
            fix = "check YD_API_URL, YD_API_KEY_ID and YD_API_KEY_SECRET"
            return [*checks, Check("yellowdog api", False, f"{found.url}: {exc.reason}", fix)]
        checks.append(
            Check(
                "yellowdog api",
                True,
                f"{found.url} accepts the key; namespace {self.options.namespace}: "
                f"{len(requirements)} running work requirement(s), {len(pools)} live pool(s) "
                "of this cluster",
            )
        )
        if pools and not requirements:
            names = ", ".join(str(pool.name) for pool in pools)
            checks.append(
                Check(
                    "yellowdog leftovers",
                    False,
                    f"worker pools without a running cluster: {names}",
                    "ray down removes them",
                )
            )
        cap = doctor.namespace_cap(self.api, self.options)
        if cap is not None:
            checks.append(cap)
        if not self.spec.internal_ips:
            checks += doctor.templates_without_public_ip(self.api, self.options)
        live_pools = {pool.name for pool in pools}
        orphans = [str(c.name) for c in computes if c.name not in live_pools]
        if orphans:
            checks.append(
                Check(
                    "yellowdog leftover compute requirements",
                    False,
                    "compute requirements still running after their worker pool shut down: "
                    + ", ".join(orphans),
                    "ray down terminates them",
                )
            )
        return checks

    @classmethod
    def boot_setup(cls, node_config: Mapping[str, Any]) -> str | None:
        """The node type's ``userdata`` and ``extra_userdata``: the core waits for RayDog's
        setup only where they run it (a yellowdog-ray setup never writes its marker)."""
        return userdata_of(node_config)

    def node_setup_script(self, node_type: str, common: str) -> str:
        """The YellowDog agent first: it runs the node's task and creates the ``yd-agent``
        user that the core's part gives the SSH key to. Skipped if the image has the agent."""
        lines = common.splitlines(keepends=True)
        shebang = lines.pop(0) if lines and lines[0].startswith("#!") else "#!/usr/bin/env bash\n"
        agent = (
            "# The YellowDog agent, which runs this node's Ray task\n"
            f"if [ ! -d {AGENT_HOME} ]; then\n"
            f"  curl -LsSf {AGENT_INSTALLER} | bash\n"
            "fi\n\n"
        )
        return shebang + agent + "".join(lines)

    def close(self) -> None:
        self.api.close()

    def smoke_test(self, deadline_s: float, say: Callable[[str], None]) -> list[PlatformAnswer]:
        """One node from the head's template, one tiny task, each platform fact measured, and
        everything ended before the deadline (see ``smoke``)."""
        return smoke.smoke_test(type(self), self.api, self.options, deadline_s, say)

    @classmethod
    def fleet(cls, namespace: str | None, options: Mapping[str, Any]) -> Fleet:
        """Every RayDog cluster of the namespace, without a config (see ``fleet``)."""
        return fleet_of(cls, namespace, options)
