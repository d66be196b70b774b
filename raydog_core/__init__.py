"""RayDog: a Ray autoscaler node provider built as a small core plus plugins.

Cluster YAML: ``provider: {type: external, module: raydog_core.RayDogNodeProvider}``.
"""

from raydog_core.cluster import Cluster
from raydog_core.errors import BackendError, ConfigError, RayDogError, UnreachableError
from raydog_core.provider import RayDogNodeProvider

__all__ = [
    "BackendError",
    "Cluster",
    "ConfigError",
    "RayDogError",
    "RayDogNodeProvider",
    "UnreachableError",
]
