"""How long each phase of a local RayDog cluster's life takes, through Ray's own CLI.

`ray up` (head up) -> `ray submit` of a job that needs more CPUs than the head has (first worker
joined: from the submission until Ray sees a worker) -> the idle workers removed after
``idle_timeout_minutes`` -> `ray down`, with where its time goes (from the timestamps of Ray's own
log lines). The same run as the end-to-end test, on examples/local/cluster.yaml. Then, for
comparison, a second `ray up` and a bare process teardown: the local backend stopping the head's
processes itself, without Ray. Run: ``python benchmarks/local_cluster_phases.py [--runs N]
[--idle-minutes M]``. Linux only.

`ray down` of the quick start (only the head left), one run each on this 2-core machine, shared:

| | ray down | first log line to "Requested 1 nodes to shut down" | then Ray's own wait | bare |
|---|---|---|---|---|
| before | 15.0 s | 7.2 s | 5.0 s | 3.0 s |
| after | 8.5 s | 2.3 s | 5.0 s | 2.8 s |

Before, `terminate_nodes` waited out the local backend's 5 s grace period: after `ray stop`, the
node's `ray start --block` answers SIGTERM by draining the node through the GCS it no longer
has (Ray's ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S``, 30 s); it is now killed at once
(``process_nodes.processes``). What is left beyond the bare teardown is Ray's: its start-up and
config bootstrap (~1.2 s), and ``teardown_cluster``'s fixed 5 s sleep (``POLL_INTERVAL``) after
``terminate_nodes``, before it looks again.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydog_backends.local.testing import LocalCluster
from raydog_core.testing.lifecycle import run_lifecycle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--idle-minutes", type=float, default=0.5)
    args = parser.parse_args()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="raydog-local-phases-") as folder:
        for run in range(args.runs):
            cluster = LocalCluster(
                Path(folder) / f"run{run}",
                f"phases-{uuid.uuid4().hex[:6]}",
                idle_timeout_minutes=args.idle_minutes,
            )
            try:
                result = run_lifecycle(cluster)
            finally:
                cluster.destroy()
            if result.leftovers:
                print(f"run {run}: left behind: {result.leftovers}", file=sys.stderr)
            print(f"run {run} ({cluster.cluster_name}):\n{cluster.report()}", flush=True)
            down = next(output for command, output in cluster.transcript if " down " in command)
            print("  ray down, from its log lines:\n" + down_phases(down), flush=True)
            bare = bare_teardown(Path(folder) / f"bare{run}")
            cluster.timings["bare teardown (head)"] = bare
            print(f"  {'bare teardown (head)':<26} {bare:7.1f} s", flush=True)
            runs.append(cluster.timings)
    if len(runs) > 1:
        print(f"median of {len(runs)} runs:")
        for phase in runs[0]:
            values = [timings[phase] for timings in runs if phase in timings]
            print(f"  {phase:<26} {statistics.median(values):7.1f} s")
    print(f"(idle_timeout_minutes {args.idle_minutes}; AUTOSCALER_UPDATE_INTERVAL_S 1)")
    return 0


STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s+\S+\s+\S+ -- (.*)$")


def down_phases(output: str) -> str:
    """Each of `ray down`'s log lines with the seconds since its first one."""
    lines = []
    first: datetime | None = None
    for line in output.splitlines():
        match = STAMP.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if match is None:
            continue
        when = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
        first = first or when
        lines.append(f"    {(when - first).total_seconds():6.2f} s  {match[2][:90]}")
    return "\n".join(lines)


def bare_teardown(folder: Path) -> float:
    """A fresh `ray up`, then the seconds the local backend takes to stop the head's processes
    itself (its shutdown: SIGTERM to the task script, the rest after a grace period)."""
    cluster = LocalCluster(folder, f"bare-{uuid.uuid4().hex[:6]}")
    try:
        cluster.ray("up", "-y", "--no-config-cache", str(cluster.config), timeout=300)
        cluster.nodes()
        started = time.monotonic()
        cluster.observer.shutdown()
        return time.monotonic() - started
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
