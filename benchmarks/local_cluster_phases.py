"""How long each phase of a local RayDog cluster's life takes, through Ray's own CLI.

`ray up` (head up) -> `ray submit` of a job that needs more CPUs than the head has (first worker
joined: from the submission until Ray sees a worker) -> the idle workers removed after
``idle_timeout_minutes`` -> `ray down`. The same run as the end-to-end test, on
examples/local/cluster.yaml. Run: ``python benchmarks/local_cluster_phases.py [--runs N]
[--idle-minutes M]``. Linux only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
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
            runs.append(cluster.timings)
    if len(runs) > 1:
        print(f"median of {len(runs)} runs:")
        for phase in runs[0]:
            values = [timings[phase] for timings in runs if phase in timings]
            print(f"  {phase:<26} {statistics.median(values):7.1f} s")
    print(f"(idle_timeout_minutes {args.idle_minutes}; AUTOSCALER_UPDATE_INTERVAL_S 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
