"""The ``local`` compute backend: a whole autoscaling Ray cluster on this machine (Linux).

Each node is a process session with its own loopback address and home folder; Ray's commands
reach the nodes through a local command runner instead of SSH. See ``backend`` for the layout and
the environment nodes get, ``processes`` for the reusable process runner.
"""

from raydog_backends.local.backend import LocalComputeBackend

__all__ = ["LocalComputeBackend"]
