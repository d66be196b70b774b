"""A local cluster for the end-to-end tests and the phase benchmark: ``examples/local`` of a
RayDog checkout, driven by ``raydog_core.testing.lifecycle`` (nothing in the plugin imports it).

``LocalCluster`` watches the nodes through a ``LocalComputeBackend`` of its own (the same files
``ray up`` and the head's autoscaler use), and stops them if a run fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from raydog_backends.local import LocalComputeBackend
from raydog_backends.local.nodes import NodeRecord
from raydog_backends.process_nodes.addresses import free_port, listening_sockets
from raydog_core.interfaces import ClusterSpec, NodeInfo, NodeState, NodeTypeSpec
from raydog_core.testing.lifecycle import RayCluster
from raydog_core.validation import load_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local"
"""The example in the checkout this module runs from."""


def example_config(folder: Path, cluster_name: str, idle_timeout_minutes: float) -> Path:
    """examples/local/cluster.yaml with a fresh name, a short idle timeout and a free tag port.

    Its nodes run RayDog's default task scripts: the example names none.
    """
    config = load_file(EXAMPLE / "cluster.yaml")
    config["cluster_name"] = cluster_name
    config["idle_timeout_minutes"] = idle_timeout_minutes
    provider = config["provider"]
    provider["tag_store"] = {"type": "valkey", "port": free_port()}
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class LocalCluster(RayCluster):
    """A cluster of the ``local`` backend (examples/local)."""

    seen: dict[str, NodeRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        spec = ClusterSpec(
            cluster_name=self.cluster_name,
            head_node_type="head",
            node_types={"head": NodeTypeSpec("head"), "cpu_worker": NodeTypeSpec("cpu_worker")},
            head_script="",
            worker_script="",
        )
        self.observer = LocalComputeBackend(spec, base_dir=str(self.home / "local"))

    def write_config(self) -> Path:
        return example_config(self.folder, self.cluster_name, self.idle_timeout_minutes)

    def nodes(self) -> dict[str, NodeInfo]:
        """The cluster's live nodes; remembers each node's record to check cleanup later."""
        for record in self.observer.folder.records():
            self.seen.setdefault(record.node_id, record)
        return {
            info.node_id: info
            for info in self.observer.describe()
            if info.state is not NodeState.TERMINATED
        }

    def leftovers(self) -> list[str]:
        """Everything of the cluster still on this machine, described; empty when clean."""
        found = []
        for record in self.seen.values():
            process = record.process()
            members = process.members() if process is not None else []
            if members:
                found.append(f"processes of {record.node_id}: {members}")
            if Path(record.tmp_dir).exists():
                found.append(f"temp folder of {record.node_id}: {record.tmp_dir}")
        # An address given back may already be leased to a node of another cluster on this
        # machine (tests run side by side): what listens there is that node's.
        ours = {self.node_dir(record) for record in self.seen.values()}
        addresses = {record.ip for record in self.seen.values()}
        ports = {port for record in self.seen.values() for port in record.ports.values()}
        for address, port in sorted(listening_sockets()):
            if self.observer.addresses.holder(address) not in (None, *ours):
                continue
            if address in addresses or port in ports:
                found.append(f"listening socket {address}:{port}")
        if self.observer.folder.root.exists():
            found.append(f"cluster folder {self.observer.folder.root}")
        return found

    def node_dir(self, record: NodeRecord) -> Path:
        return self.observer.folder.node_dir(record.node_id).absolute()

    def destroy(self) -> None:
        """Stop whatever a failed run left (a clean run leaves nothing to stop)."""
        self.nodes()
        self.observer.shutdown()

    @contextlib.contextmanager
    def tag_store_paused(self) -> Iterator[None]:
        """SIGSTOP the head's tag store server (the valkey or redis server among the head's
        processes) for the block, SIGCONT after: connections stay open, nothing answers."""
        (head,) = [record for record in self.observer.folder.records() if record.is_head]
        process = head.process()
        members = process.members() if process is not None else []
        servers = [pid for pid in members if _command_name(pid) in TAG_SERVERS]
        assert servers, f"no tag store server among the head's processes {members}"
        for pid in servers:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in servers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


TAG_SERVERS = ("valkey-server", "redis-server")


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
