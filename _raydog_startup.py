"""Run at every interpreter start by ``raydog-startup.pth`` (site-packages): keeps Ray from
warning RayDog's users about keys they never wrote.

For an external provider, Ray's ``fillout_defaults`` (``ray/autoscaler/_private/util.py``)
starts from ``MINIMAL_EXTERNAL_CONFIG`` (``providers.py``), whose ``head_node`` and
``worker_nodes`` are empty, and ``translate_trivial_legacy_config`` then warns "Dropping the
empty legacy field ..." for each. ``ray up``, ``exec``, ``attach``, ``down`` and the head's
autoscaler fill the config before they import the provider's module, so nothing of RayDog's
package has run yet: hence a ``.pth``, the one hook Python runs before ``ray``'s own code.

Start-up must stay cheap in every interpreter of the environment, Ray or not: this module
imports nothing beyond ``sys`` at start. It puts a finder first on ``sys.meta_path`` that waits
for the import of Ray's ``util`` module, attaches the filter to that module's logger then
(``logging`` is loaded by Ray by that time), and leaves ``sys.meta_path``.

The filter drops the warning only where it is about a key absent from the config Ray was given
(read from ``fillout_defaults``' frame) and that config names RayDog's provider: a user whose
config has an empty ``head_node:`` still sees it, as do other providers' users.
"""

import sys

# Not typing's, nor `from __future__ import annotations` (quoted hints instead): each import
# here is paid by every interpreter start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import FrameType, ModuleType

RAY_UTIL = "ray.autoscaler._private.util"
"""The module whose logger warns (its functions below are Ray's names, read from its frames)."""
WARNING_FUNCTION = "translate_trivial_legacy_config"
FILLING_FUNCTION = "fillout_defaults"
RAYDOG_MODULE = "raydog_core.RayDogNodeProvider"
"""``provider.module`` of a RayDog config (``raydog_core.validation.MODULE``)."""


def is_default_not_written(record: "logging.LogRecord") -> bool:
    """Whether ``record`` is Ray's warning about a legacy field that only Ray's defaults hold,
    for a RayDog config: called while Ray logs it, so the frames are Ray's own."""
    if record.funcName != WARNING_FUNCTION:
        return False
    frame: FrameType | None = sys._getframe()
    while frame is not None and frame.f_code.co_name != WARNING_FUNCTION:
        frame = frame.f_back
    caller = frame.f_back if frame is not None else None
    if frame is None or caller is None or caller.f_code.co_name != FILLING_FUNCTION:
        return False
    field = frame.f_locals.get("field")
    written = caller.f_locals.get("config")
    if not isinstance(written, dict) or not isinstance(written.get("provider"), dict):
        return False
    return written["provider"].get("module") == RAYDOG_MODULE and field not in written


def _keep(record: "logging.LogRecord") -> bool:
    return not is_default_not_written(record)


def quiet_ray_defaults() -> None:
    """Attach the filter to Ray's ``util`` logger (once; any number of calls)."""
    import logging

    logger = logging.getLogger(RAY_UTIL)
    if _keep not in logger.filters:
        logger.addFilter(_keep)


class _RayUtilWatcher:
    """A ``sys.meta_path`` finder that finds nothing: it notices Ray's ``util`` module being
    imported, attaches the filter and leaves."""

    def find_spec(
        self,
        name: str,
        path: "Sequence[str] | None" = None,
        target: "ModuleType | None" = None,
    ) -> "ModuleSpec | None":
        if name == RAY_UTIL:
            sys.meta_path.remove(self)
            quiet_ray_defaults()
        return None


_WATCHER = _RayUtilWatcher()


def install() -> None:
    """What ``raydog-startup.pth`` runs: watch for Ray, cost nothing until then."""
    if RAY_UTIL in sys.modules:
        quiet_ray_defaults()
    elif _WATCHER not in sys.meta_path:
        sys.meta_path.insert(0, _WATCHER)
