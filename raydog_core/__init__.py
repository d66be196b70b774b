"""RayDog: a Ray autoscaler node provider built as a small core plus plugins.

Cluster YAML: ``provider: {type: external, module: raydog_core.RayDogNodeProvider}``.
"""

import _raydog_startup
from raydog_core.cluster import Cluster
from raydog_core.errors import BackendError, ConfigError, RayDogError, UnreachableError
from raydog_core.provider import RayDogNodeProvider

# raydog-startup.pth does this at interpreter start; here too for an interpreter that skipped it
# (`python -S`, a --target install), so RayDog's own calls of Ray's fill-in stay quiet.
_raydog_startup.install()

__all__ = [
    "BackendError",
    "Cluster",
    "ConfigError",
    "RayDogError",
    "RayDogNodeProvider",
    "UnreachableError",
]
