"""How Ray runs commands on a node that is a process session on this machine, without SSH.

Ray's updater and CLI (``ray up`` setup and start commands, ``ray exec``, ``ray submit``,
``ray attach``, ``ray rsync-up``/``-down``, ``ray down``) call this instead of its SSH runner.
A command runs with the node's environment, in the node's home folder; its ``PATH`` starts with
the node's shims (``shims``), so a ``ray stop`` in it (``ray down`` runs one on the head) stops
this node's Ray and nothing else. Copies are local (``copying``), port forwards are relays to the
node's address (``forwarding``).

``ThisMachineCommandRunner`` does the work; a subclass only says where the node is (the ``local``
backend's ``LocalCommandRunner``, the YellowDog emulator's runner for its task processes).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import click
from ray.autoscaler._private.cli_logger import cli_logger
from ray.autoscaler._private.command_runner import is_using_login_shells
from ray.autoscaler._private.subprocess_output_util import (
    ProcessRunnerError,
    does_allow_interactive,
)
from ray.autoscaler.command_runner import CommandRunnerInterface

from raydog_backends.process_nodes.copying import sync
from raydog_backends.process_nodes.forwarding import forwarding, pairs

# rsync's exit code for a transfer that failed part way; what the SSH runner would report.
COPY_FAILED = 23
NODE_UNREACHABLE = 255


@dataclass(frozen=True)
class NodeHere:
    """A node that is a process session on this machine: where and how its commands run."""

    home: Path
    ip: str
    environment: dict[str, str]


class ThisMachineCommandRunner(CommandRunnerInterface):
    """Runs Ray's commands for a node on this machine; subclasses say where the node is."""

    def __init__(
        self,
        node_id: str,
        *,
        process_runner: ModuleType = subprocess,
        log_prefix: str = "",
    ) -> None:
        self.node_id = node_id
        self.process_runner = process_runner
        self.log_prefix = log_prefix

    @abstractmethod
    def locate(self) -> NodeHere | None:
        """The node if it is running, else None."""

    def run(
        self,
        cmd: str | None = None,
        timeout: int = 120,
        exit_on_fail: bool = False,
        port_forward: Sequence[tuple[int, int]] | tuple[int, int] | None = None,
        with_output: bool = False,
        environment_variables: Mapping[str, object] | None = None,
        run_env: str = "auto",
        ssh_options_override_ssh_key: str = "",
        shutdown_after_run: bool = False,
        silent: bool = False,
    ) -> Any:
        """Run ``cmd`` with bash on the node. With ``with_output``, its stdout as bytes, like
        Ray's SSH runner (callers decode it); otherwise an empty string."""
        node = self._running_node(cmd, exit_on_fail)
        if shutdown_after_run:
            cmd = f"{cmd}; sudo shutdown -h now" if cmd else "sudo shutdown -h now"
        if not cmd:
            cmd = "while true; do sleep 86400; done"
        if environment_variables:
            cmd = _with_exports(cmd, environment_variables)
        quiet = silent and cli_logger.verbosity < 1
        output = subprocess.DEVNULL if quiet else None
        options: dict[str, Any] = {
            "env": node.environment,
            "cwd": node.home,
            "stdin": None if does_allow_interactive() else subprocess.DEVNULL,
        }
        with forwarding(pairs(port_forward), node.ip):
            try:
                if with_output:
                    return self.process_runner.check_output(["bash", "-c", cmd], **options)
                self.process_runner.check_call(
                    ["bash", "-c", cmd], stdout=output, stderr=output, **options
                )
            except subprocess.CalledProcessError as exc:
                raise self._failure(cmd, exc.returncode, exit_on_fail) from None
        return ""

    def run_rsync_up(self, source: str, target: str, options: dict[str, Any] | None = None) -> None:
        node = self._running_node(f"copy {source}", False)
        self._copy(source, self._on_node(target, node), options)

    def run_rsync_down(
        self, source: str, target: str, options: dict[str, Any] | None = None
    ) -> None:
        node = self._running_node(f"copy {source}", False)
        self._copy(self._on_node(source, node), target, options)

    def remote_shell_command_str(self) -> str:
        node = self._running_node("a shell", False)
        assignments = " ".join(
            f"{name}={shlex.quote(value)}"
            for name, value in sorted(node.environment.items())
            if os.environ.get(name) != value
        )
        return f"cd {shlex.quote(str(node.home))} && env {assignments} bash\n"

    def run_init(
        self, *, as_head: bool, file_mounts: dict[str, str], sync_run_yet: bool
    ) -> bool | None:
        return None

    # --- internals ----------------------------------------------------------------------

    def _running_node(self, what: str | None, exit_on_fail: bool) -> NodeHere:
        node = self.locate()
        if node is None:
            cli_logger.error("{}local node {} is not running", self.log_prefix, self.node_id)
            raise self._failure(what or "", NODE_UNREACHABLE, exit_on_fail)
        return node

    @staticmethod
    def _on_node(path: str, node: NodeHere) -> str:
        """A path as the node sees it: ``~`` and relative paths are in the node's home."""
        home = str(node.home)
        if path == "~" or path.startswith("~/"):
            return home + path[1:]
        if not path.startswith("/"):
            return f"{home}/{path}"
        return path

    def _copy(self, source: str, target: str, options: Mapping[str, Any] | None) -> None:
        try:
            sync(source, target, options or {})
        except OSError as exc:
            cli_logger.error("{}copy {} -> {} failed: {}", self.log_prefix, source, target, exc)
            raise self._failure(f"copy {source} {target}", COPY_FAILED, False) from None

    def _failure(self, cmd: str, code: int, exit_on_fail: bool) -> Exception:
        """The error Ray's SSH runner raises for a failed command, so Ray's handling applies."""
        if not is_using_login_shells():
            return ProcessRunnerError(
                "Command failed", "ssh_command_failed", code=code, command=cmd
            )
        if exit_on_fail:
            return click.ClickException(f"Command failed:\n\n  {cmd}\n")
        return click.ClickException(
            f"Command failed on local node {self.node_id} (exit code {code})."
        )


def _with_exports(cmd: str, variables: Mapping[str, object]) -> str:
    """Ray's convention: each value JSON-encoded, exported in front of the command."""
    exports = "".join(
        f"export {name}={shlex.quote(json.dumps(value, separators=(',', ':')))};"
        for name, value in variables.items()
    )
    return exports + cmd
