"""The three plugin interfaces, and the value types that cross them.

Third parties code against these names; keep them small. Everything shared (caching, locking,
batching, buffering writes, reconciliation with the compute backend) lives in the core.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raydog_core.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from types import ModuleType

    from ray.autoscaler.command_runner import CommandRunnerInterface

Tags = dict[str, str]


@dataclass(frozen=True)
class Endpoint:
    """Where a server can be reached from the process that holds this value."""

    host: str
    port: int


@dataclass(frozen=True)
class ChangeToken:
    """Where a reader of a tag store stands: the store's epoch and the last version it saw.

    The epoch names one lifetime of the store's data: it changes when the data is lost or
    replaced (a server restarted without persistence, a flushed database, a failover), so a
    token from another epoch can only be answered with a full reload.
    """

    epoch: str
    version: int
    write: str = ""
    """Optional (TagStore interface 4): the id of the write that took ``version``, so that a
    store restored to an older copy, which has since moved on past ``version`` with other
    writes, is told apart from the one the reader saw; "" when the store keeps no such ids."""


@dataclass(frozen=True)
class Changes:
    """The answer to :meth:`TagStore.changes_since`."""

    token: ChangeToken
    """Pass it to the next call."""
    full: bool
    """True: ``updated`` holds every node of the cluster (a full reload; ``deleted`` is empty),
    because the caller had no token, or its token is from another epoch or too old."""
    updated: Mapping[str, Tags]
    """Each node created or changed since the token, with all of its tags."""
    deleted: Collection[str] = ()
    """Nodes deleted since the token (and not created again)."""
    rewound: bool = False
    """Optional (TagStore interface 4): the store's history does not hold the token (it is
    behind it, or took another write at its version): it was restored to an older copy, so
    writes the caller saw may be lost. ``full`` is then True. A version lower than the token's
    counts as rewound whatever this says."""


class TagStore(ABC):
    """Where Ray's node tags live: ``node id -> {tag: value}`` for one cluster.

    Plugins need not be thread-safe: the core serialises every call. Connection failures are
    raised as :class:`raydog_core.errors.UnreachableError` so the core can buffer and retry.
    """

    head_port: int | None = None
    """Port the store's server listens on at the head node; None: the store is not on the head."""

    max_value_bytes: int | None = None
    """Optional (TagStore interface 3): the longest tag name or value, in UTF-8 bytes, the store
    can hold; None: no limit. The core refuses a longer one to its writer (``TagValueError``),
    so one bad value never holds back the rest of a batch; should the limit drop once connected,
    a longer value already queued is dropped with one log line naming its node and tag."""

    def __init__(self, cluster_name: str, **options: Any) -> None:
        self.cluster_name = cluster_name

    @abstractmethod
    def connect(self, endpoint: Endpoint | None) -> None:
        """Connect; ``endpoint`` is where the transport made ``head_port`` reachable."""

    @abstractmethod
    def load_all(self) -> dict[str, Tags]:
        """Every node's tags, in O(1) round trips."""

    @abstractmethod
    def update(self, updates: Mapping[str, Mapping[str, str]]) -> None:
        """Merge tags into many nodes at once (tags not named keep their values)."""

    @abstractmethod
    def delete(self, node_ids: Collection[str]) -> None:
        """Forget these nodes and all their tags."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store may be connected again later."""

    def known_secrets(self) -> Mapping[str, str]:
        """Optional (any plugin): the secrets it would use that this machine holds, by what
        they are (``"the tag store's password"``), read without creating any. The core refuses
        a config that writes one of them out (a setup command, a script, ``docker``)."""
        return {}

    def changes_since(self, token: ChangeToken | None) -> Changes:
        """Optional (TagStore interface 2): what changed since ``token``, in one round trip.

        ``None``, a token of another epoch, or one older than the store remembers: a full reload
        (``Changes.full``). Otherwise the nodes changed or deleted since, and nothing else, so a
        tick where nothing changed costs a constant number of bytes. Writes of racing clients
        must never be missed: a version is taken atomically with the write it numbers. Stores
        without it keep working: the core then reads ``load_all`` every tick.
        """
        raise NotImplementedError

    def update_unless_deleted(
        self, updates: Mapping[str, Mapping[str, str]], launched: Collection[str]
    ) -> Collection[str]:
        """Optional (TagStore interface 5): ``update``, except that a node the store holds a
        tombstone for (deleted, and not written since) stays deleted and its write is dropped,
        unless the node is in ``launched`` (the write comes from the node's own launch).
        Returns the nodes whose writes were dropped. The check is atomic with the write, so a
        late writer (a thread finishing after the node was terminated, a cache that missed the
        delete) cannot bring a deleted node back. Stores without it: the core calls ``update``.
        """
        raise NotImplementedError

    def head_server_install(self) -> str | None:
        """Optional: shell that installs this store's server on the head when it is missing.

        Backends that provision machines add it to the head's setup (userdata); it must be
        idempotent and cheap when the server is already there.
        """
        return None

    def head_server_command(self) -> str | None:
        """Optional: the shell command that runs this store's server on the head node.

        The core puts it in front of the head node's task script. It must return at once
        (start the server in the background) and never carry a secret on its command line.
        """
        return None


