"""``raydog status --why``: for each worker node type with nodes Ray still waits for or recent
launch failures, each node's chain from Ray's demand to the platform's answer.

The steps, in order: requested by Ray (the provider stamps ``raydog-requested-at`` on the node's
tags in ``create_node``), created on the platform, booted, setup finished (the compute backend's
``NodeInfo.steps``), Ray joined (the head's Ray: its node table, read on the head). Each step
shows its time where known; the first step not reached shows why it was not. A node whose launch
ended before it ran is gone from the platform and the tag store once the head's autoscaler acts
on it, so the head's provider keeps its node types' latest such chains on the head node's tags
(``raydog-launch-failures``) while they count as recent failures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raydog_core.interfaces import NodeInfo, NodeState

REQUESTED_TAG = "raydog-requested-at"
"""When Ray asked for the node (``create_node``), in seconds since the epoch."""
FAILURES_TAG = "raydog-launch-failures"
"""On the head node: the node types' latest late launch failures, as JSON chains."""
STEPS = ("requested by Ray", "created on the platform", "booted", "setup finished", "Ray joined")


@dataclass(frozen=True)
class Chain:
    """How far one node got: the time of each step it reached (None: reached, time unknown)
    and, where it stopped, why."""

    node_id: str
    node_type: str
    times: tuple[float | None, ...]
    reason: str = ""
    ended: float | None = None
    """When the launch was found ended before it ran (a recent failure), seconds since epoch."""

    @property
    def joined(self) -> bool:
        return len(self.times) == len(STEPS)

    def line(self) -> str:
        requested = self.times[0] if self.times else None
        shown = [
            f"{step} {_when(at, requested if index else None)}"
            for index, (step, at) in enumerate(zip(STEPS, self.times, strict=False))
        ]
        text = f"{self.node_id}: {' -> '.join(shown)}"
        if self.joined:
            return text
        ended = f" at {_when(self.ended, requested)}" if self.ended is not None else ""
        return f"{text}; stopped before {STEPS[len(self.times)]}{ended} ({self.reason})"


def chain_of(
    node_id: str,
    info: NodeInfo | None,
    tags: Mapping[str, str],
    joined: Mapping[str, float] | None,
) -> Chain:
    """One node's chain from what the compute backend, its tags and the head's Ray say of it.
    ``joined``: Ray's live nodes by address -> when each joined (None: not known)."""
    node_type = info.node_type if info is not None else tags.get("ray-user-node-type", "?")
    times: list[float | None] = [_number(tags.get(REQUESTED_TAG))]
    if info is None:
        return Chain(node_id, node_type, tuple(times), "the compute backend no longer has it")
    steps = info.steps
    times.append(steps.created)
    joined_at = joined.get(info.internal_ip) if joined and info.internal_ip else None
    if info.internal_ip is not None or steps.booted is not None or joined_at is not None:
        times.append(steps.booted)
        running = info.state is NodeState.RUNNING
        if running or steps.setup_finished is not None or joined_at is not None:
            times.append(steps.setup_finished)
            if joined_at is not None:
                times.append(joined_at)
    if info.state is NodeState.TERMINATED:
        reason = f"ended: {info.detail or 'no reason given'}"
    elif info.state is NodeState.PENDING:
        reason = f"waiting: {info.detail or info.state.value}"
    elif joined is None:
        reason = "running; whether its Ray joined is not known"
    else:
        reason = "running; its Ray has not joined the head's"
    return Chain(node_id, node_type, tuple(times), reason)


def why_lines(
    described: Mapping[str, NodeInfo],
    stored: Mapping[str, Mapping[str, str]],
    joined: Mapping[str, float] | None,
    failures: Sequence[Chain] = (),
) -> list[str]:
    """Per worker node type with a node Ray waits for (or ended before it ran) or a recent
    failure: those nodes' chains, then the failures whose nodes are gone. Running nodes count
    as waited for only when the head's Ray says they have not joined."""
    by_type: dict[str, list[str]] = {}
    listed = set()
    for node_id in sorted(described.keys() | stored.keys()):
        info = described.get(node_id)
        tags = stored.get(node_id, {})
        if info is not None and (info.is_head or _ended_by_ray(info)):
            continue
        if info is None and tags.get("ray-node-type") == "head":
            continue
        chain = chain_of(node_id, info, tags, joined)
        running = info is not None and info.state is NodeState.RUNNING
        if chain.joined or (running and joined is None):
            continue
        by_type.setdefault(chain.node_type, []).append(f"  {chain.line()}")
        listed.add(node_id)
    for failure in failures:
        if failure.node_id not in listed:
            by_type.setdefault(failure.node_type, []).append(f"  recent failure, {failure.line()}")
    lines = []
    if joined is None:
        lines.append("why: the head's Ray did not answer: Ray joined is not known")
    if not by_type:
        return [*lines, "why: no worker node is waiting or failed lately"]
    for node_type, nodes in sorted(by_type.items()):
        lines.append(f"why: node type {node_type}")
        lines.extend(nodes)
    return lines


def encode_failures(failures: Sequence[Chain]) -> str:
    """The head node's ``FAILURES_TAG`` value."""
    return json.dumps(
        [
            {
                "node": f.node_id,
                "type": f.node_type,
                "times": list(f.times),
                "reason": f.reason,
                "ended": f.ended,
            }
            for f in failures
        ],
        separators=(",", ":"),
    )


def decode_failures(text: str | None, now: float, memory: float) -> list[Chain]:
    """The head's recorded failures still within ``memory`` seconds of ``now``; a value this
    version cannot read counts as none."""
    try:
        records = json.loads(text or "[]")
        chains = [
            Chain(
                str(r["node"]),
                str(r["type"]),
                tuple(None if t is None else float(t) for t in r["times"]),
                str(r["reason"]),
                float(r["ended"]),
            )
            for r in records
        ]
    except (ValueError, TypeError, KeyError):
        return []
    return [c for c in chains if c.ended is not None and now - c.ended < memory]


def _ended_by_ray(info: NodeInfo) -> bool:
    return info.state is NodeState.TERMINATED and not info.detail


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _when(at: float | None, since: float | None) -> str:
    if at is None:
        return "(time not known)"
    clock = time.strftime("%H:%M:%SZ", time.gmtime(at))
    return f"{clock} (+{at - since:.1f} s)" if since is not None else clock
