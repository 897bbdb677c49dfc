"""The MLflow dashboard a scientist opens, checked in a real browser: Debian's `chromium`, headless, against
`matloop ui` over the tracked smoke campaign (the one whose store broke and was rebuilt by `sync-tracking`).

Screenshots are saved as test artifacts under `$MATLOOP_TEST_ARTIFACTS/browser/` (default `test-artifacts/browser/`
in the checkout). Without chromium the tests skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from headless_chromium import Chromium, chromium_or_skip
from tracked_smoke import ROOT, SMOKE_NAME, free_port, stop_process, tracked_smoke, wait_for_health

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("MATLOOP_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "browser"
EXPANDER = 'button[data-component-id*="runnamecellrenderer"]'
ML_VIEW = "?workflowType=machine_learning"


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Ids of the smoke campaign's experiment, parent run and round runs."""
    from loop.tracking.runs import PARENT_TAG, ROUND_TAG, Tracker, TrackingConfig

    run = tracked_smoke(tmp_path_factory)
    client = Tracker(config=TrackingConfig(), workdir=run.workdir, campaign_name=SMOKE_NAME).client
    experiment = client.get_experiment_by_name(SMOKE_NAME)
    ids = {"workdir": str(run.workdir), "experiment": experiment.experiment_id}
    for r in client.search_runs([experiment.experiment_id]):
        key = f"round{r.data.tags[ROUND_TAG]}" if PARENT_TAG in r.data.tags else "parent"
        ids[key] = r.info.run_id
    return ids


@pytest.fixture(scope="module")
def ui(campaign: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`matloop ui` on a free port of 127.0.0.1, as a user starts it; yields the address it prints."""
    out = tmp_path_factory.mktemp("ui") / "stdout.txt"
    with out.open("w") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loop.cli",
                "ui",
                "--workdir",
                campaign["workdir"],
                "--port",
                str(free_port()),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 120
        while "MLflow UI on " not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()[-2000:]
            time.sleep(0.5)
        address = out.read_text().split("MLflow UI on ", 1)[1].split()[0]
        wait_for_health(address.split("/#", 1)[0], proc)
        yield address
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    chromium = Chromium(executable=chromium_or_skip(), profile=tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield chromium
    finally:
        chromium.close()


def _has(text: str) -> str:
    return f"document.body.innerText.includes({text!r})"


def test_experiment_page_lists_parent_and_round_runs(
    ui: str, campaign: dict[str, str], browser: Chromium
) -> None:
    assert ui.endswith(f"#/experiments/{campaign['experiment']}{ML_VIEW}")
    browser.open(ui, until=f"{_has(SMOKE_NAME)} && document.querySelector({EXPANDER!r})")
    browser.screenshot(ARTIFACTS / "landing.png")
    text = browser.text()
    assert "Runs" in text and "Traces\n0" not in text  # the runs view, not the GenAI overview
    browser.click(EXPANDER)  # the parent run's row opens onto its nested round runs
    browser.wait(_has("round-002"))
    browser.screenshot(ARTIFACTS / "landing_round_runs.png")
    text = browser.text()
    for rnd in (0, 1, 2):
        assert f"round-{rnd:03d}" in text


def test_round_run_page_shows_metrics_and_artifacts(
    ui: str, campaign: dict[str, str], browser: Chromium
) -> None:
    base = ui.split("#", 1)[0]
    run = f"{base}#/experiments/{campaign['experiment']}/runs/{campaign['round1']}"
    browser.open(f"{run}{ML_VIEW}", until=f"{_has('Round 1')} && {_has('Metrics (')}")
    browser.screenshot(ARTIFACTS / "round_run.png")
    text = browser.text()
    assert "Finished" in text and "generated:" in text
    assert "smoke-cu-au-emulator" in text or "smoke-cu-au-generator" in text  # its registered versions
    browser.open(f"{run}/artifacts{ML_VIEW}", until=f"{_has('queried')} && {_has('plots')}")
    text = browser.text()
    for folder in ("checkpoints", "discovered", "plots", "queried"):
        assert folder in text, folder
    browser.screenshot(ARTIFACTS / "round_run_artifacts.png")


def _image_loaded(name: str) -> str:
    """The artifact viewer shows file `name` and has drawn an image (it loads artifacts as blob: URLs)."""
    drawn = "[...document.images].some(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 100)"
    return f"{_has(name)} && {drawn}"


def test_parent_shows_hits_vs_oracle_calls(ui: str, campaign: dict[str, str], browser: Chromium) -> None:
    base = ui.split("#", 1)[0]
    parent = f"{base}#/experiments/{campaign['experiment']}/runs/{campaign['parent']}"
    # The run's status is drawn after its description: wait for both (a loaded machine renders slowly).
    browser.open(
        f"{parent}{ML_VIEW}", until=f"{_has('Campaign')} && {_has('stop rule')} && {_has('Finished')}"
    )
    browser.screenshot(ARTIFACTS / "parent_run.png")
    text = browser.text()
    assert "Finished" in text
    curve = f"{parent}/artifactPath/plots/discoveries_vs_oracle_calls.png{ML_VIEW}"
    browser.open(curve, until=_image_loaded("discoveries_vs_oracle_calls"))
    browser.screenshot(ARTIFACTS / "parent_hits_vs_oracle_calls.png")


def test_registered_model_page_lists_versions(ui: str, browser: Chromium) -> None:
    base = ui.split("#", 1)[0]
    browser.open(f"{base}#/models/{SMOKE_NAME}-emulator{ML_VIEW}", until=_has("Version 3"))
    browser.screenshot(ARTIFACTS / "registered_model.png")
    text = browser.text()
    for version in (1, 2, 3):
        assert f"Version {version}" in text
    assert "champion" in text and "data_hash" in text
