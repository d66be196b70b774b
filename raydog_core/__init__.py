"""RayDog: a Ray autoscaler node provider built as a small core plus plugins.

Cluster YAML: ``provider: {type: external, module: raydog_core.RayDogNodeProvider}``.

``Cluster`` and ``RayDogNodeProvider`` import Ray, which costs most of a second: they load on
first use (PEP 562 ``__getattr__``), so ``raydog validate``, ``init`` and ``node-setup`` and
every plugin that imports only the core's light modules start without Ray. Ray's autoscaler
still finds ``raydog_core.RayDogNodeProvider`` by ``getattr`` on this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import _raydog_startup
from raydog_core.errors import BackendError, ConfigError, RayDogError, UnreachableError

if TYPE_CHECKING:
    from raydog_core.cluster import Cluster
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

_LOADED_ON_USE = {
    "Cluster": "raydog_core.cluster",
    "RayDogNodeProvider": "raydog_core.provider",
}
"""The public names whose modules import Ray, and those modules."""


def __getattr__(name: str) -> object:
    module = _LOADED_ON_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
