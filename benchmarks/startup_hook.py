"""What ``raydog-startup.pth`` costs: every interpreter of the environment runs it, Ray or not.

Prints, from fresh interpreters of this environment (``-X importtime``, microseconds, median and
minimum of ``--runs``): the hook's own import; ``logging``'s, which a hook that attached its
filter at start would have to import; then, in one interpreter that imports Ray's autoscaler
``util``, how many imports the hook's finder was asked about before it left ``sys.meta_path``
and what one such call costs. Run: ``python benchmarks/startup_hook.py [--runs N]``.

On this 2-core machine (shared, load average 8), an editable install, 20 interpreters:

| | median | min |
|---|---|---|
| the hook's import | 0.43 ms | 0.33 ms |
| ``import logging`` | 23.9 ms | 18.7 ms |

and 599 imports asked the finder before Ray's ``util``, 0.13 us each (0.08 ms in all). With
``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` (a checkout never run without it) the hook
is compiled at every start: 2.6 ms; pip compiles it when it installs the wheel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

COUNT_WATCHER_CALLS = """
import json, sys, timeit, _raydog_startup
watcher = _raydog_startup._WATCHER
assert watcher in sys.meta_path, "raydog-startup.pth did not run: reinstall raydog"
calls = []
finder = type(watcher).find_spec
type(watcher).find_spec = lambda self, name, *rest: calls.append(name) or finder(self, name, *rest)
import ray.autoscaler._private.util
type(watcher).find_spec = finder
per_call = min(timeit.repeat(lambda: finder(watcher, "some.module"), number=10_000, repeat=5))
print(json.dumps({"calls": len(calls), "left": watcher not in sys.meta_path,
                  "us_per_call": per_call / 10_000 * 1e6}))
"""


def import_times(code: str, module: str, runs: int) -> list[int]:
    """Cumulative import time of ``module`` (us) in ``runs`` fresh interpreters running ``code``."""
    found = []
    for _ in range(runs):
        report = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        for line in report.splitlines():
            fields = [field.strip() for field in line.removeprefix("import time:").split("|")]
            if len(fields) == 3 and fields[2] == module:
                found.append(int(fields[1]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    for label, code, module in (
        ("the hook (raydog-startup.pth)", "pass", "_raydog_startup"),
        ("logging, for comparison", "import logging", "logging"),
    ):
        times = import_times(code, module, args.runs)
        if not times:
            sys.exit(f"{module} was not imported: is raydog installed here (with its .pth)?")
        print(
            f"{label:<32} median {statistics.median(times):8.0f} us   min {min(times):8.0f} us"
            f"   ({len(times)} interpreters)"
        )
    counted = json.loads(
        subprocess.run(
            [sys.executable, "-c", COUNT_WATCHER_CALLS], capture_output=True, text=True, check=True
        ).stdout
    )
    print(
        f"until Ray's util is imported: {counted['calls']} imports asked the hook's finder, "
        f"{counted['us_per_call']:.2f} us each; it left sys.meta_path: {counted['left']}"
    )


if __name__ == "__main__":
    main()
