"""How long each phase of a local RayDog cluster's life takes, through Ray's own CLI.

`ray up` (head up) -> `ray submit` of a job that needs more CPUs than the head has (first worker
joined: from the submission until Ray sees a worker) -> the idle workers removed after
``idle_timeout_minutes`` -> `ray down`, with where its time goes (from the timestamps of Ray's own
log lines). The same run as the end-to-end test, on examples/local/cluster.yaml. Then, for
comparison, a second `ray up` and a bare process teardown: the local backend stopping the head's
processes itself, without Ray. Run: ``python benchmarks/local_cluster_phases.py [--runs N]
[--idle-minutes M]``. Linux only.

`ray down` of the quick start (only the head left), one run each on this 2-core machine, shared
with other engineers' test runs (load average 7 to 12); "log lines" is from `ray down`'s first log
line ("Destroying cluster") to "No nodes remaining":

| | ray down | log lines | of which Ray's own wait | bare | ray down / bare |
|---|---|---|---|---|---|
| at first | 15.0 s | 12.2 s | 5.0 s | 3.0 s | 5.0x |
| 6e67f08 | 8.4 s | 7.2 s | 5.0 s | 2.8 s | 3.0x |
| now | 3.7 s | 2.4 s | none | 2.9 s | 1.3x |

6e67f08: `terminate_nodes` waited out the local backend's 5 s grace period: after `ray stop`,
the node's `ray start --block` answers SIGTERM by draining the node through the GCS it no longer
has (Ray's ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S``, 30 s); it is killed at once since
(``process_nodes.processes``).

Now: Ray's ``teardown_cluster`` runs `ray stop` on the head, lists the nodes, and only if some
remain terminates them and sleeps ``POLL_INTERVAL`` (5 s) before it lists them again. On a local
node `ray stop` also ends the node's ``ray start --block`` (``process_nodes.node_commands``),
so the head whose task ran it is gone when Ray lists the nodes: no terminate, no wait. What is
left beyond the bare teardown is Ray's start-up and config bootstrap (about 1 s) and the head's
`ray stop` itself. A cluster that still has workers at `ray down` keeps Ray's wait: the workers
are listed, terminated, and looked at again 5 s later.
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
            ratio = cluster.timings["teardown (ray down)"] / bare
            print(f"  {'ray down / bare teardown':<26} {ratio:7.1f} x", flush=True)
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
