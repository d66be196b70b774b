"""YellowDog API calls the yellowdog backend makes: a scale-up of 1, 10 and 100 workers, one
describe tick, and the head launch and shutdown around them, counted by the YellowDog emulator.

"cold" is a backend that has not seen the cluster yet (the head's autoscaler just started);
"warm" is the same backend's next scale-up. A describe tick is counted steady (addresses known),
learning (new nodes' addresses fetched) and re-checking (node liveness checked, every
``node_recheck_seconds``). Run: ``python benchmarks/yellowdog_api_calls.py``.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydog_backends.yellowdog import YellowDogComputeBackend
from raydog_backends.yellowdog_emulator import Emulator, EmulatorClient, EmulatorConfig
from raydog_core.interfaces import ClusterSpec, LaunchRequest, NodeState, NodeTypeSpec

SCRIPT = "#!/bin/bash\nsleep infinity\n"
CONFIG = {"compute_requirement_template": "ydid:crt:bench"}


def spec(workers: int) -> ClusterSpec:
    return ClusterSpec(
        cluster_name=f"bench-{uuid.uuid4().hex[:6]}",
        head_node_type="head",
        node_types={
            "head": NodeTypeSpec("head", CONFIG, {"CPU": 1}, 0, 0),
            "cpu": NodeTypeSpec("cpu", CONFIG, {"CPU": 2}, 0, 2 * workers),
        },
        head_script=SCRIPT,
        worker_script=SCRIPT,
    )


class Counted:
    """Counts the API requests served while a block runs."""

    def __init__(self, client: EmulatorClient) -> None:
        self.client = client

    def __call__(self, action: object) -> tuple[int, str]:
        before = self.client.request_count()
        assert callable(action)
        action()
        served = self.client.requests(before)
        kinds = Counter(f"{r['method']} {re.sub(r'ydid:[^/]+', '{id}', r['path'])}" for r in served)
        return len(served), ", ".join(f"{n}x {k}" if n > 1 else k for k, n in kinds.items())


def wait_running(backend: YellowDogComputeBackend, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        nodes = backend.describe()
        if sum(n.state is NodeState.RUNNING for n in nodes) == count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{count} nodes did not come up")


def measure(emulator: Emulator, client: EmulatorClient, workers: int) -> list[tuple[str, int, str]]:
    count = Counted(client)
    cluster = spec(workers)
    rows = []
    client_side = YellowDogComputeBackend(cluster, api_max_attempts=1)
    rows.append(("head launch", *count(lambda: client_side.launch(LaunchRequest("head", 1, True)))))
    head_side = YellowDogComputeBackend(cluster, api_max_attempts=1, node_recheck_seconds=3600)
    request = LaunchRequest("cpu", workers, False)
    rows.append((f"scale-up of {workers}, cold", *count(lambda: head_side.launch(request))))
    rows.append((f"scale-up of {workers}, warm", *count(lambda: head_side.launch(request))))
    wait_running(head_side, 1 + 2 * workers)
    rows.append((f"describe tick, {1 + 2 * workers} nodes, steady", *count(head_side.describe)))
    head_side.node_recheck_seconds = 0.0
    rows.append((f"describe tick, {1 + 2 * workers} nodes, re-check", *count(head_side.describe)))
    head_side.node_recheck_seconds = 3600
    rows.append(("shutdown", *count(client_side.shutdown)))
    client_side.close()
    head_side.close()
    return rows


def learning_tick(client: EmulatorClient) -> tuple[int, str]:
    """A tick right after 100 workers started: their addresses are fetched (per node type)."""
    cluster = spec(100)
    backend = YellowDogComputeBackend(cluster, api_max_attempts=1, node_recheck_seconds=3600)
    backend.launch(LaunchRequest("head", 1, True))
    backend.launch(LaunchRequest("cpu", 100, False))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tasks = client.state()["tasks"]
        if sum(t["status"] == "EXECUTING" for t in tasks) >= 101:
            break
        time.sleep(0.1)
    result = Counted(client)(backend.describe)
    backend.shutdown()
    backend.close()
    return result


def main() -> None:
    os.environ["RAYDOG_HOME"] = tempfile.mkdtemp(prefix="raydog-bench-")
    config = EmulatorConfig(
        provision_delay=0.0,
        boot_delay=0.05,
        task_start_delay=0.0,
        # Platform facts the backend does not handle yet (issue 9 item 2); remove as it does.
        lenient_node_public_ip=True,
        lenient_unlimited_pools=True,
        lenient_no_preallocation=True,
        lenient_pool_shutdown=True,
    )
    with Emulator(config) as emulator:
        os.environ.update(
            YD_API_KEY_ID="bench", YD_API_KEY_SECRET="bench-secret", YD_API_URL=emulator.url
        )
        client = EmulatorClient(emulator.url)
        print(f"{'what':<40} {'API calls':>9}  requests")
        for workers in (1, 10, 100):
            for what, calls, detail in measure(emulator, client, workers):
                print(f"{what:<40} {calls:>9}  {detail}")
            print()
        calls, detail = learning_tick(client)
        print(f"{'describe tick, 101 nodes, learning IPs':<40} {calls:>9}  {detail}")


if __name__ == "__main__":
    main()
