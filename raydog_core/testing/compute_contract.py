"""The behaviour every ComputeBackend must show; plugin tests subclass ComputeBackendContract."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from raydog_core.interfaces import (
    ClusterSpec,
    ComputeBackend,
    LaunchRequest,
    NodeInfo,
    NodeState,
    NodeTypeSpec,
)

MakeBackend = Callable[[ClusterSpec], ComputeBackend]

HEAD_SCRIPT = "#!/bin/bash\nsleep infinity\n"
WORKER_SCRIPT = "#!/bin/bash\nsleep infinity\n"


class ComputeBackendContract:
    """Provide a fixture ``make_backend``: ``make_backend(spec) -> ComputeBackend``.

    Optional fixtures: ``node_config`` (the node_config each node type gets; default ``{}``),
    ``lose_node`` (a callable that makes the platform lose a running node; tests that need it
    are skipped without it). ``settle_seconds`` bounds every wait for a state change.
    Every backend made is shut down after each test.
    """

    settle_seconds: float = 60.0
    head_type = "head"
    worker_type = "cpu"

    @pytest.fixture
    def node_config(self) -> Mapping[str, Any]:
        return {}

    @pytest.fixture
    def lose_node(self) -> Callable[[str], None] | None:
        return None

    @pytest.fixture
    def spec(self, node_config: Mapping[str, Any]) -> ClusterSpec:
        return self.make_spec(f"contract-{uuid.uuid4().hex[:8]}", node_config)

    def make_spec(self, cluster_name: str, node_config: Mapping[str, Any]) -> ClusterSpec:
        return ClusterSpec(
            cluster_name=cluster_name,
            head_node_type=self.head_type,
            node_types={
                self.head_type: NodeTypeSpec(self.head_type, node_config, {"CPU": 1}, 0, 0),
                self.worker_type: NodeTypeSpec(self.worker_type, node_config, {"CPU": 2}, 0, 10),
            },
            head_script=HEAD_SCRIPT,
            worker_script=WORKER_SCRIPT,
        )

    @pytest.fixture
    def backend_for(self, make_backend: MakeBackend) -> Iterator[MakeBackend]:
        made: list[ComputeBackend] = []

        def make(spec: ClusterSpec) -> ComputeBackend:
            backend = make_backend(spec)
            made.append(backend)
            return backend

        yield make
        for backend in made:
            backend.shutdown()
            backend.close()

    def launch_head(self, backend: ComputeBackend, node_config: Mapping[str, Any]) -> str:
        (head,) = backend.launch(LaunchRequest(self.head_type, 1, True, node_config))
        return head

    def wait_for(
        self, backend: ComputeBackend, check: Callable[[dict[str, NodeInfo]], bool], what: str
    ) -> dict[str, NodeInfo]:
        deadline = time.monotonic() + self.settle_seconds
        while True:
            nodes = {node.node_id: node for node in backend.describe()}
            if check(nodes):
                return nodes
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {self.settle_seconds}s waiting for {what}: {nodes}")
            time.sleep(0.2)

    @staticmethod
    def without_new_addresses(info: NodeInfo, before: NodeInfo | None) -> NodeInfo:
        """``info`` without the addresses ``before`` (the same node, asked earlier) lacked."""
        if before is None:
            return info
        return replace(
            info,
            internal_ip=info.internal_ip if before.internal_ip else None,
            external_ip=info.external_ip if before.external_ip else None,
        )

    @staticmethod
    def live(nodes: Mapping[str, NodeInfo]) -> dict[str, NodeInfo]:
        return {n: info for n, info in nodes.items() if info.state is not NodeState.TERMINATED}

    def test_empty_cluster_describes_as_empty(
        self, backend_for: MakeBackend, spec: ClusterSpec
    ) -> None:
        assert self.live({n.node_id: n for n in backend_for(spec).describe()}) == {}

    def test_head_launch_returns_running_with_ips(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        backend = backend_for(spec)
        head = self.launch_head(backend, node_config)
        info = {n.node_id: n for n in backend.describe()}[head]
        assert info.is_head and info.node_type == self.head_type
        assert info.state is NodeState.RUNNING
        assert info.internal_ip and info.external_ip

    def test_workers_are_known_at_once_and_come_up_with_distinct_ips(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        backend = backend_for(spec)
        head = self.launch_head(backend, node_config)
        workers = backend.launch(LaunchRequest(self.worker_type, 3, False, node_config))
        assert len(set(workers)) == 3 and head not in workers
        described = self.live({n.node_id: n for n in backend.describe()})
        assert set(workers) <= set(described), "a launched worker is missing from describe()"
        nodes = self.wait_for(
            backend,
            lambda nodes: all(
                w in nodes and nodes[w].state is NodeState.RUNNING and nodes[w].internal_ip
                for w in workers
            ),
            "3 running workers with IPs",
        )
        assert all(not nodes[w].is_head and nodes[w].node_type == self.worker_type for w in workers)
        ips = [nodes[n].internal_ip for n in [head, *workers]]
        assert len(set(ips)) == 4, f"internal IPs are not distinct: {ips}"

    def test_terminate_stops_only_the_named_workers(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        backend = backend_for(spec)
        head = self.launch_head(backend, node_config)
        workers = backend.launch(LaunchRequest(self.worker_type, 3, False, node_config))
        backend.terminate(workers[:2])
        nodes = self.wait_for(
            backend,
            lambda nodes: not set(workers[:2]) & set(self.live(nodes)),
            "terminated workers to leave",
        )
        assert head in self.live(nodes) and workers[2] in self.live(nodes)

    def test_terminate_unknown_or_repeated_ids_is_harmless(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        backend = backend_for(spec)
        head = self.launch_head(backend, node_config)
        (worker,) = backend.launch(LaunchRequest(self.worker_type, 1, False, node_config))
        backend.terminate([worker])
        backend.terminate([worker])
        backend.terminate([])
        assert head in self.live({n.node_id: n for n in backend.describe()})

    def test_another_instance_attaches_to_the_cluster(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        first = backend_for(spec)
        head = self.launch_head(first, node_config)
        workers = first.launch(LaunchRequest(self.worker_type, 2, False, node_config))
        second = backend_for(spec)
        assert {head, *workers} <= set(self.live({n.node_id: n for n in second.describe()}))
        second.terminate(workers[:1])
        self.wait_for(
            first,
            lambda nodes: workers[0] not in self.live(nodes),
            "a worker stopped by another instance",
        )

    def test_each_node_keeps_the_launch_config_it_was_launched_with(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        """Ray judges a node up to date by its launch config hash; the backend's own record
        keeps it, so a lost tag store never makes Ray replace a node (or the whole cluster)."""
        first = backend_for(spec)
        (head,) = first.launch(LaunchRequest(self.head_type, 1, True, node_config, "head-hash"))
        workers = first.launch(
            LaunchRequest(self.worker_type, 2, False, node_config, "worker-hash")
        )
        # Another instance (a second `ray up`, the head's autoscaler) reads the same record.
        nodes = self.wait_for(
            backend_for(spec),
            lambda nodes: {head, *workers} <= set(nodes),
            "the head and workers to be described",
        )
        assert nodes[head].launch_config == "head-hash"
        assert [nodes[w].launch_config for w in workers] == ["worker-hash", "worker-hash"]

    def test_clusters_are_isolated(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        one = backend_for(spec)
        other = backend_for(self.make_spec(spec.cluster_name + "-other", node_config))
        head = self.launch_head(one, node_config)
        assert head not in {n.node_id for n in other.describe()}
        other.shutdown()
        assert head in self.live({n.node_id: n for n in one.describe()})

    def test_shutdown_stops_everything_and_is_idempotent(
        self, backend_for: MakeBackend, spec: ClusterSpec, node_config: Mapping[str, Any]
    ) -> None:
        backend = backend_for(spec)
        self.launch_head(backend, node_config)
        backend.launch(LaunchRequest(self.worker_type, 2, False, node_config))
        backend.shutdown()
        backend.shutdown()
        assert self.live({n.node_id: n for n in backend_for(spec).describe()}) == {}

    def test_a_lost_node_is_reported_terminated(
        self,
        backend_for: MakeBackend,
        spec: ClusterSpec,
        node_config: Mapping[str, Any],
        lose_node: Callable[[str], None] | None,
    ) -> None:
        if lose_node is None:
            pytest.skip("this backend's tests give no way to lose a node")
        backend = backend_for(spec)
        self.launch_head(backend, node_config)
        (worker,) = backend.launch(LaunchRequest(self.worker_type, 1, False, node_config))
        self.wait_for(
            backend,
            lambda nodes: worker in nodes and nodes[worker].state is NodeState.RUNNING,
            "the worker to run",
        )
        lose_node(worker)
        self.wait_for(
            backend, lambda nodes: worker not in self.live(nodes), "the lost worker to go"
        )

    def test_describe_reports_and_asking_twice_answers_the_same(
        self,
        backend_for: MakeBackend,
        spec: ClusterSpec,
        node_config: Mapping[str, Any],
        lose_node: Callable[[str], None] | None,
    ) -> None:
        """``describe()`` never acts: a node the platform lost is reported the same way (as
        terminated, or not at all) by every describe until ``terminate`` is called for it,
        which is harmless for such a node."""
        backend = backend_for(spec)
        head = self.launch_head(backend, node_config)
        workers = backend.launch(LaunchRequest(self.worker_type, 2, False, node_config))
        self.wait_for(
            backend,
            lambda nodes: all(w in nodes and nodes[w].state is NodeState.RUNNING for w in workers),
            "the workers to run",
        )
        if lose_node is not None:
            lose_node(workers[0])
        # The first describe that shows the loss, then the next one at once.
        first = self.wait_for(
            backend,
            lambda nodes: lose_node is None or workers[0] not in self.live(nodes),
            "the lost worker to go",
        )
        second = {n.node_id: n for n in backend.describe()}
        # An address the platform lists only now may arrive between the two answers (an
        # instance is listed before it has one); any other difference is describe() acting.
        unchanged = {n: self.without_new_addresses(i, first.get(n)) for n, i in second.items()}
        assert first == unchanged, f"describe() answered {first}, then {second}: it acted"
        assert {head, workers[1]} <= set(self.live(second)), f"nodes went missing: {second}"
        backend.terminate([workers[0]])
        after = self.live({n.node_id: n for n in backend.describe()})
        assert workers[0] not in after, f"terminating a lost node brought it back: {after}"
        assert {head, workers[1]} <= set(after), f"terminating a lost node stopped others: {after}"
