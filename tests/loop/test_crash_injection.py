"""SIGKILL inside every stage, then rerun: the campaign ends exactly as an uninterrupted one.

One tiny EMT campaign (Cu-Au, round 0 and one round, real CHGNet, MLflow and campaign store, inline execution) is
run once without faults: the reference. A second campaign is then killed at each crash point in turn, in stage
order, and rerun after each kill (`MATLOOP_CRASH_AFTER`, see `loop.runtime.faults`): inside the closing transaction of
every stage, after single oracle results, while the emulator checkpoint is half written and while MLflow artifacts
are being logged. Each test below is one kill; the last one finishes the campaign and compares it with the reference.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from loop.campaign import ROUND0_STAGES, ROUND_STAGES
from loop.store import CampaignStore
from tests.loop import cli_process
from tests.loop.cli_process import cli_env
from tests.loop.quick_campaign import quick_config

ORDER = [(0, s) for s in ROUND0_STAGES] + [(1, s) for s in ROUND_STAGES]
# Round 0's references are not oracle calls (`loop.views.oracle_calls`): round 1 gets 2 calls of its budget of 3.
MAX_ORACLE_CALLS = 2

pytestmark = pytest.mark.slow

# In campaign order. `commit`: inside the stage's closing transaction; `<n>`: after the n-th oracle result;
# `write<n>`: as the stage opens its n-th file for writing (checkpoint files, MLflow artifacts).
CRASH_POINTS = (
    "references:0:commit",
    "label:0:2",
    "update:0:commit",
    "track:0:commit",
    "generate:1:commit",
    "funnel:1:commit",
    "screen:1:commit",
    "acquire:1:commit",
    "label:1:1",
    "update:1:commit",
    "retrain:1:write3",
    "assess:1:commit",
    "track:1:write3",
)


def test_every_stage_is_killed_at_least_once():
    assert {p.split(":")[0] for p in CRASH_POINTS} == {*ROUND0_STAGES, *ROUND_STAGES}
    assert [ORDER.index((int(p.split(":")[1]), p.split(":")[0])) for p in CRASH_POINTS] == sorted(
        ORDER.index((int(p.split(":")[1]), p.split(":")[0])) for p in CRASH_POINTS
    )


def tiny_config(path: Path) -> Path:
    """The quick config (no diffusion model: the e2e test covers it), one round and an oracle-call limit."""
    data = quick_config(name="crash-cu-au", rounds=1)
    data["stop"]["max_oracle_calls"] = MAX_ORACLE_CALLS
    path.write_text(yaml.safe_dump(data))
    return path


# Only the run a test kills gets a crash point: none left in the environment by an outer run.
NO_CRASH = {"MATLOOP_CRASH_AFTER": None}
matloop = partial(cli_process.matloop, env=NO_CRASH)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return tiny_config(tmp_path_factory.mktemp("config") / "crash.yaml")


@pytest.fixture(scope="module")
def reference_run(config, tmp_path_factory) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """The uninterrupted campaign, started at once so that it runs beside the crashed one (2 cores in CI)."""
    workdir = tmp_path_factory.mktemp("reference") / "campaign"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loop.cli", "run", str(config), "--workdir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(NO_CRASH),
    )
    yield workdir, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def reference(reference_run) -> Path:
    workdir, proc = reference_run
    _, stderr = proc.communicate(timeout=3600)
    assert proc.returncode == 0, stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """The campaign that is killed at every crash point in turn."""
    return tmp_path_factory.mktemp("crashed") / "campaign"


def done_stages(workdir: Path) -> list[tuple[int, str]]:
    if not CampaignStore.exists_in(workdir):
        return []
    store = CampaignStore.in_workdir(workdir)
    try:
        return [(s.round, s.stage) for s in store.stages()]
    finally:
        store.close()


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_inside_stage_leaves_it_unrecorded(config, reference_run, crashed, point):
    stage, rnd, where = point.split(":")
    proc = matloop("run", config, "--workdir", crashed, env={"MATLOOP_CRASH_AFTER": point})
    assert proc.returncode == -signal.SIGKILL, f"{point} was never reached: {proc.stderr[-2000:]}"
    done = done_stages(crashed)
    # Stages are recorded in order and the killed one is not: its partial writes were rolled back.
    assert done == ORDER[: len(done)]
    assert ORDER[len(done)] == (int(rnd), stage)
    store = CampaignStore.in_workdir(crashed)
    try:
        if stage == "label":
            assert len([r for r in store.oracle_results() if r.round == int(rnd)]) == int(where)
        if stage == "generate":
            assert not store.generated(int(rnd))
        if stage in ("generate", "funnel"):
            assert not store.candidates(int(rnd))
        if stage == "screen":
            assert not store.round_predictions(int(rnd))
        if stage == "acquire":
            assert not store.round_queries(int(rnd))
        if stage == "update":
            assert not store.stability(int(rnd))
        if stage == "retrain" and where.startswith("write"):
            # Killed while the checkpoint was being written: it has no manifest yet, and the store still points
            # at the previous checkpoint.
            assert not (
                crashed / "checkpoints" / f"round_{int(rnd):03d}" / "emulator" / "manifest.json"
            ).exists()
            assert store.get_meta("emulator_checkpoint") in (
                None,
                f"checkpoints/round_{int(rnd) - 1:03d}/emulator",
            )
    finally:
        store.close()


def snapshot(workdir: Path) -> dict[str, object]:
    """Everything that defines a campaign's outcome, without timings."""
    store = CampaignStore.in_workdir(workdir)
    rnd6 = lambda x: None if x is None else round(x, 6)  # noqa: E731
    try:
        return {
            "stages": [(s.round, s.stage) for s in store.stages()],
            "structures": sorted((r.hash, r.source, r.round) for r in store.structure_rows()),
            "candidates": sorted((c.hash, c.passed, c.reason) for c in store.candidates(1)),
            "predictions": sorted(
                (rnd, p.hash, p.relaxed_hash, rnd6(p.energy_per_atom), rnd6(p.e_hull))
                for rnd, preds in store.predictions_by_round().items()
                for p in preds
            ),
            "queries": [(rnd, q.hash, q.rank) for rnd, qs in store.queries_by_round().items() for q in qs],
            "oracle": sorted((r.hash, r.status, rnd6(r.energy)) for r in store.oracle_results()),
            "stability": sorted((v.hash, rnd6(v.e_hull)) for v in store.stability()),
            "stopped_because": store.get_meta("stopped_because"),
        }
    finally:
        store.close()


