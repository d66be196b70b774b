"""``raydog smoke-test`` against the emulator, through the real SDK, and the recorded answers of
tests/data/platform-answers/ held against the emulator."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raydog_backends.yellowdog.smoke import FACTS
from raydog_backends.yellowdog_emulator import EmulatorClient
from raydog_core import cli
from tests.test_yellowdog_backend import yellowdog_cluster_config
from tests.yellowdog_fixtures import TEMPLATE

pytest_plugins = ["tests.yellowdog_fixtures"]

ANSWERS = Path(__file__).parent / "data" / "platform-answers"


def config_file(folder: Path) -> Path:
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(yellowdog_cluster_config("smoke")))
    return path


def smoke_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, dict[str, str]]:
    record = tmp_path / "answers.json"
    code = cli.main(
        ["smoke-test", str(config_file(tmp_path)), "--record", str(record), "--deadline", "2"]
    )
    captured = capsys.readouterr()
    out = captured.out + captured.err
    answers = json.loads(record.read_text())["answers"] if record.exists() else {}
    return code, out, answers


def test_the_emulator_agrees_with_itself_and_nothing_is_left(
    yd_env: str,
    emulator_client: EmulatorClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, answers = smoke_test(tmp_path, capsys)
    assert code == 0, out
    assert "agrees with the platform on every fact" in out
    assert emulator_client.leaks() == []
    assert {fact: answers[fact] for fact in FACTS} == FACTS
    text = json.dumps(answers)
    assert "smoke" not in text and "ydid" not in text and "127.0.0" not in text


@pytest.mark.parametrize("document", sorted(ANSWERS.glob("*.json")), ids=lambda p: p.name)
def test_the_emulator_answers_as_each_recorded_platform_did(
    document: Path,
    yd_env: str,
    emulator_client: EmulatorClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A user's recording, once added to the folder, shows where the emulator is wrong."""
    recorded = json.loads(document.read_text())["answers"]
    _, _, answers = smoke_test(tmp_path, capsys)
    differ = [fact for fact in FACTS if fact in recorded and recorded[fact] != answers.get(fact)]
    assert differ == [], f"{document.name}: the emulator answers otherwise on {differ}"


def test_a_disagreeing_emulator_names_the_fact_and_exits_1(
    yd_env: str,
    emulator_client: EmulatorClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emulator_client.settings(no_public_ip_templates=[TEMPLATE])
    code, out, answers = smoke_test(tmp_path, capsys)
    assert code == 1, out
    assert "differs from the platform on: instance addresses once the task runs" in out
    assert answers["instance addresses once the task runs"] == "private only"
    assert emulator_client.leaks() == []


def test_an_interrupted_run_still_ends_everything(
    yd_env: str,
    emulator_client: EmulatorClient,
    tmp_path: Path,
) -> None:
    """Ctrl-C (SIGINT) half-way, while the pool's node boots: every object is ended."""
    emulator_client.settings(boot_delay=3600)  # the node never comes: the run waits in step 5
    command = [sys.executable, "-m", "raydog_core.cli", "smoke-test", str(config_file(tmp_path))]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("step 5"):
                break
        assert emulator_client.leaks() != [], lines
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert "ended: " in rest and "worker pool raydog-smoke-" in rest, rest
    assert emulator_client.leaks() == []
