"""YellowDog API calls the yellowdog backend makes: a scale-up of 1, 10 and 100 workers, one
describe tick, and the head launch and shutdown around them, counted by the YellowDog emulator.

"cold" is a backend that has not seen the cluster yet (the head's autoscaler just started);
"warm" is the same backend's next scale-up. A describe tick is counted learning (the first tick
that sees the nodes running: their private addresses from a node search per node type, their
public ones from an instance search per pool, as the platform no longer puts them on nodes),
steady (addresses known) and re-checking (node liveness checked, every
``node_recheck_seconds``). "booted" is how many nodes the platform booted for a scale-up: the
emulated pool scales itself to its tasks, as the platform's does, so a scale-up of N should boot
N nodes, or fewer where nodes idle after Ray terminated their workers can take the new tasks.
Run: ``python benchmarks/yellowdog_api_calls.py``.
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
            "cpu": NodeTypeSpec("cpu", CONFIG, {"CPU": 2}, 0, 4 * workers),
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


def wait_running(client: EmulatorClient, count: int) -> None:
    """Until ``count`` tasks execute, watched through the emulator (not the backend)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sum(t["status"] == "EXECUTING" for t in client.state()["tasks"]) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{count} nodes did not come up")


def booted_settled(client: EmulatorClient, running: int) -> int:
    """Nodes the platform ever booted, once ``running`` tasks execute, no node still boots
    (nodes a scale-up boots beyond its tasks would still be booting before) and every live
    instance lists its addresses (an instance is listed ``PENDING`` at first)."""
    wait_running(client, running)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.state()
        nodes = state["nodes"]
        instances = [i for c in state["compute_requirements"] for i in c["instances"]]
        booting = any(n["status"] == "BOOTING" for n in nodes)
        if not booting and all(i["public_ip"] for i in instances if i["live"]):
            return len(nodes)
        time.sleep(0.1)
    raise RuntimeError("nodes still booting")


def measure(client: EmulatorClient, workers: int) -> list[tuple[str, int, str, str]]:
    count = Counted(client)
    cluster = spec(workers)
    nodes = 1 + 2 * workers
    rows = []
    client_side = YellowDogComputeBackend(cluster, api_max_attempts=1)
    rows.append(
        ("head launch", *count(lambda: client_side.launch(LaunchRequest("head", 1, True))), "")
    )
    head_side = YellowDogComputeBackend(cluster, api_max_attempts=1, node_recheck_seconds=3600)
    request = LaunchRequest("cpu", workers, False)
    booted = booted_settled(client, 1)
    launched: list[str] = []
    for step, running in (("cold", 1 + workers), ("warm", nodes)):
        calls, detail = count(lambda: launched.extend(head_side.launch(request)))
        now = booted_settled(client, running)
        rows.append((f"scale-up of {workers}, {step}", calls, detail, str(now - booted)))
        booted = now
    rows.append((f"describe tick, {nodes} nodes, learning", *count(head_side.describe), ""))
    described = head_side.describe()
    public = sum(n.state is NodeState.RUNNING and bool(n.external_ip) for n in described)
    if public != nodes:
        raise RuntimeError(f"{public} of {nodes} nodes have a public address")
    rows.append((f"describe tick, {nodes} nodes, steady", *count(head_side.describe), ""))
    head_side.describer.recheck_seconds = 0.0
    rows.append((f"describe tick, {nodes} nodes, re-check", *count(head_side.describe), ""))
    # Ray replaces workers whose nodes have not yet reached their idle shutdown: the platform's
    # idle nodes can take the new tasks.
    head_side.terminate(launched[:workers])
    calls, detail = count(lambda: head_side.launch(request))
    now = booted_settled(client, nodes)
    rows.append((f"scale-up of {workers}, {workers} nodes idle", calls, detail, str(now - booted)))
    rows.append(("shutdown", *count(client_side.shutdown), ""))
    client_side.close()
    head_side.close()
    return rows


def main() -> None:
    os.environ["RAYDOG_HOME"] = tempfile.mkdtemp(prefix="raydog-bench-")
    config = EmulatorConfig(provision_delay=0.0, boot_delay=0.05, task_start_delay=0.0)
    with Emulator(config) as emulator:
        os.environ.update(
            YD_API_KEY_ID="bench", YD_API_KEY_SECRET="bench-secret", YD_API_URL=emulator.url
        )
        client = EmulatorClient(emulator.url)
        print(f"{'what':<40} {'API calls':>9} {'booted':>6}  requests")
        for workers in (1, 10, 100):
            for what, calls, detail, booted in measure(client, workers):
                print(f"{what:<40} {calls:>9} {booted:>6}  {detail}")
            print()


if __name__ == "__main__":
    main()
