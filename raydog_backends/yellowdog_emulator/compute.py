"""The ``yellowdog-emulated`` compute plugin: the ``yellowdog`` backend, with Ray's commands for
the head run on this machine, for clusters whose nodes are the emulator's task processes.

An emulated node (``--run-tasks --loopback-ips``) is a process session here, with no SSH server,
so Ray's SSH runner has nothing to reach. Everything else is the production backend unchanged,
which is what the emulator exists to test; the production plugin knows nothing of this one. Its
task scripts wait for the node's setup, as on YellowDog: the emulator emulates the setup, and
its agent takes tasks before the setup has finished (see ``processes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from raydog_backends.yellowdog import YellowDogComputeBackend
from raydog_backends.yellowdog_emulator.runner import EmulatedTaskRunner

if TYPE_CHECKING:
    from ray.autoscaler.command_runner import CommandRunnerInterface


class EmulatedYellowDogComputeBackend(YellowDogComputeBackend):
    """``compute: yellowdog-emulated``: the same options as ``yellowdog``."""

    def command_runner(
        self,
        *,
        log_prefix: str,
        node_id: str,
        auth_config: Mapping[str, Any],
        cluster_name: str,
        process_runner: ModuleType,
        use_internal_ip: bool,
    ) -> CommandRunnerInterface:
        """Ray's commands run in the node's task folder, with its environment (see ``runner``)."""
        url = self.api.credentials().url
        return EmulatedTaskRunner(
            url, node_id, process_runner=process_runner, log_prefix=log_prefix
        )
