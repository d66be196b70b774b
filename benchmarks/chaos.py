"""Chaos on a local cluster: a job runs while faults hit at random, for a bounded time.

A ``local`` cluster (examples/local, two workers kept by ``min_workers``) runs a job of 2-CPU tasks
that retry for ever; meanwhile, every few seconds, one fault at random:

- the head's tag server killed with SIGKILL (its supervisor starts it again, from its
  append-only file), or stopped with SIGSTOP for a few seconds;
- a worker killed with SIGKILL (its whole process session; Ray's autoscaler replaces it);
- the store restored to an older copy of the cluster's keys (taken 10 s or more before: same
  epoch, an older version and older values, nodes deleted since back);
- a client ended by SIGTERM or SIGHUP: one of two writer processes (each a tag cache, as every
  ``ray`` command has, writing one new tag on the head node every 50 ms and reading the store
  as a tick does), replaced by a new one; or a ``ray up --no-restart`` of the same config.

At the end the writers are stopped with SIGTERM, the job is waited for, and the store is read:
printed are the writes made (those whose ``update`` returned) and lost (not in the store), the
workers lost and replaced, whether the head was replaced, and whether the job finished.

Run (starts a whole Ray cluster on this machine; one at a time)::

    python benchmarks/chaos.py [--minutes 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import valkey
import yaml

from raydog_backends.keyvalue import ValkeyTagStore
from raydog_backends.keyvalue.store import PASSWORD_SECRET
from raydog_backends.local.testing import LocalCluster
from raydog_core import state
from raydog_core.interfaces import Endpoint, NodeInfo, NodeState

WORKERS = 2
COPY_AGE_SECONDS = 10.0
SETTLE_SECONDS = 15.0

JOB = """
import sys, time
import ray

ray.init()


@ray.remote(num_cpus=2, max_retries=-1)
def work(i):
    time.sleep(2)
    return i


deadline = time.time() + float(sys.argv[1])
done = 0
while time.time() < deadline:
    done += len(ray.get([work.remote(i) for i in range(2)]))
print(f"JOB_DONE {done}", flush=True)
"""

WRITER = """
import sys, time
from raydog_backends.keyvalue import ValkeyTagStore
from raydog_core.interfaces import Endpoint
from raydog_core.tag_cache import TagCache

cluster, host, port, head, name = sys.argv[1:6]
cache = TagCache(ValkeyTagStore(cluster, port=int(port)), lambda: Endpoint(host, int(port)))
seq = 0
while True:
    cache.update({head: {f"chaos-{name}-{seq}": str(seq)}})
    print(seq, flush=True)
    seq += 1
    if seq % 20 == 0:
        cache.refresh(timeout=0)
    time.sleep(0.05)
