"""``raydog status --why``'s chains: how far each node got, each step's time where known, and
why it stopped (raydog_core.why)."""

from __future__ import annotations

import calendar

from raydog_core.interfaces import NO_STEPS, NodeInfo, NodeState, NodeSteps
from raydog_core.ray_nodes import parse as parse_ray_nodes
from raydog_core.why import (
    REQUESTED_TAG,
    Chain,
    decode_failures,
    encode_failures,
    why_lines,
)

T0 = float(calendar.timegm((2026, 12, 4, 15, 2, 11, 0, 0, 0)))  # 15:02:11Z


def worker(
    node_id: str,
    state: NodeState,
    ip: str | None = None,
    detail: str = "",
    steps: NodeSteps = NO_STEPS,
    node_type: str = "gpu",
) -> NodeInfo:
    return NodeInfo(node_id, node_type, False, state, ip, ip, detail, steps=steps)


def requested(at: float) -> dict[str, str]:
    return {REQUESTED_TAG: f"{at:.3f}", "ray-user-node-type": "gpu"}


HEAD = NodeInfo("head", "head", True, NodeState.RUNNING, "10.0.0.1", "1.2.3.4")


def test_a_waiting_node_shows_each_step_it_reached_with_its_time_and_why_it_waits() -> None:
    steps = NodeSteps(created=T0 + 0.5)
    described = {
        "head": HEAD,
        "w1": worker("w1", NodeState.PENDING, detail="task READY", steps=steps),
    }
    lines = why_lines(described, {"w1": requested(T0)}, joined={"10.0.0.1": T0 - 60})
    assert lines == [
        "why: node type gpu",
        "  w1: requested by Ray 15:02:11Z -> created on the platform 15:02:11Z (+0.5 s); "
        "stopped before booted (waiting: task READY)",
    ]


def test_a_running_node_whose_ray_has_not_joined_stops_before_ray_joined() -> None:
    steps = NodeSteps(booted=T0 + 40, setup_finished=T0 + 95)
    described = {"head": HEAD, "w1": worker("w1", NodeState.RUNNING, "10.0.0.2", steps=steps)}
    (header, line) = why_lines(described, {"w1": requested(T0)}, joined={"10.0.0.1": T0})
    assert header == "why: node type gpu"
    assert line == (
        "  w1: requested by Ray 15:02:11Z -> created on the platform (time not known) -> "
        "booted 15:02:51Z (+40.0 s) -> setup finished 15:03:46Z (+95.0 s); "
        "stopped before Ray joined (running; its Ray has not joined the head's)"
    )


def test_nodes_whose_ray_joined_are_left_out() -> None:
    described = {"head": HEAD, "w1": worker("w1", NodeState.RUNNING, "10.0.0.2")}
    joined = {"10.0.0.1": T0, "10.0.0.2": T0 + 120}
    assert why_lines(described, {"w1": requested(T0)}, joined) == [
        "why: no worker node is waiting or failed lately"
    ]


def test_without_the_heads_ray_running_nodes_are_not_judged_and_it_says_so() -> None:
    described = {
        "head": HEAD,
        "w1": worker("w1", NodeState.RUNNING, "10.0.0.2"),
        "w2": worker("w2", NodeState.TERMINATED, detail="its task ended: FAILED"),
        "w3": worker("w3", NodeState.TERMINATED),  # ended by Ray: not a failure
    }
    lines = why_lines(described, {"w2": requested(T0)}, joined=None)
    assert lines == [
        "why: the head's Ray did not answer: Ray joined is not known",
        "why: node type gpu",
        "  w2: requested by Ray 15:02:11Z -> created on the platform (time not known); "
        "stopped before booted (ended: its task ended: FAILED)",
    ]


def test_a_node_only_in_the_tag_store_stops_before_the_platform() -> None:
    lines = why_lines({"head": HEAD}, {"w1": requested(T0)}, joined={})
    assert lines[-1] == (
        "  w1: requested by Ray 15:02:11Z; stopped before created on the platform "
        "(the compute backend no longer has it)"
    )


def test_the_heads_recent_failures_show_for_types_whose_nodes_are_gone() -> None:
    failure = Chain("w9", "gpu", (T0, None), "ended: quota exceeded", ended=T0 + 30)
    kept = decode_failures(encode_failures([failure]), now=T0 + 100, memory=300)
    assert kept == [failure]
    assert why_lines({"head": HEAD}, {}, joined={}, failures=kept) == [
        "why: node type gpu",
        "  recent failure, w9: requested by Ray 15:02:11Z -> created on the platform "
        "(time not known); stopped before booted at 15:02:41Z (+30.0 s) "
        "(ended: quota exceeded)",
    ]


def test_failures_older_than_the_providers_memory_or_unreadable_are_dropped() -> None:
    failure = Chain("w9", "gpu", (T0,), "ended: quota exceeded", ended=T0)
    assert decode_failures(encode_failures([failure]), now=T0 + 301, memory=300) == []
    assert decode_failures("not json", now=T0, memory=300) == []
    assert decode_failures(None, now=T0, memory=300) == []


def test_the_heads_answer_is_read_from_its_marked_line() -> None:
    output = 'Fetched IP: 10.0.0.1\nRAYDOG_RAY_NODES {"10.0.0.2": 1.5}\nShared connection'
    assert parse_ray_nodes(output) == {"10.0.0.2": 1.5}
    assert parse_ray_nodes("Error: no cluster") is None
