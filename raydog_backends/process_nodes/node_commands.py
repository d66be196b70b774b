"""``ray stop`` and ``sudo shutdown`` as a node on this machine runs them (its shims call this).

The real ``ray stop`` stops every Ray process on the machine, which on one machine holding many
nodes (and perhaps the user's own Ray) is never right; ``shutdown`` would stop the machine.
Here both act on the calling node's own processes only::

    python -m raydog_backends.process_nodes.node_commands stop-ray [--force] [--grace-period N]
        [--end-blocking-start]
    python -m raydog_backends.process_nodes.node_commands shutdown

``--end-blocking-start`` (the ``local`` backend's nodes): `ray stop` also ends the node's
``ray start --block``, which Ray's own leaves blocking with nothing to watch. A task script that
``exec``s it (RayDog's default ones) then ends, so the node is gone once `ray stop` returns.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from raydog_backends.process_nodes.processes import (
    NodeProcess,
    ancestors,
    blocking_ray_starts,
    pid_alive,
)
from raydog_backends.process_nodes.shims import NODE_DIR_VARIABLE

SHUTDOWN_GRACE_SECONDS = 5.0
BLOCKING_START_END_SECONDS = 5.0
"""How long `ray stop` waits for a SIGKILLed ``ray start --block`` to be gone."""


def this_node() -> tuple[str, NodeProcess] | None:
    """The node this process runs on, from the ``node.json`` its environment points to."""
    node_dir = os.environ.get(NODE_DIR_VARIABLE)
    if not node_dir:
        return None
    try:
        record = json.loads((Path(node_dir) / "node.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("pid") is None:
        return None
    return record["node_id"], NodeProcess.attach(
        record["pid"], record["start_ticks"], record["token"]
    )


def stop_ray(
    node_id: str,
    node: NodeProcess,
    force: bool,
    grace_period: float,
    end_blocking_start: bool = False,
) -> int:
    """Ray's own order: raylet first, the GCS last, everything else in between; then, with
    ``end_blocking_start``, the node's ``ray start --block`` left watching nothing."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    buckets = [RAY_PROCESSES[:1], RAY_PROCESSES[1:-1], RAY_PROCESSES[-1:]]
    spared = ancestors()
    stopped = 0
    for bucket in buckets:
        pids = [pid for pid in node.members(exclude=spared) if _is_one_of(pid, bucket)]
        stopped += len(pids)
        _send(pids, signal.SIGKILL if force else signal.SIGTERM)
        deadline = time.monotonic() + grace_period / len(buckets)
        while (alive := [p for p in pids if pid_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        _send(alive, signal.SIGKILL)
    if end_blocking_start:
        ended = blocking_ray_starts(node.members(exclude=spared))
        _send(ended, signal.SIGKILL)
        deadline = time.monotonic() + BLOCKING_START_END_SECONDS
        while any(pid_alive(p) for p in ended) and time.monotonic() < deadline:
            time.sleep(0.05)
        if ended:
            print(f"Ended `ray start --block` of local node {node_id}: its Ray is stopped.")
    if stopped:
        print(f"Stopped {stopped} Ray processes of local node {node_id}.")
    else:
        print(f"Did not find any Ray processes of local node {node_id}.")
    return 0


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg for arg in raw.decode(errors="replace").split("\0") if arg]


def _is_one_of(pid: int, processes: Sequence[Sequence[object]]) -> bool:
    """``ray stop``'s matching: a keyword in the process name or in its command line."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    command_line = subprocess.list2cmdline(_argv(pid))
    return any(
        str(keyword) in (name if by_name else command_line) for keyword, by_name in processes
    )


def _send(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            continue


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raydog-local-node")
    commands = parser.add_subparsers(dest="command", required=True)
    stop = commands.add_parser("stop-ray", help="stop this node's Ray processes")
    stop.add_argument("-f", "--force", action="store_true")
    stop.add_argument("-g", "--grace-period", type=float, default=16.0)
    stop.add_argument("--end-blocking-start", action="store_true")
    commands.add_parser("shutdown", help="stop every process of this node")
    args, _ignored = parser.parse_known_args(argv)
    found = this_node()
    if found is None:
        print(
            f"{parser.prog}: not on a RayDog local node ({NODE_DIR_VARIABLE} is not set); "
            "refusing to act on this machine's processes",
            file=sys.stderr,
        )
        return 1
    node_id, node = found
    if args.command == "stop-ray":
        return stop_ray(node_id, node, args.force, args.grace_period, args.end_blocking_start)
    node.stop(SHUTDOWN_GRACE_SECONDS, exclude=ancestors())
    return 0


if __name__ == "__main__":
    sys.exit(main())