"""


@dataclass
class ChaosCluster(LocalCluster):
    """examples/local with two workers kept, its tag store keeping an append-only file."""

    def write_config(self) -> Path:
        path = super().write_config()
        config = yaml.safe_load(path.read_text())
        config["available_node_types"]["cpu_worker"]["min_workers"] = WORKERS
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    @property
    def tag_port(self) -> int:
        return int(yaml.safe_load(self.config.read_text())["provider"]["tag_store"]["port"])

    def head(self) -> NodeInfo:
        (head,) = [info for info in self.nodes().values() if info.is_head]
        return head

    def tag_server_pid(self, head_id: str) -> int | None:
        pid_file = (
            self.observer.folder.home(head_id)
            / ".raydog/clusters"
            / self.cluster_name
            / "tag-store/server.pid"
        )
        try:
            return int(pid_file.read_text())
        except (OSError, ValueError):
            return None


@dataclass
class Writer:
    """A client process writing tags; what it printed is what its ``update`` returned."""

    name: str
    process: subprocess.Popen[str]
    written: int = 0
    reader: threading.Thread | None = None

    def follow(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.written = int(line) + 1


@dataclass
class Chaos:
    cluster: ChaosCluster
    rng: random.Random
    head_id: str = ""
    writers: list[Writer] = field(default_factory=list)
    ended_writers: list[Writer] = field(default_factory=list)
    copies: list[tuple[float, dict[bytes, Any]]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    workers_killed: set[str] = field(default_factory=set)

    # --- the store, as an operator reaches it ------------------------------------------

    def admin(self) -> valkey.Valkey:
        password = state.read_secret(self.cluster.cluster_name, PASSWORD_SECRET)
        head = self.cluster.head()
        return valkey.Valkey(
            host=head.internal_ip, port=self.cluster.tag_port, password=password, socket_timeout=10
        )

    def cluster_keys(self, client: valkey.Valkey) -> list[bytes]:
        pattern = f"raydog:{{{self.cluster.cluster_name}}}:*"
        return list(client.scan_iter(match=pattern, count=1000))

    def take_copy(self) -> None:
        client = self.admin()
        try:
            copy = {key: client.dump(key) for key in self.cluster_keys(client)}
        except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError):
            return  # the server is down or stopped: the next copy then
        finally:
            client.close()
        self.copies.append((time.monotonic(), copy))

    def restore_copy(self) -> str:
        old = [copy for taken, copy in self.copies if time.monotonic() - taken >= COPY_AGE_SECONDS]
        if not old:
            return "store restored (no copy old enough yet: skipped)"
        copy = old[-1]
        client = self.admin()
        try:
            pipe = client.pipeline(transaction=True)
            for key in self.cluster_keys(client):
                pipe.delete(key)
            for name, dumped in copy.items():
                if dumped is not None:
                    pipe.restore(name, 0, dumped, replace=True)
            pipe.execute()
        except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError) as exc:
            return f"store restored (skipped: {exc})"
        finally:
            client.close()
        return "store restored to an older copy"

    # --- writers -------------------------------------------------------------------------

    def start_writer(self) -> None:
        head = self.cluster.head()
        name = uuid.uuid4().hex[:6]
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                self.cluster.cluster_name,
                str(head.internal_ip),
                str(self.cluster.tag_port),
                head.node_id,
                name,
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.cluster.env,
        )
        writer = Writer(name, process)
        writer.reader = threading.Thread(target=writer.follow, daemon=True)
        writer.reader.start()
        self.writers.append(writer)

    def end_writer(self, writer: Writer, signum: int) -> None:
        writer.process.send_signal(signum)
        writer.process.wait(120)
        assert writer.reader is not None
        writer.reader.join(10)
        self.writers.remove(writer)
        self.ended_writers.append(writer)

    # --- faults --------------------------------------------------------------------------

    def fault(self) -> str:
        choice = self.rng.choice(
            ["kill server", "stop server", "kill worker", "restore", "end writer", "end ray up"]
        )
        self.faults[choice] += 1
        if choice == "kill server":
            pid = self.cluster.tag_server_pid(self.head_id)
            if pid is None:
                return "tag server killed (none running: skipped)"
            os.kill(pid, signal.SIGKILL)
            return f"tag server killed (pid {pid})"
        if choice == "stop server":
            pid = self.cluster.tag_server_pid(self.head_id)
            if pid is None:
                return "tag server stopped (none running: skipped)"
            seconds = self.rng.uniform(2, 8)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(seconds)
            os.kill(pid, signal.SIGCONT)
            return f"tag server stopped for {seconds:.1f} s"
        if choice == "kill worker":
            running = [
                node_id
                for node_id, info in self.cluster.workers(self.cluster.nodes()).items()
                if info.state is NodeState.RUNNING
            ]
            if not running:
                return "worker killed (none running: skipped)"
            node_id = self.rng.choice(running)
            record = self.cluster.observer.folder.record(node_id)
            process = record.process() if record is not None else None
            if process is None:
                return "worker killed (gone already: skipped)"
            os.killpg(process.pgid, signal.SIGKILL)
            self.workers_killed.add(node_id)
            return f"worker {node_id} killed"
        if choice == "restore":
            return self.restore_copy()
        if choice == "end writer":
            signum = self.rng.choice([signal.SIGTERM, signal.SIGHUP])
            writer = self.rng.choice(self.writers)
            self.end_writer(writer, signum)
            self.start_writer()
            return f"writer {writer.name} ended by {signal.Signals(signum).name}"
        up = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "up",
                "-y",
                "--no-restart",
                "--no-config-cache",
                str(self.cluster.config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=self.cluster.env,
            cwd=self.cluster.folder,
        )
        seconds = self.rng.uniform(0.5, 4)
        try:
            up.wait(seconds)
            return "ray up ended by itself before its SIGTERM"
        except subprocess.TimeoutExpired:
            up.send_signal(signal.SIGTERM)
            up.wait(120)
            return f"ray up ended by SIGTERM after {seconds:.1f} s"


def run(minutes: float, seed: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="raydog-chaos-"))
    cluster = ChaosCluster(folder, f"chaos-{uuid.uuid4().hex[:6]}")
    os.environ["RAYDOG_HOME"] = str(cluster.home)  # the cluster's password, for the admin client
    chaos = Chaos(cluster, random.Random(seed))
    started = time.monotonic()
    try:
        cluster.ray("up", "-y", "--no-config-cache", str(cluster.config), timeout=300)
        nodes = cluster.wait_for(
            lambda found: (
                sum(info.state is NodeState.RUNNING for info in cluster.workers(found).values())
                == WORKERS
            ),
            f"{WORKERS} workers",
            timeout=300,
        )
        first_workers = set(cluster.workers(nodes))
        chaos.head_id = cluster.head().node_id
        print(
            f"cluster {cluster.cluster_name} up in {time.monotonic() - started:.0f} s", flush=True
        )
        job_file = folder / "chaos_job.py"
        job_file.write_text(JOB)
        job = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "submit",
                "--no-config-cache",
                str(cluster.config),
                str(job_file),
                str(minutes * 60),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=cluster.env,
            cwd=folder,
        )
        for _ in range(2):
            chaos.start_writer()
        deadline = time.monotonic() + minutes * 60
        seen_workers = set(first_workers)
        while time.monotonic() < deadline:
            chaos.take_copy()
            time.sleep(chaos.rng.uniform(3, 10))
            what = chaos.fault()
            seen_workers |= set(cluster.workers(cluster.nodes()))
            print(f"{time.monotonic() - started:6.0f} s  {what}", flush=True)
        for writer in list(chaos.writers):
            chaos.end_writer(writer, signal.SIGTERM)
        output, _ = job.communicate(timeout=600)
        job_done = job.returncode == 0 and "JOB_DONE" in output
        time.sleep(SETTLE_SECONDS)  # a few of the head's autoscaler ticks: refills land
        seen_workers |= set(cluster.workers(cluster.nodes()))
        head_after = cluster.head().node_id
        store = ValkeyTagStore(cluster.cluster_name, port=cluster.tag_port)
        store.connect(Endpoint(str(cluster.head().internal_ip), cluster.tag_port))
        stored = store.load_all().get(chaos.head_id, {})
        store.close()
        made = sum(writer.written for writer in chaos.ended_writers)
        lost = sum(
            1
            for writer in chaos.ended_writers
            for seq in range(writer.written)
            if stored.get(f"chaos-{writer.name}-{seq}") != str(seq)
        )
        return {
            "minutes": minutes,
            "seed": seed,
            "faults": dict(chaos.faults),
            "writers": len(chaos.ended_writers),
            "writes made": made,
            "writes lost": lost,
            "workers killed": len(chaos.workers_killed),
            "workers replaced": len(seen_workers - first_workers),
            "head replaced": head_after != chaos.head_id,
            "job finished": job_done,
            "job output": output.strip().splitlines()[-1:] if output else [],
        }
    finally:
        for writer in list(chaos.writers):
            writer.process.kill()
        cluster.probe("down", "-y", str(cluster.config), timeout=300)
        cluster.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long faults hit")
    parser.add_argument("--seed", type=int, default=1, help="the faults' random seed")
    args = parser.parse_args()
    result = run(args.minutes, args.seed)
    print()
    for key, value in result.items():
        print(f"{key:<18} {value}")


if __name__ == "__main__":
    main()
