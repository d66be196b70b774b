"""What a ``raydog`` command costs from start to exit, most of it imports: CPU seconds (user +
system, as ``/usr/bin/time -f '%U %S'`` reports them) of ``python -m raydog_core.cli ...`` in
fresh interpreters, median and minimum of ``--runs``, and whether the command imported Ray.

Commands: ``--help``; ``init`` of the local and of the YellowDog starter; ``node-setup`` and
``validate`` of the local starter's config. Run: ``python benchmarks/cli_startup.py [--runs N]``.

On this 2-core machine (shared, load average 1.5-2.2), 5 runs each, median CPU seconds:

| command | before | after |
|---|---|---|
| ``--help`` | 0.91 (Ray) | 0.20 |
| ``init --compute local`` | 1.10 (Ray) | 0.24 |
| ``init --compute yellowdog`` | 1.90 (Ray) | 1.38 (the yellowdog-sdk's import, about 0.55) |
| ``node-setup`` (local) | 1.19 (Ray) | 0.41 |
| ``validate`` (local) | 0.96 (Ray) | 1.16 (Ray, for its schema: the same work, run to run noise) |

Before: ``raydog_core/__init__.py`` imported ``Cluster`` (``ray.autoscaler.sdk``) and
``RayDogNodeProvider``, ``raydog_core.progress`` Ray's ``cli_logger`` and the ``local`` backend
its command runner (a subclass of Ray's) at their tops. The CPU time is the child's rusage from
``os.wait4``, the figures ``/usr/bin/time -f '%U %S'`` prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def cpu_seconds(command: list[str], cwd: Path) -> float:
    """User + system CPU seconds of one run of ``command`` (its exit code must be 0)."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} exited with {process.returncode}")
    return usage.ru_utime + usage.ru_stime


def imports_ray(command: list[str], cwd: Path) -> bool:
    report = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    return any(line.rsplit("|", 1)[-1].strip() == "ray" for line in report.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    raydog = [sys.executable, "-m", "raydog_core.cli"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        subprocess.run(
            [*raydog, "init", "--compute", "local", "local"],
            cwd=folder,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        local = folder / "local"
        # Each command's arguments for run N (``init`` needs a new folder each time).
        commands: dict[str, tuple[Callable[[int], list[str]], Path]] = {
            "--help": (lambda run: ["--help"], folder),
            "init --compute local": (lambda run: ["init", "--compute", "local", f"l{run}"], folder),
            "init --compute yellowdog": (
                lambda run: ["init", "--compute", "yellowdog", f"y{run}"],
                folder,
            ),
            "node-setup (local)": (
                lambda run: ["node-setup", "cluster.yaml", "--node-type", "head"],
                local,
            ),
            "validate (local)": (lambda run: ["validate", "cluster.yaml"], local),
        }
        print(f"{'command':<28}{'median s':>10}{'min s':>8}  imports Ray   ({args.runs} runs)")
        for label, (arguments, cwd) in commands.items():
            times = [cpu_seconds([*raydog, *arguments(run)], cwd) for run in range(args.runs)]
            ray = imports_ray([*raydog, *arguments(args.runs)], cwd)
            print(
                f"{label:<28}{statistics.median(times):>10.2f}{min(times):>8.2f}  "
                f"{'yes' if ray else 'no'}"
            )


if __name__ == "__main__":
    main()
