"""Helpers for the tracking tests: the real CLI, a quick campaign whose MLflow store breaks between rounds, and
MLflow servers on 127.0.0.1.

The campaign is run once per test session and shared by `test_tracking.py` and `test_tracking_browser.py`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.loop import cli_process
from tests.loop.quick_campaign import write_quick_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE_NAME = "smoke-cu-au"


# From the repository root, with the hour a tracked campaign may take on a loaded machine.
matloop = partial(cli_process.matloop, cwd=ROOT, timeout=3600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(base: str, proc: subprocess.Popen[bytes], *, limit_s: float = 180) -> None:
    """Wait until an MLflow server or UI answers /health (a loaded 2-core machine needs tens of seconds)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, f"the MLflow process serving {base} exited early"
        assert time.monotonic() < deadline, f"{base} did not come up"
        time.sleep(0.5)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started with `start_new_session=True`, with its workers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class TrackedSmoke:
    """The quick campaign after: round 1 tracked, store corrupted, round 2 run without tracking, sync."""

    workdir: Path
    broken_run: subprocess.CompletedProcess[str]
    sync: subprocess.CompletedProcess[str]


_RUNS: dict[str, TrackedSmoke] = {}


def tracked_smoke(tmp_path_factory: pytest.TempPathFactory) -> TrackedSmoke:
    """Run (once per session) the quick Cu-Au campaign (`quick_campaign`; tracking is what these tests check, not
    the campaign's science) through a broken MLflow store and `matloop sync-tracking`."""
    if "smoke" in _RUNS:
        return _RUNS["smoke"]
    folder = tmp_path_factory.mktemp("tracked-smoke")
    config = write_quick_config(folder / "quick.yaml", name=SMOKE_NAME, rounds=2)
    workdir = folder / "campaign"
    first = matloop("run", config, "--workdir", workdir, "--rounds", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    db = workdir / "mlflow" / "mlflow.db"
    assert db.is_file()
    # The fault of the audit: the tracking database replaced by random bytes between rounds.
    db.write_bytes(os.urandom(db.stat().st_size))
    broken = matloop("run", config, "--workdir", workdir, "--rounds", "2")
    assert broken.returncode == 0, broken.stderr[-3000:]
    sync = matloop("sync-tracking", "--workdir", workdir, "--json")
    assert sync.returncode == 0, sync.stderr[-3000:]
    _RUNS["smoke"] = TrackedSmoke(workdir=workdir, broken_run=broken, sync=sync)
    return _RUNS["smoke"]


def resynced_smoke(smoke_campaign: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the finished smoke campaign (its store and checkpoints) whose MLflow record is logged afresh from
    the store by `matloop sync-tracking` (once per session): what the current code logs, without running again."""
    if "resynced" in _RUNS:
        return _RUNS["resynced"].workdir
    workdir = tmp_path_factory.mktemp("resynced-smoke") / "campaign"
    workdir.mkdir()
    for item in smoke_campaign.iterdir():
        if item.name.startswith("matloop.db"):
            shutil.copy2(item, workdir / item.name)
    shutil.copytree(smoke_campaign / "checkpoints", workdir / "checkpoints")
    sync = matloop("sync-tracking", "--workdir", workdir, "--json")
    assert sync.returncode == 0, sync.stderr[-3000:]
    _RUNS["resynced"] = TrackedSmoke(workdir=workdir, broken_run=sync, sync=sync)
    return workdir
