"""The emulated platform: one account's objects in memory, moved on by a background tick.

Pools provision nodes after a delay, nodes register, registered workers take ready tasks whose
task group asks for their worker tag, tasks run until they end, are cancelled or made to fail,
idle nodes and idle pools shut themselves down, work requirements finish when their task groups
have. Durations that come from API objects (idle shutdowns, task timeouts) are multiplied by
``time_scale``, so tests can use a client's real minutes and still run in seconds.

Each concern has a module: ``work`` (work requirements, task groups, tasks), ``pools`` (worker
pools and their compute requirements), ``nodes`` (nodes and instances), ``instances`` (the
compute API), ``scheduler`` (allocation and execution), ``processes`` (task scripts as local
processes, node setup), ``snapshot``. Every platform fact they reproduce names its source.
"""

from __future__ import annotations

import time
from typing import Any

from yellowdog_client.model import NodeStatus, TaskStatus

from raydog_backends.yellowdog_emulator.instances import Compute
from raydog_backends.yellowdog_emulator.nodes import Nodes
from raydog_backends.yellowdog_emulator.pools import Pools
from raydog_backends.yellowdog_emulator.processes import NodeProcesses
from raydog_backends.yellowdog_emulator.records import Account, EmulatorConfig
from raydog_backends.yellowdog_emulator.scheduler import Scheduler
from raydog_backends.yellowdog_emulator.snapshot import snapshot
from raydog_backends.yellowdog_emulator.work import Work


class Platform:
    """The whole emulated account. Hold ``lock`` around any use of its parts."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.account = Account(config or EmulatorConfig())
        self.processes = NodeProcesses(self.account.config)
        self.work = Work(self.account, self.processes)
        self.nodes = Nodes(self.account, self.processes, self.work)
        self.pools = Pools(self.account, self.nodes)
        self.compute = Compute(self.account, self.pools)
        self.scheduler = Scheduler(self.account, self.work, self.processes)

    @property
    def config(self) -> EmulatorConfig:
        return self.account.config

    @property
    def lock(self) -> Any:
        return self.account.lock

    def tick(self) -> None:
        """Move everything on to where it would be by now."""
        with self.lock:
            now = time.monotonic()
            self.compute.advance(now)
            for pool in list(self.account.pools.values()):
                self.pools.advance(pool, now)
            for node in list(self.account.nodes.values()):
                self.nodes.advance(node, now)
            self.scheduler.schedule(now)
            for task in list(self.account.tasks.values()):
                self.scheduler.advance(task, now)
            for requirement in self.account.requirements.values():
                self.work.advance_requirement(requirement)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return snapshot(self.account)

    def clear_faults(self) -> None:
        """No more provisioning failures or node search glitches."""
        with self.lock:
            self.account.provisioning_failures.clear()
            self.nodes.hidden.clear()

    def reset(self) -> None:
        """Forget everything; stop every task process."""
        with self.lock:
            for task in self.account.tasks.values():
                if not task.status.finished:
                    self.work.finish(task, TaskStatus.CANCELLED)
            for node in self.account.nodes.values():
                if node.alive:
                    self.nodes.end(node, NodeStatus.TERMINATED, "emulator reset")
            self.account.clear()
        self.clear_faults()
        self.stop_processes()

    def close(self) -> None:
        """Stop every task process, release addresses, remove the scratch folder."""
        self.reset()
        self.processes.remove_scratch()

    def stop_processes(self) -> None:
        with self.lock:
            processes, tmp_dirs = self.processes.take_all(list(self.account.tasks.values()))
        self.processes.stop_all(processes, tmp_dirs)
