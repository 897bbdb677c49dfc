"""End to end: the smoke campaign (EMT oracle on Cu-Au, 2 rounds) through the real CLI, Dask, CHGNet, MLflow.

One uninterrupted run (the session's smoke campaign, `conftest.smoke_campaign`) is shared by the assertions below; the
crash-and-resume test compares the quick campaign killed and resumed with the same campaign run without a kill.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from loop.campaign import ROUND0_STAGES, ROUND_STAGES
from loop.runtime.checkpoints import CHECKPOINT_KINDS, checkpoint_problem
from loop.store import CampaignStore
from tests.loop.cli_process import matloop
from tests.loop.quick_campaign import write_quick_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(smoke_campaign) -> Path:
    return smoke_campaign


def test_stages_ran_in_order(smoke_run):
    store = CampaignStore.in_workdir(smoke_run)
    done = [(s.round, s.stage) for s in store.stages()]
    expected = [(0, s) for s in ROUND0_STAGES] + [(r, s) for r in (1, 2) for s in ROUND_STAGES]
    assert done == expected
    rounds = store.rounds()
    assert [r.round for r in rounds] == [0, 1, 2] and all(r.status == "done" for r in rounds)
    counts = store.counts()
    assert counts["generated"] > 0 and counts["screened"] > 0
    # round 0 labels the references, rounds 1-2 at most the budget each; every query has one result. EMT never
    # fails a calculation on Cu-Au, but a reference cell it blows apart (a 1-atom Cu seed expanded past the funnel's
    # volume limit) is stored as a failed label, not as an energy.
    queries = store.queries_by_round()
    assert counts["labelled"] + counts["failed"] == sum(map(len, queries.values()))
    failed = [r for r in store.oracle_results() if not r.ok]
    assert all(r.round == 0 and "expanded the cell" in (r.reason or "") for r in failed)
    assert all(len(queries[r]) <= 3 for r in (1, 2))


def test_mlflow_has_parent_and_nested_round_runs(smoke_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_run / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke-cu-au")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["oracle.kind"] == "emt" and "version.chgnet" in parent.data.params
    nested = {int(r.data.tags["round_index"]): r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert set(nested) == {0, 1, 2}
    for rnd in (1, 2):
        metrics = nested[rnd].data.metrics
        # the round's science under the parent's names, each stage's own report grouped apart
        for key in (
            "discoveries",
            "oracle_calls",
            "screening_mae_eV_per_atom",
            "stage/generate.n_generated",
            "stage/funnel.n_passed",
            "stage/label.n_ok",
            "stage/update.hit_rate",
            "time/screen_s",
            "stage/acquire.n_queries",
            "stage/assess.n_assessed",
        ):
            assert key in metrics, key
        assert any(k.startswith("stage/funnel.report.removed.") for k in metrics)
        paths = _artifact_paths(client, nested[rnd].info.run_id)
        assert any(p.startswith("queried/") and p.endswith(".cif") for p in paths)
        assert any(p.startswith("plots/hull_") for p in paths)
        assert any(p.startswith("plots/parity_") for p in paths)
        assert any(p.startswith("plots/yield_") for p in paths)
        assert any(p.startswith("checkpoints/emulator/") for p in paths)
    # the parent: reference labels at round 0, oracle calls of the discovery rounds, no stage internals
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "reference_labels")] == [0]
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "oracle_calls")) == [1, 2]
    assert not any(k.startswith(("stage/", "time/")) for k in parent.data.metrics)


def _artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return out


def _digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def test_checkpoints_change_between_rounds(smoke_run):
    """Every round writes a new emulator; every round with discoveries fine-tunes the generator, and its checkpoint
    is kept exactly when the breadth check deployed it (a fine-tune that narrows the proposals is refused, its
    file removed, and the campaign samples from the checkpoint it had)."""
    ck = smoke_run / "checkpoints"
    emulators = [_digest(ck / f"round_{r:03d}" / "emulator") for r in (0, 1, 2)]
    assert len(set(emulators)) == 3
    store = CampaignStore.in_workdir(smoke_run)
    kept = []
    for r in (1, 2):
        result = store.stage_result(r, "retrain")
        assert result["generator_n_discoveries"] > 0 and result["generator_steps"] > 0
        path = ck / f"round_{r:03d}" / "generator.pt"
        assert path.is_file() == result["generator_deployed"], result["generator_reason"]
        if result["generator_deployed"]:
            kept.append(_digest(path))
        else:
            assert "narrower" in result["generator_reason"]
    assert len(set(kept)) == len(kept)


def test_old_checkpoints_leave_the_workdir_once_mlflow_holds_them(smoke_run, tmp_path):
    """The smoke campaign continued for a third round with `checkpoints.keep_rounds: 1`: only the newest round's
    folder and the ones holding a checkpoint in use stay, and every deleted checkpoint can be fetched back from its
    MLflow model version with the bytes the retrain stage recorded."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from loop.tracking.campaign import model_names

    workdir = tmp_path / "campaign"
    shutil.copytree(smoke_run, workdir)
    config = yaml.safe_load(SMOKE.read_text())
    config["stop"]["max_rounds"] = 3
    config["checkpoints"] = {"keep_rounds": 1}
    path = tmp_path / "smoke-3-rounds.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = matloop("run", path, "--workdir", workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]

    store = CampaignStore.in_workdir(workdir)
    in_use = [store.get_meta(f"{kind}_checkpoint") for kind in CHECKPOINT_KINDS]
    saved = {
        (s.round, kind): (Path(s.result[f"{kind}_checkpoint"]).name, s.result["checkpoint_sha256"][kind])
        for s in store.stages()
        if s.stage == "retrain"
        for kind in CHECKPOINT_KINDS
        if s.result.get(f"{kind}_checkpoint")
    }
    store.close()
    protected = {Path(p).parts[1] for p in in_use if p}
    left = {p.name for p in (workdir / "checkpoints").iterdir()}
    assert left == {"round_003"} | protected
    deleted = [r for r in range(4) if f"round_{r:03d}" not in left]
    assert deleted  # 4 rounds, 1 kept, at most 2 in use
    assert "deleted from the workdir" in proc.stderr
    for p in in_use:
        if p:
            assert (workdir / p).exists()

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    by_checkpoint = {
        v.tags["checkpoint"]: v
        for name in model_names(config["name"]).values()
        for v in client.search_model_versions(f"name='{name}'")
    }
    checked = 0
    for (rnd, kind), (name, sha) in saved.items():
        if rnd not in deleted:
            continue
        rel = f"checkpoints/round_{rnd:03d}/{name}"
        version = by_checkpoint[rel]
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=version.run_id,
                artifact_path=f"checkpoints/{kind}",
                dst_path=str(tmp_path / "fetched" / f"{rnd}-{kind}"),
                tracking_uri=client.tracking_uri,
            )
        )
        fetched = local if kind == "emulator" else local / name
        assert checkpoint_problem(kind, fetched, sha) is None, (rnd, kind)
        checked += 1
    assert checked >= 1