def offers_changes(store: TagStore) -> bool:
    """Whether ``store`` implements the optional :meth:`TagStore.changes_since`."""
    return type(store).changes_since is not TagStore.changes_since


def offers_tombstones(store: TagStore) -> bool:
    """Whether ``store`` implements the optional :meth:`TagStore.update_unless_deleted`."""
    return type(store).update_unless_deleted is not TagStore.update_unless_deleted


class Transport(ABC):
    """Opens a path from where the provider runs to a port on the head node."""

    uses_ssh: bool = False
    """Optional: True when the path goes over SSH to the head, with the config's
    ``auth.ssh_user`` and ``auth.ssh_private_key``. It then works only with a compute backend
    whose nodes Ray reaches over SSH, and ``raydog validate`` asks for the key file."""

    def __init__(self, cluster_name: str, **options: Any) -> None:
        self.cluster_name = cluster_name

    @abstractmethod
    def open(self, host: str, port: int, auth: Mapping[str, Any]) -> Endpoint:
        """Make ``port`` on ``host`` (the head's external address) reachable; idempotent.

        Called again after a failure on the path: a dropped path must be reopened here.
        ``auth`` is the cluster config's ``auth`` section.
        """

    @abstractmethod
    def close(self) -> None:
        """Close whatever ``open`` opened."""


class NodeState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class NodeSteps:
    """When a node reached each step of its start, as the compute backend records it: seconds
    since the epoch, None where it has not or the backend cannot tell (``raydog status --why``
    shows them; docs/observability.md says what each backend knows)."""

    created: float | None = None
    """The platform took the launch: its record of the node was made."""
    booted: float | None = None
    """The node's machine came up and took its task."""
    setup_finished: float | None = None
    """The node's setup finished and its task began to start Ray."""


NO_STEPS = NodeSteps()


@dataclass(frozen=True)
class NodeInfo:
    """One node as the compute backend sees it."""

    node_id: str
    node_type: str
    is_head: bool
    state: NodeState
    internal_ip: str | None = None
    external_ip: str | None = None
    detail: str = ""
    """Why the node is in this state (for logs), e.g. ``task FAILED``."""
    launch_config: str = ""
    """Ray's ``ray-launch-config`` tag as given at launch, kept in the backend's own record of the
    node so that it survives the loss of the tag store ("" when the backend was not told one)."""
    steps: NodeSteps = field(default=NO_STEPS, compare=False)
    """Optional: when the node reached each step of its start (its history, not its state)."""


@dataclass(frozen=True)
class NodeTypeSpec:
    """One entry of the cluster config's ``available_node_types``."""

    name: str
    node_config: Mapping[str, Any] = field(default_factory=dict)
    resources: Mapping[str, float] = field(default_factory=dict)
    min_workers: int = 0
    max_workers: int = 0


