"""The finished smoke campaign (EMT on Cu-Au, 2 rounds, through the real CLI, Dask, CHGNet and MLflow) that the
end-to-end, tracking and report tests read. It runs once per session; tests only read it (a test that continues a
campaign copies it first). Set MATLOOP_TEST_SMOKE_WORKDIR to a finished smoke campaign's workdir to reuse one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.loop.cli_process import matloop

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke_campaign(tmp_path_factory) -> Path:
    given = os.environ.get("MATLOOP_TEST_SMOKE_WORKDIR")
    if given:
        return Path(given)
    workdir = tmp_path_factory.mktemp("smoke") / "campaign"
    proc = matloop("run", SMOKE, "--workdir", workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir
