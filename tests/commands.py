"""The commands a user types: ``raydog ...`` through its ``main`` in this process (what it prints
and its exit code) or in a process of its own, Ray's ``ray up`` through Ray's own code in this
process."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from ray.autoscaler._private.cli_logger import cli_logger
from ray.autoscaler._private.commands import create_or_update_cluster

from raydog_core import cli


def raydog(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``raydog ARGS`` run by the CLI's ``main`` in this process, in ``cwd`` if given: what it
    prints and its exit code, as a process would give them (argparse's usage error exits 2),
    without a fresh interpreter's second of imports. A command that leaves state behind (the
    environment, a signal handler, logging, Ray's CLI logger) fails the test: run it with
    ``raydog_process``, as every test whose point is the real entry point or a fresh
    interpreter does."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        _working_directory(cwd),
        _unchanged_process_state(args),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        try:
            returncode = cli.main(list(args))
        except SystemExit as exc:
            returncode = _exit_code(exc)
    return subprocess.CompletedProcess(
        ["raydog", *args], returncode, stdout.getvalue(), stderr.getvalue()
    )


def _exit_code(exc: SystemExit) -> int:
    """The exit code a process would end with on ``exc`` (a message goes to stderr, exit 1)."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def _working_directory(folder: Path | None) -> Iterator[None]:
    """In ``folder`` (if given), then back where the test was."""
    previous = os.getcwd()
    if folder is not None:
        os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@dataclasses.dataclass
class _ProcessState:
    """What a process's exit discards and the rest of this pytest worker would inherit."""

    working_directory: str
    environment: dict[str, str]
    signal_handlers: dict[int, Any]
    root_logger: tuple[int, list[logging.Handler]]
    ray_cli_logger: dict[str, Any]

    @classmethod
    def now(cls) -> _ProcessState:
        signals = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
        return cls(
            os.getcwd(),
            dict(os.environ),
            {signum: signal.getsignal(signum) for signum in signals},
            (logging.root.level, list(logging.root.handlers)),
            dict(vars(cli_logger)),
        )

    def restore(self) -> None:
        os.chdir(self.working_directory)
        os.environ.clear()
        os.environ.update(self.environment)
        for signum, handler in self.signal_handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        logging.root.setLevel(self.root_logger[0])
        logging.root.handlers[:] = self.root_logger[1]
        vars(cli_logger).clear()
        vars(cli_logger).update(self.ray_cli_logger)


@contextlib.contextmanager
def _unchanged_process_state(args: tuple[str, ...]) -> Iterator[None]:
    """Fails, after putting it back, when the command changed the process's state."""
    before = _ProcessState.now()
    yield
    after = _ProcessState.now()
    changed = [
        field.name
        for field in dataclasses.fields(_ProcessState)
        if getattr(before, field.name) != getattr(after, field.name)
    ]
    if changed:
        before.restore()
        raise AssertionError(
            f"`raydog {' '.join(args)}` in this process changed {', '.join(changed)}: "
            "run it with raydog_process"
        )


def raydog_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``raydog ARGS`` in a fresh interpreter (``python -m raydog_core.cli``): its output and
    exit code, for what only a process shows (its environment at start, signals, the entry
    point itself, what it leaves behind)."""
    return subprocess.run(
        [sys.executable, "-m", "raydog_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    """The config as ``tmp_path/cluster.yaml``."""
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ray_up(config_file: Path, no_config_cache: bool = True) -> dict[str, Any]:
    """Ray's own ``ray up -y``, in this process."""
    result: dict[str, Any] = create_or_update_cluster(
        str(config_file),
        override_min_workers=None,
        override_max_workers=None,
        no_restart=False,
        restart_only=False,
        yes=True,
        no_config_cache=no_config_cache,
    )
    return result
