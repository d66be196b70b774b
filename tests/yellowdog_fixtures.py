"""A YellowDog emulator for tests, in this process (threads) or as a process (stopped by pid).

Test modules load the fixtures with ``pytest_plugins = ["tests.yellowdog_fixtures"]``. The
emulator binds 127.0.0.1 on a free port; the backend reaches it through ``YD_API_URL``, with a
key whose secret is unique to the test session so that tests can look for it where it must not be.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from yellowdog_client.model import ApiKey, RetryProperties, ServicesSchema
from yellowdog_client.platform_client import PlatformClient

from raydog_backends.yellowdog import YellowDogComputeBackend
from raydog_backends.yellowdog_emulator import Emulator, EmulatorClient, EmulatorConfig
from raydog_core.interfaces import ClusterSpec, NodeTypeSpec

T = TypeVar("T")

KEY_ID = "raydog-test-key"
SECRET = f"yd-secret-{uuid.uuid4().hex}"
TEMPLATE = "ydid:crt:e0000d:raydog-test"
NAMESPACE = "raydog-test"
SLEEP_SCRIPT = "#!/bin/bash\nsleep infinity\n"
START_TIMEOUT = 20.0


@contextlib.contextmanager
def running_emulator(config: EmulatorConfig | None = None) -> Iterator[Emulator]:
    """An emulator served by threads of this process, with every platform fact the emulator
    reproduces; stopped (with its task processes) after."""
    emulator = Emulator(config).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@dataclass
class EmulatorProcess:
    process: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the emulator (it stops its own task processes), SIGKILL its group if stuck."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def start_emulator_process(
    *arguments: str, module: str = "raydog_backends.yellowdog_emulator"
) -> EmulatorProcess:
    """``python -m MODULE --port 0 ...``, once it says where it is."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
    try:
        first = lines.get(timeout=START_TIMEOUT)
    except queue.Empty:
        first = ""
    if "listening on " not in first:
        EmulatorProcess(process, "").stop()
        raise RuntimeError(f"the emulator did not start: {first!r}")
    return EmulatorProcess(process, first.rsplit(" ", 1)[-1].strip())


def node_config(**extra: Any) -> dict[str, Any]:
    return {"compute_requirement_template": TEMPLATE, **extra}


def make_spec(
    cluster_name: str | None = None,
    *,
    types: Mapping[str, Mapping[str, Any]] | None = None,
    head_script: str = SLEEP_SCRIPT,
    worker_script: str = SLEEP_SCRIPT,
    max_workers: int = 100,
) -> ClusterSpec:
    """A cluster with a ``head`` type and a ``cpu`` worker type (or the ``types`` given), each
    with ``max_workers`` (the head type's too, as Ray allows)."""
    configs = types or {"head": node_config(), "cpu": node_config()}
    return ClusterSpec(
        cluster_name=cluster_name or f"yd-{uuid.uuid4().hex[:8]}",
        head_node_type=next(iter(configs)),
        node_types={
            name: NodeTypeSpec(name, config, {"CPU": 1}, 0, max_workers)
            for name, config in configs.items()
        },
        head_script=head_script,
        worker_script=worker_script,
    )


def make_backend(spec: ClusterSpec, **options: Any) -> YellowDogComputeBackend:
    """The backend as tests use it: no SDK retries (a failure is seen at once), test namespace."""
    settings: dict[str, Any] = {"cluster_namespace": NAMESPACE, "api_max_attempts": 1, **options}
    return YellowDogComputeBackend(spec, **settings)


def sdk_client(url: str) -> PlatformClient:
    """The real SDK, as a user would look at the platform: no retries; close it after."""
    schema = ServicesSchema(defaultUrl=url, retry=RetryProperties(maxAttempts=0))
    return PlatformClient.create(schema, ApiKey(KEY_ID, SECRET))


def cluster_leaks(client: EmulatorClient, cluster_slug: str) -> list[str]:
    """This cluster's unfinished work requirements and live pools, as the emulator sees them."""
    prefix = f"{cluster_slug}_"
    return [leak for leak in client.leaks() if leak.split(" ")[2].startswith(prefix)]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with running_emulator() as running:
        yield running


@pytest.fixture
def emulator_client(emulator: Emulator) -> EmulatorClient:
    return EmulatorClient(emulator.url)


@pytest.fixture
def yd_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The backend's credentials point at the emulator; no stray ``.env`` is found."""
    monkeypatch.setenv("YD_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("YD_API_KEY_SECRET", SECRET)
    monkeypatch.setenv("YD_API_URL", emulator.url)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return emulator.url
