"""The daemon stops cleanly on SIGTERM and on `matloop stop`, after its current step, and resumes where it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loop.campaign import ROUND0_STAGES, ROUND_STAGES
from loop.store import CampaignStore

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
ORDER = [(0, s) for s in ROUND0_STAGES] + [(r, s) for r in (1, 2) for s in ROUND_STAGES]

pytestmark = pytest.mark.slow


def _start_daemon(workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loop.cli", "daemon", str(SMOKE), "--workdir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _done(workdir: Path) -> list[tuple[int, str]]:
    if not CampaignStore.exists_in(workdir):
        return []
    store = CampaignStore.in_workdir(workdir)
    try:
        return [(s["round"], s["stage"]) for s in store.stages()]
    finally:
        store.close()


def _wait_for(
    workdir: Path, stage: tuple[int, str], proc: subprocess.Popen[str], timeout: float = 900
) -> None:
    deadline = time.time() + timeout
    while stage not in _done(workdir):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.time() < deadline, f"{stage} not reached"
        time.sleep(0.5)


def test_sigterm_then_stop_command_then_resume(tmp_path):
    workdir = tmp_path / "campaign"
    daemon = _start_daemon(workdir)
    _wait_for(workdir, (0, "references"), daemon)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=600) == 0, daemon.stderr.read()
    first = _done(workdir)
    # It finished the step it was in, recorded it, and started nothing after it.
    assert first == ORDER[: len(first)] and len(first) < len(ORDER)

    daemon = _start_daemon(workdir)
    _wait_for(workdir, ORDER[len(first)], daemon)
    stop = subprocess.run(
        [sys.executable, "-m", "loop.cli", "stop", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    assert daemon.wait(timeout=600) == 0, daemon.stderr.read()
    second = _done(workdir)
    assert second == ORDER[: len(second)] and len(first) < len(second) < len(ORDER)

    # A second process on the same workdir while one runs is refused, not raced.
    daemon = _start_daemon(workdir)
    _wait_for(workdir, ORDER[len(second)], daemon)
    clash = subprocess.run(
        [sys.executable, "-m", "loop.cli", "run", str(SMOKE), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert clash.returncode == 2 and "another matloop process" in clash.stderr
    assert daemon.wait(timeout=1200) == 0, daemon.stderr.read()
    assert _done(workdir) == ORDER
