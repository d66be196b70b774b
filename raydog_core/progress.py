"""What RayDog shows a person: progress on long waits through Ray's own CLI output."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


def report(message: str, *args: object) -> None:
    """One line of progress (``%``-style arguments), shown through Ray's CLI output: on the
    terminal during ``ray up``, in the autoscaler's log on the head. Ray is imported here, not
    at the top: importing it costs most of a second, which ``raydog validate``, ``init`` and
    ``node-setup`` (they import this module through ``head_packages``) never need to pay."""
    from ray.autoscaler._private.cli_logger import cli_logger

    cli_logger.print("{}", "RayDog: " + (message % args if args else message))


@contextlib.contextmanager
def quiet_ray_logs() -> Iterator[None]:
    """Ray's autoscaler logs its whole config and status on every tick; keep only warnings."""
    ray_logger = logging.getLogger("ray.autoscaler")
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray_logger.setLevel(level)