def test_exported_discoveries_are_on_the_oracle_hull(smoke_run, tmp_path):
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    out = tmp_path / "export"
    proc = matloop("export", "--workdir", smoke_run, "--hits", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert rows, "the smoke campaign should find at least one near-stable structure"
    assert json.loads(proc.stdout)["n"] == len(rows)
    # Rebuild the hull independently from the stored oracle energies.
    store = CampaignStore.in_workdir(smoke_run)
    results = store.oracle_results(ok_only=True)
    structures = store.get_structures([r.hash for r in results])
    entries = [PDEntry(structures[r.hash].composition, r.energy, name=r.hash) for r in results]
    pd = PhaseDiagram(entries)
    by_name = {e.name: e for e in entries}
    for row in rows:
        e_hull = pd.get_e_above_hull(by_name[row["hash"]])
        assert abs(e_hull - float(row["e_hull"])) < 1e-6
        assert e_hull <= 0.1 + 1e-6  # the smoke config's near-stable threshold
        if row["stable"] == "1":
            assert e_hull < 1e-6
        assert (out / f"{row['formula']}_{row['hash']}.cif").is_file()


def test_status_json_during_and_after(smoke_run):
    proc = matloop("status", "--workdir", smoke_run, "--json")
    info = json.loads(proc.stdout)
    assert info["stage"] == "done" and info["round"] == 2
    assert [r["round"] for r in info["rounds"]] == [0, 1, 2]
    assert info["counts"]["labelled"] > 0


def _snapshot(workdir: Path) -> dict[str, object]:
    """Everything that defines a campaign's outcome, without timings."""
    store = CampaignStore.in_workdir(workdir)
    rnd6 = lambda x: None if x is None else round(x, 6)  # noqa: E731
    return {
        "structures": sorted((r.hash, r.source, r.round) for r in store.structure_rows()),
        "candidates": sorted((rnd, c.hash, c.passed) for rnd in (1, 2) for c in store.candidates(rnd)),
        "predictions": sorted(
            (rnd, p.hash, p.relaxed_hash, rnd6(p.energy_per_atom))
            for rnd, preds in store.predictions_by_round().items()
            for p in preds
        ),
        "queries": [(rnd, q.hash, q.rank) for rnd, qs in store.queries_by_round().items() for q in qs],
        "oracle": sorted((r.hash, r.status, rnd6(r.energy)) for r in store.oracle_results()),
        "stability": sorted((v.hash, rnd6(v.e_hull)) for v in store.stability()),
    }


def _oracle_calls(workdir: Path) -> dict[str, tuple[int, int]]:
    """(completed, interrupted) oracle calculations per structure, from each work dir's append-only call log."""
    out = {}
    for log in (workdir / "oracle").glob("*/calls.jsonl"):
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        finished = sum(1 for e in events if e["event"] == "finished")
        started = sum(1 for e in events if e["event"] == "started")
        out[log.parent.name] = (finished, started - finished)
    return out


def test_kill_inside_label_stage_then_resume(tmp_path):
    """The quick campaign on a Dask cluster of two workers, killed after round 1's first label and resumed, ends as
    the same campaign run without a kill (which runs beside it: 2 cores)."""
    config = write_quick_config(
        tmp_path / "quick.yaml",
        name="label-kill-cu-au",
        rounds=2,
        execution={"kind": "local", "n_workers": 2},
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        uninterrupted = pool.submit(matloop, "run", config, "--workdir", tmp_path / "reference")
        _kill_inside_label_then_resume(config, tmp_path / "campaign")
        reference = uninterrupted.result()
    assert reference.returncode == 0, reference.stderr[-3000:]
    resumed_state, expected = _snapshot(tmp_path / "campaign"), _snapshot(tmp_path / "reference")
    for key in expected:
        assert resumed_state[key] == expected[key], key


def _kill_inside_label_then_resume(config: Path, workdir: Path) -> None:
    crashed = matloop("run", config, "--workdir", workdir, env={"MATLOOP_CRASH_AFTER": "label:1:1"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    store = CampaignStore.in_workdir(workdir)
    assert store.stage_done(1, "acquire") and not store.stage_done(1, "label")
    assert 1 <= len([r for r in store.oracle_results() if r.round == 1]) < len(store.round_queries(1))
    store.close()

    resumed = matloop("run", config, "--workdir", workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    calls = _oracle_calls(workdir)
    queried = {q.hash for qs in CampaignStore.in_workdir(workdir).queries_by_round().values() for q in qs}
    assert set(calls) == queried
    # Every label was completed exactly once over both processes; only a calculation that was still running when
    # the process was killed (at most one per worker) had to start again.
    assert all(done == 1 for done, _ in calls.values()), calls
    assert sum(interrupted for _, interrupted in calls.values()) <= 2, calls
