"""The ``local`` compute backend: a whole autoscaling Ray cluster on this machine (Linux).

Each node is a process session with its own loopback address and home folder; Ray's commands
reach the nodes through a local command runner instead of SSH. ``backend`` is the plugin,
``nodes`` the cluster's files and the environment nodes get, ``runner`` where Ray's commands run;
the process machinery it shares with the YellowDog emulator is ``raydog_backends.process_nodes``.
"""

from raydog_backends.local.backend import LocalComputeBackend

__all__ = ["LocalComputeBackend"]
