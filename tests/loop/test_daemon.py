"""The daemon stops cleanly on SIGTERM and on `matloop stop`, after its current step, and resumes where it stopped;
each stop rule (`max_rounds`, `max_oracle_calls`, `max_hours`, `patience`) stops exactly where it should."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from loop.campaign import LOCK_FILE, ROUND0_STAGES, ROUND_STAGES, STOP_FILE, Campaign, request_stop
from loop.config import load_config
from loop.runtime.labelling import label_hashes
from loop.store import CampaignStore, Prediction, Query
from loop.work.acquisition import acquire
from tests.loop.quick_campaign import write_quick_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
ORDER = [(0, s) for s in ROUND0_STAGES] + [(r, s) for r in (1, 2) for s in ROUND_STAGES]


def _start_daemon(config: Path, workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loop.cli", "daemon", str(config), "--workdir", str(workdir)],
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
        return [(s.round, s.stage) for s in store.stages()]
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


@pytest.mark.slow
def test_sigterm_then_stop_command_then_resume(tmp_path):
    # Signals and the stop file are what is tested: the quick campaign, on a real Dask cluster of two workers.
    config = write_quick_config(
        tmp_path / "quick.yaml", name="daemon-cu-au", rounds=2, execution={"kind": "local", "n_workers": 2}
    )
    workdir = tmp_path / "campaign"
    daemon = _start_daemon(config, workdir)
    _wait_for(workdir, (0, "references"), daemon)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=600) == 0, daemon.stderr.read()
    first = _done(workdir)
    # It finished the step it was in, recorded it, and started nothing after it.
    assert first == ORDER[: len(first)] and len(first) < len(ORDER)

    daemon = _start_daemon(config, workdir)
    _wait_for(workdir, ORDER[len(first)], daemon)
    stop = subprocess.run(
        [sys.executable, "-m", "loop.cli", "stop", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    assert daemon.wait(timeout=600) == 0, daemon.stderr.read()
    # The honoured request is gone: it cannot stop the next run.
    assert not (workdir / STOP_FILE).exists()
    second = _done(workdir)
    assert second == ORDER[: len(second)] and len(first) < len(second) < len(ORDER)

    # A second process on the same workdir while one runs is refused, not raced.
    daemon = _start_daemon(config, workdir)
    _wait_for(workdir, ORDER[len(second)], daemon)
    clash = subprocess.run(
        [sys.executable, "-m", "loop.cli", "run", str(config), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert clash.returncode == 2 and "another matloop process" in clash.stderr
    assert daemon.wait(timeout=1200) == 0, daemon.stderr.read()
    assert _done(workdir) == ORDER


# -- stop rules, on a real campaign store with real EMT labels ---------------------------------------------------------
def _cu_au(a: float, *, gold: tuple[int, ...]) -> Structure:
    """A 4-atom fcc-based Cu-Au cell with gold on the sites `gold` (lattice parameter `a`, Å)."""
    sites = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), ["Au" if i in gold else "Cu" for i in range(4)], sites)


STRUCTURES = [
    _cu_au(3.61, gold=()),
    _cu_au(4.08, gold=(0, 1, 2, 3)),
    _cu_au(3.75, gold=(0,)),
    _cu_au(3.85, gold=(0, 1)),
    _cu_au(3.97, gold=(0, 1, 2)),
]


def _campaign(tmp_path: Path, **stop: object) -> Campaign:
    config = load_config(SMOKE, overrides={"stop": {"max_rounds": 10, **stop}})
    campaign = Campaign(config, tmp_path / "campaign")
    campaign.store = CampaignStore.in_workdir(campaign.workdir)
    campaign.store.set_meta("started_at", time.time())
    return campaign


def _label(campaign: Campaign, structures: list[Structure], *, round: int) -> list[str]:
    """Label structures with the campaign's (EMT) oracle, as the label stage does."""
    assert campaign.store is not None
    hashes = [campaign.store.add_structure(s, source="user", round=round) for s in structures]
    results = label_hashes(
        campaign.store, hashes, settings=campaign.config.oracle, workdir=campaign.workdir, round=round
    )
    assert all(r.ok for r in results.values())
    return hashes


def _finish_round(campaign: Campaign, rnd: int, *, new_discoveries: int) -> None:
    assert campaign.store is not None
    campaign.store.start_round(rnd)
    campaign.store.finish_round(rnd, {"new_discoveries": new_discoveries})


def test_max_rounds_stops_before_the_next_round(tmp_path):
    campaign = _campaign(tmp_path)
    campaign.max_rounds = 2
    assert campaign._should_stop_campaign(2) is None
    assert campaign._should_stop_campaign(3) == "reached 2 rounds"


