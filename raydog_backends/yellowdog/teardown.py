"""Taking a cluster down: everything found by its names, in every generation.

The work requirements are cancelled (their tasks abort), every pool is shut down and every
pool's compute requirement terminated, as yellowdog-ray does (commit 0794285) and the YellowDog
CLI's ``--terminate`` does ("also immediately terminate associated compute requirement(s)"): a
pool shutdown is not immediate, and a node whose agent never registered cannot be told to stop.
Pools already shutting down are included, so a second ``ray down`` finishes what the first began.
"""

from __future__ import annotations

import logging

from yellowdog_client.model import WorkerPoolStatus

from raydog_backends.yellowdog.api import API_ERRORS, Api, is_refusal, reason
from raydog_backends.yellowdog.cluster import (
    UNFINISHED_WORK_REQUIREMENT,
    UNTERMINATED_POOL,
    Clusters,
)
from raydog_backends.yellowdog.pools import Pools
from raydog_core.errors import BackendError

logger = logging.getLogger(__name__)


def shutdown_everything(api: Api, clusters: Clusters, pools: Pools) -> tuple[list[str], list[str]]:
    """End every object of the cluster: what was ended, and what could not be."""
    cleaned: list[str] = []
    failures: list[str] = []
    try:
        requirements = clusters.work_requirements(UNFINISHED_WORK_REQUIREMENT)
    except BackendError as exc:
        requirements = []
        failures.append(str(exc))
    for summary in requirements:
        try:
            api.sdk.work_client.cancel_work_requirement_by_id(summary.id, True)
            cleaned.append(f"work requirement {summary.name}")
        except API_ERRORS as exc:
            if not is_refusal(exc):
                failures.append(f"cancel work requirement {summary.name}: {reason(exc)}")
    try:
        found = clusters.pools(UNTERMINATED_POOL)
    except BackendError as exc:
        found = []
        failures.append(str(exc))
    for pool in found:
        live = pool.status is not WorkerPoolStatus.SHUTDOWN
        ended, failed = pools.end(pool.id, pool.name, live=live)
        cleaned += ended
        failures += failed
    clusters.forget()
    pools.forget()
    if cleaned:
        logger.info("YellowDog: shut down %s: %s", clusters.what(), ", ".join(cleaned))
    return cleaned, failures