@dataclass(frozen=True)
class ClusterSpec:
    """What a compute backend is told about the cluster, validated before it is built."""

    cluster_name: str
    head_node_type: str
    node_types: Mapping[str, NodeTypeSpec]
    head_script: str
    """Bash the head node runs; the core has already put the tag store's server command first."""
    worker_script: str
    """Bash each worker runs; the backend sets ``RAY_HEAD_IP`` (the head's internal IP)."""
    head_setup: str = ""
    """Shell a provisioning backend adds to the head machine's setup (the tag store's server)."""
    auth: Mapping[str, Any] = field(default_factory=dict)
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False)
    """The time the backend lives in: the machine's, or a simulation's (``raydog simulate``)."""
    worker_scripts: Mapping[str, str] = field(default_factory=dict)
    """Each worker node type's own script, where the core made one per type (its resources,
    whether it waits for RayDog's setup); a type not in it runs ``worker_script``."""
    internal_ips: bool = False
    """Ray reaches the nodes by their internal addresses (``provider.use_internal_ips``): a node
    needs no public one."""

    def script(self, node_type: str, is_head: bool) -> str:
        """The bash a node runs: what backends hand their nodes."""
        if is_head:
            return self.head_script
        return self.worker_scripts.get(node_type, self.worker_script)


@dataclass(frozen=True)
class Check:
    """One line of ``raydog doctor``: what was checked, whether it passed, and the fix."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


@dataclass(frozen=True)
class LaunchRequest:
    node_type: str
    count: int
    is_head: bool
    node_config: Mapping[str, Any] = field(default_factory=dict)
    launch_config: str = ""
    """Ray's ``ray-launch-config`` tag for these nodes: the backend keeps it with each node and
    reports it back in :attr:`NodeInfo.launch_config`."""


CLUSTER_STATES = ("running", "shutting down", "leftovers")
"""What :attr:`FleetCluster.state` may say: a live head; only objects already ending; objects
that still cost money with no live head (a failed or interrupted run)."""


@dataclass(frozen=True)
class FleetCluster:
    """One cluster a compute backend can see, found without its config (``raydog clusters``)."""

    name: str
    """The name ``raydog shutdown`` takes (the backend's form of the cluster's name)."""
    state: str
    """One of :data:`CLUSTER_STATES`."""
    head_address: str | None = None
    nodes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Node type -> node state (``NodeState`` values) -> how many."""
    started: float | None = None
    """When the cluster was made, in seconds since the epoch (None: unknown)."""
    ends: float | None = None
    """When the last of what it runs ends by itself (its lifetime), in seconds since the epoch."""
    billable: tuple[str, ...] = ()
    """What still costs money or holds the machine, one line each (``worker pool x (RUNNING)``)."""


class Fleet(ABC):
    """Optional (ComputeBackend interface 2): every cluster of one backend that this machine's
    credentials can see, and how to end one, without its config (``raydog clusters`` and
    ``raydog shutdown``). Only the backend's own objects are listed or touched."""

    where: str = ""
    """Where it looks, for messages (``YellowDog namespace ns``)."""

    @abstractmethod
    def clusters(self) -> list[FleetCluster]:
        """Every cluster with something left (running, ending, or leftovers); reads only."""

    @abstractmethod
    def shutdown(self, name: str) -> list[str]:
        """End the cluster ``name`` as ``ComputeBackend.shutdown`` does; what was ended
        (empty when nothing was left). Idempotent. Raises ``BackendError`` naming what failed."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release clients."""


@dataclass(frozen=True)
class PlatformAnswer:
    """One fact of ``raydog smoke-test``: what the backend's emulator answers, what the platform
    answered (a category or a figure: never an id, an address, a name or a secret)."""

    fact: str
    emulator: str
    platform: str
    compared: bool = True
    """False: a measurement (a duration...), recorded but not held against the emulator."""

    @property
    def agrees(self) -> bool:
        return not self.compared or self.emulator == self.platform


