"""A utilization scorer for Ray's autoscaler (v1) that prefers node types that can launch.

Ray 2.x hands every scorer the availability its node launcher recorded from
``NodeLaunchException`` (``ray/autoscaler/_private/node_provider_availability_tracker.py``), but
its default scorer (``_resource_based_utilization_scorer`` in
``ray/autoscaler/_private/resource_demand_scheduler.py``) ignores it: a node type whose launches
fail stays the first choice. Ray takes another scorer from ``RAY_AUTOSCALER_UTILIZATION_SCORER``;
this one ranks Ray's own score behind "launched without failing lately", so Ray picks another
type that fits while the failure lasts, and the failed type still when nothing else fits.
RayDog's head exports the variable (``task_scripts.ray_exports``).
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer


def prefer_launchable(
    node_resources: dict[str, Real],
    resources: list[dict[str, Real]],
    node_type: str,
    *,
    node_availability_summary: NodeAvailabilitySummary,
) -> tuple[Any, ...] | None:
    """Ray's score, behind whether the node type's latest launch failed."""
    score = _default_utilization_scorer(
        node_resources, resources, node_type, node_availability_summary=node_availability_summary
    )
    if score is None:
        return None
    record = node_availability_summary.node_availabilities.get(node_type)
    return (record is None or record.is_available, *score)