def test_max_oracle_calls_caps_the_batch_then_stops(tmp_path):
    campaign = _campaign(tmp_path, max_oracle_calls=2)
    assert campaign.store is not None
    references = _label(campaign, STRUCTURES[:2], round=0)
    # Round 0's reference labels are not oracle calls (`loop.views.oracle_calls`): the whole limit is left for round 1.
    campaign.store.add_queries(
        0, [Query(hash=h, strategy="references", rank=i, score=None) for i, h in enumerate(references)]
    )
    # Round 1 offers three candidates; the budget (3) would overshoot the limit by one.
    relaxed = [campaign.store.add_structure(s, source="relaxed", round=1) for s in STRUCTURES[2:]]
    campaign.store.add_predictions(
        1,
        [
            Prediction(
                hash=h,
                relaxed_hash=h,
                model="pretrained",
                energy_per_atom=-0.1,
                energy_per_atom_std=0.02,
                e_hull=e_hull,
                e_hull_std=0.03,
                data={},
            )
            for h, e_hull in zip(relaxed, (0.01, -0.02, 0.05), strict=True)
        ],
    )
    assert campaign.config.acquisition.budget == 3
    result = acquire(campaign.config, store=campaign.store, round=1)
    picks, report = result.queries, result.report
    assert len(picks) == 2 and report["budget"] == 2 and report["budget_capped"]
    assert campaign._should_stop_campaign(2) is None  # 2 calls left: the next round may still run
    campaign.store.add_queries(1, picks)
    _label(campaign, [campaign.store.get_structure(q.hash) for q in picks], round=1)
    assert len(campaign.store.oracle_results()) == 4
    assert campaign._should_stop_campaign(2) == (
        "made 2 oracle calls, stop.max_oracle_calls is 2 (round 0's 2 reference labels are not calls)"
    )
    # Had a round started anyway (a resumed round is always finished), it would query nothing.
    result = acquire(campaign.config, store=campaign.store, round=1)
    assert result.queries == [] and result.report["budget"] == 0


def test_max_hours_counts_from_the_campaign_start(tmp_path):
    campaign = _campaign(tmp_path, max_hours=2.0)
    assert campaign.store is not None
    campaign.store.set_meta("started_at", time.time() - 1.99 * 3600)
    assert campaign._should_stop_campaign(1) is None
    campaign.store.set_meta("started_at", time.time() - 2.0 * 3600)
    assert campaign._should_stop_campaign(1).startswith("ran 2.00 h (max 2.0)")


def test_patience_stops_after_that_many_rounds_without_a_discovery(tmp_path):
    campaign = _campaign(tmp_path, patience=2)
    _finish_round(campaign, 0, new_discoveries=0)  # round 0 labels references: never counted
    _finish_round(campaign, 1, new_discoveries=1)
    assert campaign._should_stop_campaign(2) is None
    _finish_round(campaign, 2, new_discoveries=0)
    assert campaign._should_stop_campaign(3) is None  # round 1 found something
    _finish_round(campaign, 3, new_discoveries=0)
    assert campaign._should_stop_campaign(4) == "no new discoveries in 2 rounds"


def test_stop_request_is_written_only_while_a_campaign_runs(tmp_path):
    import fcntl

    workdir = tmp_path / "campaign"
    CampaignStore.in_workdir(workdir).close()
    assert "nothing to stop" in request_stop(workdir)
    assert not (workdir / STOP_FILE).exists()
    # A running campaign holds the lock (as `Campaign.run` does): now the request is left for it.
    with (workdir / LOCK_FILE).open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert "stop requested" in request_stop(workdir)
    assert (workdir / STOP_FILE).exists()


def test_a_stop_during_labelling_stores_the_calculation_under_way_and_starts_no_other(tmp_path):
    """SIGTERM or `matloop stop` while the label stage runs: the calculation under way finishes and is stored, no
    other starts, and the resumed stage labels only the rest (real EMT labels, this process)."""
    from dataclasses import replace

    from loop.runtime.control import StopRequested
    from loop.stages.base import StageContext
    from loop.stages.label import STAGE as LABEL

    campaign = _campaign(tmp_path)
    store = campaign.store
    assert store is not None
    hashes = [store.add_structure(s, source="relaxed", round=1) for s in STRUCTURES[:3]]
    store.add_queries(1, [Query(hash=h, strategy="test", rank=i, score=None) for i, h in enumerate(hashes)])
    ctx = StageContext(
        config=campaign.config,
        store=store,
        workdir=campaign.workdir,
        round=1,
        should_stop=lambda: True,  # the request arrived while the first calculation ran
    )
    with pytest.raises(StopRequested):
        LABEL.compute(ctx)
    first = store.oracle_results()
    assert len(first) == 1 and first[0].ok

    labels = LABEL.compute(replace(ctx, should_stop=lambda: False))
    assert sorted(labels.results) == sorted(hashes) and all(r.ok for r in labels.results.values())
    assert len(store.oracle_results()) == 3
    kept = store.get_oracle_result(first[0].hash, campaign.config.oracle.settings_hash())
    assert kept is not None and kept.wall_time == first[0].wall_time  # stored once, not computed again