class ComputeBackend(ABC):
    """Where nodes come from. One instance per provider; the core serialises nothing here,
    so methods may be called from several threads at once and must be safe for that.

    Construction does no I/O: it validates ``spec`` and the options (raising
    :class:`raydog_core.errors.ConfigError`) and nothing else. Every method finds an existing
    cluster of the same name by itself (a second ``ray up``, ``ray down``, the head's autoscaler).
    Tasks get the environment variables ``RAYDOG_CLUSTER_NAME``, ``RAYDOG_NODE_TYPE``,
    ``RAYDOG_NODE_ID`` and, on workers, ``RAY_HEAD_IP``.
    """

    runs_node_setup: bool = False
    """Optional: True when this backend's nodes run the script ``raydog node-setup`` prints
    (through :meth:`node_setup_script`) as they boot, and may start a task before it has
    finished. The core then holds every task script until the setup's end marker exists."""

    def __init__(self, spec: ClusterSpec, **options: Any) -> None:
        self.spec = spec

    @classmethod
    def boot_setup(cls, node_config: Mapping[str, Any]) -> str | None:
        """Optional, with :attr:`runs_node_setup`: the script a node of this ``node_config``
        runs as it boots (its userdata), or None when the config names none. The core waits
        for RayDog's setup only on nodes whose boot script is RayDog's
        (``node_setup.is_raydog_setup``); with None it takes the node to run RayDog's setup
        (from the image). No I/O: ``file:`` references are already read."""
        return None

    @abstractmethod
    def launch(self, request: LaunchRequest) -> list[str]:
        """Start ``request.count`` nodes and return their ids.

        Workers: return at once. The head: return once it runs and its IPs are known, or raise
        :class:`raydog_core.errors.BackendError` after cleaning up what was made.
        """

    @abstractmethod
    def describe(self) -> list[NodeInfo]:
        """Every node of the cluster in one batched round of calls. Nodes long gone may be
        left out; a node left out is terminated as far as the core is concerned.

        Reports, never acts: asked twice, it answers the same. A node the platform lost is
        reported the same way by every describe (``TERMINATED`` with a ``detail``, or left out)
        until ``terminate`` is called for it, which the provider's tick does."""

    @abstractmethod
    def terminate(self, node_ids: Collection[str]) -> None:
        """Stop these worker nodes; unknown or already stopped ids are not an error."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the whole cluster and leave nothing billable; idempotent."""

    def command_runner(
        self,
        *,
        log_prefix: str,
        node_id: str,
        auth_config: Mapping[str, Any],
        cluster_name: str,
        process_runner: ModuleType,
        use_internal_ip: bool,
    ) -> CommandRunnerInterface | None:
        """Optional: how Ray runs commands on ``node_id``; None means Ray's SSH runner."""
        return None

    def preflight(self) -> list[Check]:
        """Optional: checks for ``raydog doctor`` (credentials accepted, leftovers...).

        May call the platform, but must create nothing.
        """
        return []

    def known_secrets(self) -> Mapping[str, str]:
        """Optional: as ``TagStore.known_secrets`` (the platform's API key secret, say)."""
        return {}

    def node_setup_script(self, node_type: str, common: str) -> str:
        """Optional: the setup a node of ``node_type`` needs (``raydog node-setup``).

        ``common`` is the core's part (Python, Ray and raydog at the client's versions, the SSH
        key); a backend adds what its platform needs, such as an agent.
        """
        return common

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Optional: release clients and threads (not the cluster's nodes)."""

    def smoke_test(self, deadline_s: float, say: Callable[[str], None]) -> list[PlatformAnswer]:
        """Optional (ComputeBackend interface 2): ``raydog smoke-test``. The smallest real
        sequence that answers the platform facts the backend relies on, with the config's
        credentials and node types; every object it makes is ended before ``deadline_s``
        seconds have passed, whatever happens (an error, KeyboardInterrupt). ``say`` prints
        progress. Unlike the other methods, it creates (and ends) billable objects."""
        raise NotImplementedError

    @classmethod
    def fleet(cls, namespace: str | None, options: Mapping[str, Any]) -> Fleet:
        """Optional (ComputeBackend interface 2): the :class:`Fleet` of this backend.

        ``namespace``: where to look, as the user named it (None: from ``options``, else the
        backend's default; backends without namespaces ignore it). ``options``: the backend's
        options from the config next to the user ({} when there is none). No I/O here."""
        raise NotImplementedError


def offers_smoke_test(backend: ComputeBackend) -> bool:
    """Whether ``backend`` implements the optional :meth:`ComputeBackend.smoke_test`."""
    return type(backend).smoke_test is not ComputeBackend.smoke_test


def offers_fleet(backend: type[ComputeBackend]) -> bool:
    """Whether ``backend`` implements the optional :meth:`ComputeBackend.fleet`."""
    return backend.fleet.__func__ is not ComputeBackend.fleet.__func__  # type: ignore[attr-defined]
