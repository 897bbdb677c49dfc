"""The finished smoke campaign (EMT on Cu-Au, 2 rounds, through the real CLI, Dask, CHGNet and MLflow) that the
end-to-end, tracking and report tests read. It runs once per session; tests only read it (a test that continues a
campaign copies it first). Set MATLOOP_TEST_SMOKE_WORKDIR to a finished smoke campaign's workdir to reuse one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_campaign(tmp_path_factory) -> Path:
    given = os.environ.get("MATLOOP_TEST_SMOKE_WORKDIR")
    if given:
        return Path(given)
    workdir = tmp_path_factory.mktemp("smoke") / "campaign"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "loop.cli", "run", str(SMOKE), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir
