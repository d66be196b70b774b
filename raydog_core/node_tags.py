"""What Ray sees as a node's tags: the stored ones over what the compute backend says of it.

A node whose tags were lost (a store restarted empty) still has the tags the backend's facts
give: kind, node type, status, launch config. With Ray's node updaters off (RayDog's default) a
worker's status always comes from the backend, whatever is stored.

A node's answer is composed once per change of its facts or its stored tags (both are replaced,
never changed in place, so identity tells); each query then costs one copy of that node's tags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_SETTING_UP,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from raydog_core.interfaces import NodeInfo, NodeState, Tags


class NodeTags:
    """One provider's composed tags. Readers take no lock (one dict lookup is atomic)."""

    def __init__(
        self,
        cluster_name: str,
        stored: Callable[[str], Mapping[str, str] | None],
        joining: Callable[[str], bool],
        derive_worker_status: bool,
    ) -> None:
        """``stored``: a node's tags in the store (the tag cache's view); ``joining``: whether
        a worker runs but its Ray has not joined yet; ``derive_worker_status``: Ray's node
        updaters are off."""
        self._cluster_name = cluster_name
        self._stored = stored
        self._joining = joining
        self._derive_worker_status = derive_worker_status
        # derived() by the NodeInfo fields it reads and whether the node is joining Ray; a
        # handful of distinct values.
        self._derived: dict[tuple[bool, str, NodeState, str, bool], Tags] = {}
        # of()'s answers: (the NodeInfo, the stored tags, the tags) they were made of. An
        # ended node's goes with it (forget), or they would pile up for good.
        self._composed: dict[str, tuple[NodeInfo | None, Mapping[str, str] | None, Tags]] = {}

    def of(self, node_id: str, info: NodeInfo | None) -> dict[str, str]:
        """The node's tags, given its last snapshot (None: not described)."""
        stored = self._stored(node_id)
        known = self._composed.get(node_id)
        if known is not None and known[0] is info and known[1] is stored:
            return dict(known[2])
        if info is None:
            tags = dict(stored) if stored else {}
        else:
            derived = self.derived(info)
            tags = {**derived, **stored} if stored else dict(derived)
            if self._derive_worker_status and not info.is_head:
                tags[TAG_RAY_NODE_STATUS] = derived[TAG_RAY_NODE_STATUS]
        self._composed[node_id] = (info, stored, tags)
        return dict(tags)

    def matches(self, node_id: str, info: NodeInfo | None, tag_filters: Mapping[str, str]) -> bool:
        """Whether ``of(node_id, info)`` has every filter's value, without building it."""
        stored = self._stored(node_id) or {}
        derived = self.derived(info) if info is not None else {}
        status_derived = info is not None and self._derive_worker_status and not info.is_head
        for key, wanted in tag_filters.items():
            if key == TAG_RAY_NODE_STATUS and status_derived:
                value = derived.get(key)
            else:
                value = stored.get(key, derived.get(key))
            if value != wanted:
                return False
        return True

    def forget(self, node_id: str) -> None:
        """The node ended, or its derived status changed: its next answer is composed anew."""
        self._composed.pop(node_id, None)

    def composed(self) -> set[str]:
        """The nodes with an answer kept (what ``forget`` keeps from growing)."""
        return set(self._composed)

    def derived(self, info: NodeInfo) -> Tags:
        """What the backend alone says of a node: enough for Ray if its tags were lost.
        Computed once per distinct value (shared: never modify).

        Ray terminates a node whose ``ray-launch-config`` differs from its config's hash (and
        ``ray up`` the head, which takes the whole cluster down), so the backend's record of it
        is what a node without tags shows. A running node counts as up to date: a head whose
        runtime-config tag is lost gets its setup re-run by ``ray up``, which is harmless. On
        the head, a worker launched there that runs but whose Ray has not joined yet (its
        setup, then `ray start`) is setting up, which `ray status` lists under "Pending" rather
        than not at all.
        """
        joining = self._joining(info.node_id)
        key = (info.is_head, info.node_type, info.state, info.launch_config, joining)
        derived = self._derived.get(key)
        if derived is not None:
            return derived
        if info.state is not NodeState.RUNNING:
            status = STATUS_UNINITIALIZED
        elif joining:
            status = STATUS_SETTING_UP
        else:
            status = STATUS_UP_TO_DATE
        derived = {
            TAG_RAY_CLUSTER_NAME: self._cluster_name,
            TAG_RAY_NODE_KIND: NODE_KIND_HEAD if info.is_head else NODE_KIND_WORKER,
            TAG_RAY_USER_NODE_TYPE: info.node_type,
            TAG_RAY_NODE_STATUS: status,
        }
        if info.launch_config:
            derived[TAG_RAY_LAUNCH_CONFIG] = info.launch_config
        self._derived[key] = derived
        return derived
