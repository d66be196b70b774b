"""End to end: two local clusters side by side on one machine, each with its own tag store.

Both configs leave the tag store's port out, as examples/local does: each head's server takes a
port of its cluster's (16667 plus a number from the cluster's name), where a constant port made
the second server fail with "Address already in use" and restart for ever.

    .venv/bin/python -m pytest -m e2e tests/e2e/test_two_local_clusters.py -s
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from raydog_backends.keyvalue import ValkeyTagStore
from raydog_backends.keyvalue.store import default_port
from raydog_backends.local.testing import LocalCluster
from raydog_core.interfaces import Endpoint

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local backend is Linux"),
]


class DefaultPortCluster(LocalCluster):
    """examples/local with no tag store port, as a user writes it."""

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        config["provider"]["tag_store"] = "valkey"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


@pytest.fixture
def two_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DefaultPortCluster]]:
    names: list[str] = []
    while len(names) < 2:
        name = f"e2e-pair-{uuid.uuid4().hex[:6]}"
        if default_port(name) not in {default_port(n) for n in names}:
            names.append(name)
    clusters = [DefaultPortCluster(tmp_path_factory.mktemp(name), name) for name in names]
    try:
        yield clusters
    finally:
        for cluster in clusters:
            if cluster.nodes():  # the test's own `ray down` did not run (or left a node)
                cluster.probe("down", "-y", str(cluster.config), timeout=300)
            cluster.destroy()


def test_two_local_clusters_run_side_by_side_each_with_its_own_store(
    two_clusters: list[DefaultPortCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    for cluster in two_clusters:
        cluster.ray("up", "-y", "--no-config-cache", str(cluster.config), timeout=300)
    for cluster in two_clusters:
        (head,) = cluster.nodes().values()
        port = default_port(cluster.cluster_name)
        log = cluster.observer.folder.home(head.node_id) / ".raydog/clusters"
        log = log / cluster.cluster_name / "tag-store.log"
        assert "restart" not in log.read_text(), log.read_text()[-2000:]
        monkeypatch.setenv("RAYDOG_HOME", str(cluster.home))  # this cluster's password
        store = ValkeyTagStore(cluster.cluster_name)
        store.connect(Endpoint(str(head.internal_ip), port))
        try:
            assert head.node_id in store.load_all()
        finally:
            store.close()
    for cluster in two_clusters:
        cluster.ray("down", "-y", str(cluster.config), timeout=300)
        assert cluster.leftovers() == []
