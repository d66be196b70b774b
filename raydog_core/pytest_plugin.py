"""A pytest fixture that gives a test an autoscaling RayDog cluster, so that Ray code is tested
against real scaling. Load it from a conftest: ``pytest_plugins = ["raydog_core.pytest_plugin"]``.

    @pytest.mark.raydog_cluster(config="cluster.yaml", workers={"cpu_worker": 1})
    def test_my_job(raydog_cluster):
        ray.init(raydog_cluster.address)
        ...

Without the mark, the cluster is ``raydog init --compute local``'s config: a whole cluster on
this machine (Linux), with a name of its own. The cluster is brought down after the test,
whatever its outcome; Ray in the test's process is shut down first.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from raydog_core.cluster import Cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "raydog_cluster(config=PATH_OR_MAPPING, workers={TYPE: N}): the cluster the "
        "raydog_cluster fixture brings up (default: the local starter config)",
    )


def local_config() -> dict[str, Any]:
    """``raydog init --compute local``'s config, with a cluster name of its own."""
    from raydog_core import starter

    config: dict[str, Any] = yaml.safe_load(starter.LOCAL_CONFIG)
    config["cluster_name"] = f"pytest-{uuid.uuid4().hex[:8]}"
    return config


@pytest.fixture
def raydog_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A RayDog cluster, up for the test and down after it."""
    import ray

    from raydog_core.cluster import Cluster

    mark = request.node.get_closest_marker("raydog_cluster")
    options = dict(mark.kwargs) if mark is not None else {}
    cluster = Cluster(options.pop("config", None) or local_config(), **options)
    with cluster:
        try:
            yield cluster
        finally:
            ray.shutdown()