def oracle_calls(workdir: Path) -> dict[str, tuple[int, int]]:
    """(completed, started) oracle calculations per structure, from each work dir's append-only call log."""
    out = {}
    for log in (workdir / "oracle").glob("*/calls.jsonl"):
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        out[log.parent.name] = (
            sum(1 for e in events if e["event"] == "finished"),
            sum(1 for e in events if e["event"] == "started"),
        )
    return out


def mlflow_runs(workdir: Path) -> tuple[list[object], dict[int, list[object]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crash-cu-au")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested: dict[int, list[object]] = {}
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags:
            nested.setdefault(int(r.data.tags["round_index"]), []).append(r)
    return parents, nested


def test_rerun_after_every_crash_equals_the_uninterrupted_campaign(config, reference, crashed):
    proc = matloop("run", config, "--workdir", crashed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = snapshot(crashed), snapshot(reference)
    for key in theirs:
        assert ours[key] == theirs[key], key
    assert theirs["stages"] == ORDER

    # The stop rule's oracle budget is spent exactly: the acquire stage capped the last batch.
    store = CampaignStore.in_workdir(crashed)
    assert len(store.oracle_results()) == len(store.round_queries(0)) + MAX_ORACLE_CALLS
    assert store.stage_result(1, "acquire")["budget"] == MAX_ORACLE_CALLS == len(store.round_queries(1))
    queried = {q.hash for qs in store.queries_by_round().values() for q in qs}
    store.close()

    # No oracle call lost or repeated: every queried structure finished exactly once over all the processes (a
    # kill inside the label stage came after a commit, so no calculation was in flight).
    calls = oracle_calls(crashed)
    assert set(calls) == queried
    assert all(c == (1, 1) for c in calls.values()), calls

    # One parent run and exactly one nested run per round, however often tracking was killed mid-way.
    parents, nested = mlflow_runs(crashed)
    assert len(parents) == 1
    assert sorted(nested) == [0, 1] and all(len(runs) == 1 for runs in nested.values()), nested
    for runs in nested.values():
        assert "stage/label.n_ok" in runs[0].data.metrics


def test_corrupt_checkpoint_falls_back_to_the_previous_good_one(config, crashed):
    """After the comparison above: a truncated newest emulator checkpoint is caught by its manifest hash before
    anything runs, and the campaign goes on from the previous round's."""
    trunk = crashed / "checkpoints" / "round_001" / "emulator" / "trunk.pt"
    trunk.write_bytes(trunk.read_bytes()[:1000])
    proc = matloop("run", config, "--workdir", crashed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "corrupt" in line]
    assert warnings == [
        "[matloop] emulator checkpoint checkpoints/round_001/emulator is corrupt (trunk.pt does not match the hash"
        " in manifest.json): falling back to checkpoints/round_000/emulator"
    ]
    store = CampaignStore.in_workdir(crashed)
    assert store.get_meta("emulator_checkpoint") == "checkpoints/round_000/emulator"
    assert [f["corrupt"] for f in store.get_meta("checkpoint_fallbacks")] == [
        "checkpoints/round_001/emulator"
    ]
    store.close()


def _file_size_limit(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_stops_cleanly_then_resumes(config, tmp_path):
    """A file-size quota below the size of an emulator checkpoint: round 0 cannot save its retrained emulator."""
    workdir = tmp_path / "campaign"
    full = subprocess.run(
        [
            sys.executable,
            "-m",
            "loop.cli",
            "run",
            str(config),
            "--workdir",
            str(workdir),
            "--rounds",
            "0",
        ],
        capture_output=True,
        text=True,
        env=cli_env(NO_CRASH),
        timeout=1800,
        preexec_fn=_file_size_limit(1 << 20),
    )
    assert full.returncode == 3, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if not line.startswith("[matloop]")]
    assert len(errors) == 1 and errors[0].startswith("matloop: stopped: disk full: "), full.stderr[-3000:]
    assert "rerun to resume" in errors[0]
    assert "campaign stopped: disk full: " in (workdir / "logs" / "campaign.log").read_text()
    done = done_stages(workdir)
    assert done == ORDER[: len(done)] and len(done) < len(ROUND0_STAGES)
    # Nothing half-written is left or in use: no temporary file, no stored checkpoint path that does not verify.
    assert not list(workdir.rglob("*.tmp"))
    store = CampaignStore.in_workdir(workdir)
    assert store.get_meta("emulator_checkpoint") is None
    store.close()

    resumed = matloop("run", config, "--workdir", workdir, "--rounds", "0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert done_stages(workdir) == ORDER[: len(ROUND0_STAGES)]
    store = CampaignStore.in_workdir(workdir)
    references = {q.hash for q in store.round_queries(0)}
    # Every reference has its result; one a relaxation blew apart (a 1-atom Cu seed EMT expands past the funnel's
    # volume limit) is stored as a failed label with that reason, not as an energy.
    results = store.oracle_results()
    assert {r.hash for r in results} == references
    assert all(r.ok or "expanded the cell" in (r.reason or "") for r in results)
    assert store.get_meta("emulator_checkpoint") == "checkpoints/round_000/emulator"
    store.close()
    calls = oracle_calls(workdir)
    assert set(calls) == references and all(c == (1, 1) for c in calls.values()), calls

    # The round-0 checkpoint is the only one: corrupt, it cannot be replaced, so the campaign stops before any
    # round-1 work and names the fix.
    trunk = workdir / "checkpoints" / "round_000" / "emulator" / "trunk.pt"
    good = trunk.read_bytes()
    trunk.write_bytes(good[: len(good) // 2])
    halted = matloop("run", config, "--workdir", workdir)
    assert halted.returncode == 3
    errors = [line for line in halted.stderr.splitlines() if not line.startswith("[matloop]")]
    assert len(errors) == 1 and "checkpoints/round_000/emulator is corrupt" in errors[0], halted.stderr
    assert "restore it from a backup" in errors[0]
    assert done_stages(workdir) == ORDER[: len(ROUND0_STAGES)]
