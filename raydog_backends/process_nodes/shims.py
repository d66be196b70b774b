"""``ray``, ``sudo`` and ``shutdown`` as a node on this machine sees them (first on its ``PATH``).

The real ``ray stop`` stops every Ray process on the machine and ``shutdown`` would stop the
machine; on a node that is a process session here, both act on the node's own processes
(``node_commands``), found from the ``node.json`` that ``NODE_DIR_VARIABLE`` points to.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

NODE_DIR_VARIABLE = "RAYDOG_LOCAL_NODE_DIR"
"""Set on every node: the folder of its ``node.json`` (pid, start_ticks, token, node_id)."""
DETACH_VARIABLE = "RAYDOG_LOCAL_DETACH_RAY"
"""Set by a command runner: a ``ray start`` there runs in a session of its own, so that Ray's
daemons do not die with the terminal of the ``ray up`` that started them."""
SHIMS_DIR_NAME = "raydog-shims"


def write_shims(shims_dir: Path, *, stop_ends_blocking_start: bool = False) -> None:
    """``ray`` and ``sudo`` as the nodes see them: ``ray stop`` stops this node's Ray only
    (the real one stops every Ray on the machine) and ``sudo shutdown`` stops this node only.

    ``stop_ends_blocking_start``: ``ray stop`` also ends the node's ``ray start --block``
    (``node_commands``); without it, that is left blocking, as Ray's own `ray stop` leaves it."""
    shims_dir.mkdir(parents=True, exist_ok=True)
    python = shlex.quote(sys.executable)
    commands = f"{python} -m raydog_backends.process_nodes.node_commands"
    real_ray = find_program("ray")
    real_sudo = find_program("sudo")
    run_sudo = (
        f'exec {shlex.quote(real_sudo)} "$@"'
        if real_sudo
        else 'echo "sudo: not available on this local node" >&2; exit 1'
    )
    ray = shlex.quote(real_ray) if real_ray else f"{python} -m ray.scripts.scripts"
    stop_ray = f"{commands} stop-ray" + (
        " --end-blocking-start" if stop_ends_blocking_start else ""
    )
    shims = {
        "ray": (
            f'if [ "$1" = stop ]; then shift; exec {stop_ray} "$@"; fi\n'
            f'if [ "$1" = start ] && [ -n "${{{DETACH_VARIABLE}:-}}" ] '
            "&& command -v setsid >/dev/null; then\n"
            f'    exec setsid -w {ray} "$@"\nfi\n'
            f'exec {ray} "$@"\n'
        ),
        "sudo": (
            'case "$1" in shutdown|poweroff|halt|reboot) '
            f"exec {commands} shutdown ;; esac\n{run_sudo}\n"
        ),
        "shutdown": f"exec {commands} shutdown\n",
    }
    for name, body in shims.items():
        path = shims_dir / name
        text = (
            f"#!/bin/sh\n# {name} on a RayDog node on this machine "
            f"(see raydog_backends.process_nodes).\n{body}"
        )
        if not path.exists() or path.read_text() != text:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.chmod(0o755)
            os.replace(temporary, path)


def find_program(name: str) -> str | None:
    """``name`` next to this Python first (a virtualenv), else on PATH (shims left out)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    path = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if Path(entry).name != SHIMS_DIR_NAME
    )
    return shutil.which(name, path=path)
