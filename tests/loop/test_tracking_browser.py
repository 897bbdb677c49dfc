"""The MLflow dashboard a scientist opens, checked in a real browser: Debian's `chromium`, headless, against
`matloop ui` over the tracked smoke campaign (the one whose store broke and was rebuilt by `sync-tracking`).

Screenshots are saved as test artifacts under `$MATLOOP_TEST_ARTIFACTS/browser/` (default `test-artifacts/browser/`
in the checkout). Without chromium the tests skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tracked_smoke import ROOT, SMOKE_NAME, free_port, stop_process, tracked_smoke, wait_for_health

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("MATLOOP_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "browser"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = (
            "Debian's chromium is not installed (apt-get install chromium; scripts/setup.sh does it as root)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Ids of the smoke campaign's experiment, parent run and round runs."""
    from loop.tracking import PARENT_TAG, ROUND_TAG, Tracker, TrackingConfig

    run = tracked_smoke(tmp_path_factory)
    client = Tracker(config=TrackingConfig(), workdir=run.workdir, campaign_name=SMOKE_NAME).client
    experiment = client.get_experiment_by_name(SMOKE_NAME)
    runs = client.search_runs([experiment.experiment_id])
    ids = {"workdir": str(run.workdir), "experiment": experiment.experiment_id}
    for r in runs:
        if PARENT_TAG in r.data.tags:
            ids[f"round{r.data.tags[ROUND_TAG]}"] = r.info.run_id
        else:
            ids["parent"] = r.info.run_id
    return ids


@pytest.fixture(scope="module")
def ui(campaign: dict[str, str]) -> Iterator[str]:
    """`matloop ui` on a free port of 127.0.0.1, as a user starts it."""
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loop.cli", "ui", "--workdir", campaign["workdir"], "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, proc)
        yield base
    finally:
        stop_process(proc)


def _browse(url: str, name: str, tmp_path: Path) -> str:
    """Screenshot `url` into the test artifacts and return its rendered DOM (after the app's requests settle)."""
    chromium = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    common = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI containers run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1440,1000",
        "--virtual-time-budget=30000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    png = ARTIFACTS / f"{name}.png"
    png.unlink(missing_ok=True)
    shot = subprocess.run([*common, f"--screenshot={png}", url], capture_output=True, text=True, timeout=300)
    assert png.is_file() and png.stat().st_size > 10_000, shot.stderr[-2000:]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=300)
    assert dom.returncode == 0, dom.stderr[-2000:]
    (ARTIFACTS / f"{name}.html").write_text(dom.stdout)
    return dom.stdout


def test_experiment_page_lists_parent_and_round_runs(
    ui: str, campaign: dict[str, str], tmp_path: Path
) -> None:
    dom = _browse(f"{ui}/#/experiments/{campaign['experiment']}", "landing", tmp_path)
    assert SMOKE_NAME in dom
    for rnd in (0, 1, 2):
        assert f"round-{rnd:03d}" in dom, f"round-{rnd:03d} not listed on the experiment page"


def test_round_run_page_shows_metrics_and_artifacts(
    ui: str, campaign: dict[str, str], tmp_path: Path
) -> None:
    run = f"{ui}/#/experiments/{campaign['experiment']}/runs/{campaign['round1']}"
    overview = _browse(run, "round_run", tmp_path)
    assert "Round 1" in overview  # the description
    for metric in ("science.hits", "update.emulator_mae", "funnel.n_passed"):
        assert metric in overview, metric
    artifacts = _browse(f"{run}/artifacts", "round_run_artifacts", tmp_path)
    for folder in ("queried", "plots", "checkpoints"):
        assert folder in artifacts, folder


def test_parent_shows_hits_vs_oracle_calls(ui: str, campaign: dict[str, str], tmp_path: Path) -> None:
    parent = f"{ui}/#/experiments/{campaign['experiment']}/runs/{campaign['parent']}"
    dom = _browse(
        f"{parent}/artifactPath/plots/hits_vs_oracle_calls.png", "parent_hits_vs_oracle_calls", tmp_path
    )
    assert "hits_vs_oracle_calls.png" in dom
    overview = _browse(parent, "parent_run", tmp_path)
    for text in ("Campaign", "hits_cumulative", "oracle_calls_cumulative", "FINISHED".title()):
        assert text in overview, text


def test_registered_model_page_lists_versions(ui: str, campaign: dict[str, str], tmp_path: Path) -> None:
    dom = _browse(f"{ui}/#/models/{SMOKE_NAME}-emulator", "registered_model", tmp_path)
    for version in (1, 2, 3):
        assert f"Version {version}" in dom, f"version {version} not listed"
    assert "champion" in dom
