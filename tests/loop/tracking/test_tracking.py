from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure
from pymatgen.core import Structure
from tracked_smoke import free_port, wait_for_health

from loop.errors import InputError
from loop.tracking.runs import (
    CHAMPION,
    END_REASON_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    PARENT_TAG,
    ROUND_TAG,
    Tracker,
    TrackingConfig,
    TrackingError,
    TrackingUnavailable,
    flatten,
    local_store,
    ui_command,
)

MP20_VAL = Path(__file__).resolve().parents[3] / "generator" / "data" / "mp_20" / "val.csv.gz"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("campaign")


@pytest.fixture(scope="module")
def tracker(workdir: Path) -> Tracker:
    """One local sqlite store for the module: creating it is the slow part."""
    t = Tracker(config=TrackingConfig(), workdir=workdir, campaign_name="li-o-demo")
    t.start_campaign()
    return t


@pytest.fixture(scope="module")
def structures() -> dict[str, Structure]:
    df = pd.read_csv(MP20_VAL).head(3)
    return {r.material_id: Structure.from_str(r.cif, fmt="cif") for r in df.itertuples()}


def test_local_store_lives_in_workdir(tracker: Tracker, workdir: Path) -> None:
    assert (workdir / "mlflow" / "mlflow.db").is_file()
    assert tracker.tracking_uri == local_store(workdir)[0]
    assert tracker.tracking_uri.startswith("sqlite:///") and tracker.tracking_uri.endswith("mlflow/mlflow.db")
    artifact_uri = tracker.artifact_uri()
    assert artifact_uri.startswith((workdir / "mlflow" / "artifacts").resolve().as_uri())
    assert tracker.client.get_experiment(tracker.experiment_id).name == "li-o-demo"


def test_params_metrics_and_nested_rounds(tracker: Tracker) -> None:
    tracker.log_params(
        {"acquisition": {"strategy": "p_stable", "budget": 8}, "seed": 0, "emulator.version": "0.3.0"}
    )
    run_ids = {}
    for k in range(3):
        run_ids[k] = tracker.start_round(round_index=k)
        tracker.log_metrics({"hit_rate": 0.1 * (k + 1), "counts": {"queried": 8, "stable": k}}, step=k)
        tracker.log_metrics({"mae_meV": 30.0 - k}, step=k, run_id=run_ids[k])
        tracker.end_run(run_id=run_ids[k])
    client = tracker.client
    parent = client.get_run(tracker.parent_run_id)
    assert parent.data.params["acquisition.strategy"] == "p_stable"
    assert parent.data.params["acquisition.budget"] == "8"
    history = client.get_metric_history(tracker.parent_run_id, "hit_rate")
    assert [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.1),
        (1, 0.2),
        (2, 0.3),
    ]
    assert [m.value for m in client.get_metric_history(tracker.parent_run_id, "counts.stable")] == [0, 1, 2]
    for k, rid in run_ids.items():
        child = client.get_run(rid)
        assert child.data.tags[PARENT_TAG] == tracker.parent_run_id
        assert child.data.tags[ROUND_TAG] == str(k)
        assert child.info.status == "FINISHED"
        assert child.data.metrics["mae_meV"] == 30.0 - k
    assert tracker.round_run_ids() == run_ids


def test_artifacts_files_dirs_structures_figures(tracker: Tracker, tmp_path: Path, structures: dict) -> None:
    rid = tracker.start_round(round_index=5)
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "member_0.json").write_text(json.dumps({"epoch": 1}))
    (ckpt / "member_1.json").write_text(json.dumps({"epoch": 2}))
    summary = tmp_path / "summary.csv"
    summary.write_text("id,e_hull\na,0.01\n")
    tracker.log_artifact(summary, run_id=rid)
    tracker.log_artifacts(ckpt, artifact_path="checkpoints/round_005", run_id=rid)
    names = tracker.log_structures(structures, artifact_path="queried", run_id=rid)
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    tracker.log_figure(fig, artifact_file="plots/parity.png", run_id=rid)

    client = tracker.client
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"summary.csv", "checkpoints", "queried", "plots"} <= top
    assert {a.path for a in client.list_artifacts(rid, "checkpoints/round_005")} == {
        "checkpoints/round_005/member_0.json",
        "checkpoints/round_005/member_1.json",
    }
    assert sorted(names) == sorted(f"{k}.cif" for k in structures)
    local = Path(client.download_artifacts(rid, "queried", str(tmp_path / "dl")))
    for material_id, structure in structures.items():
        back = Structure.from_file(local / f"{material_id}.cif")
        assert back.composition.reduced_formula == structure.composition.reduced_formula
        assert len(back) == len(structure)
    png = Path(client.download_artifacts(rid, "plots/parity.png", str(tmp_path / "dl2")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TrackingError, match="not a file"):
        tracker.log_artifact(tmp_path / "missing.txt", run_id=rid)


def test_resume_continues_the_same_runs(tracker: Tracker, workdir: Path) -> None:
    r1 = tracker.start_round(round_index=1)  # already exists: same id, back to RUNNING
    assert r1 == tracker.round_run_ids()[1]
    assert tracker.run_status(run_id=r1) == "RUNNING"
    tracker.end_run(run_id=r1, status="KILLED")

    # A new process (after a kill) that lost nothing but the workdir: finds the same parent by its tags.
    again = Tracker(config=TrackingConfig(), workdir=workdir, campaign_name="li-o-demo")
    assert again.start_campaign() == tracker.parent_run_id
    # A new process that stored the id: passes it back.
    stored = Tracker(config=TrackingConfig(), workdir=workdir, campaign_name="li-o-demo")
    assert stored.start_campaign(run_id=tracker.parent_run_id) == tracker.parent_run_id
    assert stored.start_round(round_index=1) == r1
    assert stored.start_round(round_index=1, run_id=r1) == r1
    assert stored.run_status(run_id=r1) == "RUNNING"
    stored.log_metrics({"hit_rate": 0.5}, step=3)
    parents = stored.client.search_runs(
        [stored.experiment_id], filter_string="tags.`matloop.role` = 'campaign'"
    )
    assert [r.info.run_id for r in parents] == [tracker.parent_run_id]  # no duplicate parent run
    assert len(stored.client.get_metric_history(tracker.parent_run_id, "hit_rate")) == 4

    # Params are write-once: same value is fine, a changed value is kept aside as a tag.
    stored.log_params({"seed": 0})
    stored.log_params({"seed": 1})
    run = stored.client.get_run(tracker.parent_run_id)
    assert run.data.params["seed"] == "0"
    assert run.data.tags["param_changed.seed"] == "1"

    stored.end_run(status="FINISHED")
    assert Tracker(config=TrackingConfig(), workdir=workdir, campaign_name="li-o-demo").start_campaign() == (
        tracker.parent_run_id
    )
    assert stored.run_status() == "RUNNING"


def test_experiment_opens_on_the_runs_view(tracker: Tracker) -> None:
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_experiment_made_without_kind_gets_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'old.db').as_posix()}"
    t = Tracker(config=TrackingConfig(tracking_uri=uri), workdir=tmp_path, campaign_name="old")
    t.client.create_experiment("old")  # as an earlier matloop made it: no kind tag
    t.start_campaign()
    assert t.client.get_experiment_by_name("old").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_metric_points_are_logged_once_per_step(tracker: Tracker) -> None:
    rid = tracker.start_round(round_index=7)
    assert tracker.log_metrics({"hits": 2, "mae": {"val": 0.03}}, step=7, run_id=rid) == 2
    # A track stage re-run after a kill logs the same round again: nothing is duplicated.
    assert tracker.log_metrics({"hits": 2, "mae": {"val": 0.03}, "new": 1.0}, step=7, run_id=rid) == 1
    assert tracker.log_metrics({"hits": 3}, step=8, run_id=rid) == 1
    history = tracker.client.get_metric_history(rid, "hits")
    assert sorted((m.step, m.value) for m in history) == [(7, 2.0), (8, 3.0)]
    assert [m.value for m in tracker.client.get_metric_history(rid, "mae.val")] == [0.03]
    tracker.end_run(run_id=rid)


def test_runs_end_with_status_reason_and_description(tracker: Tracker) -> None:
    rid = tracker.start_round(round_index=9)
    tracker.set_description("**Round 9**: 3 queried, 1 hit", run_id=rid)
    tracker.end_run(run_id=rid, status="KILLED", reason="stopped on request")
    run = tracker.client.get_run(rid)
    assert run.info.status == "KILLED"
    assert run.data.tags[END_REASON_TAG] == "stopped on request"
    assert run.data.tags[NOTE_TAG] == "**Round 9**: 3 queried, 1 hit"
    assert run.info.end_time is not None


def test_model_versions_alias_and_load_by_uri(
    tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.artifacts

    versions = {}
    for rnd in (10, 11):
        rid = tracker.start_round(round_index=rnd)
        ckpt = tmp_path / f"round_{rnd}"
        ckpt.mkdir()
        (ckpt / "manifest.json").write_text(json.dumps({"round": rnd}))
        tracker.log_artifacts(ckpt, artifact_path="checkpoints/emulator", run_id=rid)
        tags = {"round_index": rnd, "data_hash": f"h{rnd}", "val.mae": 0.05 - 0.01 * (rnd - 10)}
        versions[rnd] = tracker.register_version(
            model_name="li-o-demo-emulator", run_id=rid, artifact_path="checkpoints/emulator", tags=tags
        )
        # Registering the same round again (a re-run track stage) returns its version instead of adding one.
        assert (
            tracker.register_version(
                model_name="li-o-demo-emulator", run_id=rid, artifact_path="checkpoints/emulator", tags=tags
            )
            == versions[rnd]
        )
    assert versions == {10: "1", 11: "2"}
    tracker.set_alias(model_name="li-o-demo-emulator", version="1")
    listed = tracker.model_versions("li-o-demo-emulator")
    assert listed["2"]["data_hash"] == "h11" and float(listed["2"]["val.mae"]) == pytest.approx(0.04)
    champion = tracker.client.get_model_version_by_alias("li-o-demo-emulator", CHAMPION)
    assert str(champion.version) == "1"
    # What the README shows: load the version in use by its URI (the store named by the environment, so that no
    # global MLflow state outlives the test).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", tracker.tracking_uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            "models:/li-o-demo-emulator@champion", dst_path=str(tmp_path / "dl")
        )
    )
    assert json.loads((local / "manifest.json").read_text()) == {"round": 10}
    assert tracker.model_versions("no-such-model") == {}


def test_moved_store_reads_and_writes_only_under_its_new_folder(tmp_path: Path) -> None:
    old = tmp_path / "old" / "campaign"
    t = Tracker(config=TrackingConfig(), workdir=old, campaign_name="moving")
    t.start_campaign()
    rid = t.start_round(round_index=0)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "manifest.json").write_text('{"round": 0}')
    t.log_artifacts(ckpt, artifact_path="checkpoints/emulator", run_id=rid)
    t.register_version(
        model_name="moving-emulator",
        run_id=rid,
        artifact_path="checkpoints/emulator",
        tags={"checkpoint": "c0"},
    )
    new = tmp_path / "new" / "campaign"
    new.parent.mkdir()
    os.replace(old, new)

    moved = Tracker(config=TrackingConfig(), workdir=new, campaign_name="moving")
    moved.start_campaign()
    root = (new / "mlflow" / "artifacts").resolve().as_uri()
    assert moved.artifact_uri(run_id=rid).startswith(f"{root}/")
    fetched = moved.fetch_version(
        model_name="moving-emulator", tag="checkpoint", value="c0", dst=tmp_path / "dl"
    )
    assert fetched is not None and (fetched / "manifest.json").read_text() == '{"round": 0}'
    assert (
        moved.fetch_version(model_name="moving-emulator", tag="checkpoint", value="c9", dst=tmp_path) is None
    )
    moved.log_metric("after_move", 1.0, step=0, run_id=moved.start_round(round_index=1))
    moved.log_artifacts(ckpt, artifact_path="more", run_id=rid)
    assert (new / "mlflow" / "artifacts" / rid / "artifacts" / "more" / "manifest.json").is_file()
    assert not old.exists()  # nothing written where the campaign was


def test_corrupt_store_is_a_typed_unavailable_error(tmp_path: Path) -> None:
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(os.urandom(8192))
    t = Tracker(config=TrackingConfig(), workdir=tmp_path, campaign_name="c")
    with pytest.raises(TrackingUnavailable, match="unavailable") as info:
        t.start_campaign()
    assert info.value.tracking_uri == local_store(tmp_path)[0]
    with pytest.raises(TrackingUnavailable):
        t.check_available()


def test_stopped_server_is_unavailable(tmp_path: Path) -> None:
    t = Tracker(
        config=TrackingConfig(tracking_uri=f"http://127.0.0.1:{free_port()}"),
        workdir=tmp_path,
        campaign_name="c",
    )
    with pytest.raises(TrackingUnavailable, match="not reachable"):
        t.check_available(timeout=2)


def test_unknown_run_and_misuse_raise(tracker: Tracker, workdir: Path) -> None:
    t = Tracker(config=TrackingConfig(), workdir=workdir, campaign_name="li-o-demo")
    with pytest.raises(TrackingError, match="start_campaign"):
        t.start_round(round_index=0)
    with pytest.raises(InputError, match="no MLflow run"):
        t.start_campaign(run_id="0123456789abcdef0123456789abcdef")
    with pytest.raises(TrackingError, match="unknown run status"):
        tracker.end_run(status="DONE")


def test_second_campaign_gets_its_own_parent(tracker: Tracker, workdir: Path) -> None:
    other = Tracker(config=TrackingConfig(experiment="li-o-demo"), workdir=workdir, campaign_name="other")
    rid = other.start_campaign()
    assert rid != tracker.parent_run_id
    assert other.experiment_id == tracker.experiment_id


def test_tracking_uri_from_config(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'shared.db').as_posix()}"
    t = Tracker(
        config=TrackingConfig(tracking_uri=uri, experiment="shared"),
        workdir=tmp_path / "wd",
        campaign_name="c",
    )
    rid = t.start_campaign()
    t.log_metric("n", 1.0, step=0)
    assert (tmp_path / "shared.db").is_file()
    assert not (tmp_path / "wd" / "mlflow").exists()
    assert t.client.get_run(rid).data.metrics["n"] == 1.0


def test_disabled_tracking_is_a_no_op(tmp_path: Path) -> None:
    t = Tracker(config=TrackingConfig(enabled=False), workdir=tmp_path, campaign_name="c")
    assert t.start_campaign() is None and t.start_round(round_index=0) is None
    t.log_params({"a": 1})
    t.log_metrics({"b": 2.0}, step=0)
    t.end_run()
    assert not (tmp_path / "mlflow").exists()


def test_flatten_and_config_validation() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}) == {
        "a.b": "1",
        "a.c.d": "None",
        "e": "[1, 2]",
    }
    with pytest.raises(Exception, match="extra"):
        TrackingConfig(uri="x")


def test_ui_command_shape(workdir: Path) -> None:
    cmd = ui_command(workdir, 5123)
    assert cmd[0] == "env" and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in cmd
    assert cmd[cmd.index("-m") : cmd.index("-m") + 3] == ["-m", "mlflow", "ui"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == local_store(workdir)[0]
    with pytest.raises(TrackingError, match="open that server"):
        ui_command(workdir, 5123, tracking_uri="http://10.0.0.2:5000")
    pg = ui_command(workdir, 5123, tracking_uri="postgresql://user@db/mlflow")
    assert pg[pg.index("--backend-store-uri") + 1] == "postgresql://user@db/mlflow"
    with pytest.raises(TrackingError, match="out of range"):
        ui_command(workdir, 0)


@pytest.mark.slow  # starting the real MLflow UI takes 10-20 s on a loaded machine
def test_ui_serves_the_campaign_store(tracker: Tracker, workdir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        ui_command(workdir, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, proc, limit_s=90)
        req = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/get?run_id={tracker.parent_run_id}", method="GET"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            run = json.loads(r.read())["run"]
        assert run["info"]["run_id"] == tracker.parent_run_id
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- a real campaign: the smoke campaign (EMT, Cu-Au) through a broken store, then over HTTP -------------------------
def _histories(client, run_id: str) -> dict[str, list]:
    run = client.get_run(run_id)
    return {key: client.get_metric_history(run_id, key) for key in run.data.metrics}


def _artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return out


def _assert_campaign_tracked(client, *, name: str, store, rounds: int) -> None:
    """Everything issue 14 asks of a finished campaign's MLflow record, checked against the campaign store."""
    from loop.config import CampaignConfig
    from loop.tracking.campaign import DISCOVERY_CURVE, model_names, round_science

    config = CampaignConfig.model_validate(store.get_meta("config"))
    experiment = client.get_experiment_by_name(name)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    # The test that fails when the parent is left RUNNING.
    assert parent.info.status == "FINISHED", parent.data.tags.get(END_REASON_TAG)
    assert parent.info.end_time is not None
    assert "reached" in parent.data.tags[END_REASON_TAG]
    note = parent.data.tags[NOTE_TAG]
    assert (
        ", ".join(config.chemical_systems) in note
        and "`emt`" in note
        and "stop rule" in note
        and "budget: 3" in note
    )

    nested = {int(r.data.tags[ROUND_TAG]): r for r in runs if r.data.tags.get(PARENT_TAG)}
    assert set(nested) == set(range(rounds + 1)), "one round run per round, no duplicates"
    assert all(r.info.status == "FINISHED" for r in nested.values())
    round0 = _artifact_paths(client, nested[0].info.run_id)
    assert any(p.startswith("references/") and p.endswith(".cif") for p in round0)
    assert not any(p.startswith(("discovered/", "queried/")) for p in round0)

    first = store.first_query_rounds()
    for rnd in range(1, rounds + 1):
        run = nested[rnd]
        assert f"**Round {rnd}**" in run.data.tags[NOTE_TAG]
        for line in ("generated:", "funnel:", "oracle calls:", "discoveries (", "MAE", "best discovery:"):
            assert line in run.data.tags[NOTE_TAG], line
        paths = _artifact_paths(client, run.info.run_id)
        assert any(p.startswith("queried/") and p.endswith(".cif") for p in paths)
        assert any(p.startswith("plots/hull_") for p in paths)
        assert any(p.startswith("checkpoints/emulator/") for p in paths)
        expected_hits = sorted(
            h
            for h in (q.hash for q in store.round_queries(rnd))
            # a duplicate of an earlier label is no hit
            if any(v.hit for v in store.stability(rnd) if v.hash == h)
        )
        assert sorted(p.split("/")[1][:-4] for p in paths if p.startswith("discovered/")) == expected_hits
        assert run.data.metrics["discoveries"] == len(expected_hits)
        # stage internals are grouped apart from the science on the round run, and never reach the parent
        assert any(k.startswith("stage/label.") for k in run.data.metrics)
        assert any(k.startswith("time/") for k in run.data.metrics)
        # the run lasts as long as the round's stages did, not as long as its logging
        science = round_science(store, rnd)
        assert run.info.start_time == round(1000 * science.started_at)
        assert run.info.end_time == round(1000 * science.finished_at)
        stage_times = [s for s in store.stages() if s.round == rnd and s.stage != "track"]
        assert science.finished_at == max(s.finished_at for s in stage_times)

    history = _histories(client, parent.info.run_id)
    for key, points in history.items():  # idempotent logging: one point per key and step
        steps = [m.step for m in points]
        assert len(steps) == len(set(steps)), key
    steps = {key: sorted(m.step for m in points) for key, points in history.items()}
    assert steps["discoveries_cumulative"] == steps["oracle_calls_cumulative"] == list(range(rounds + 1))
    for key in ("discoveries_per_oracle_call", "screening_mae_eV_per_atom", "oracle_calls"):
        assert steps[key] == list(range(1, rounds + 1)), key
    assert not any(k.startswith(("stage/", "time/", "science.")) for k in history), "the parent is curated"
    assert any(k.startswith("by_source/") for k in history) or all(
        m.value == 0 for m in history["discoveries_cumulative"]
    )
    final = round_science(store, rounds)
    hits_now = sum(1 for v in store.stability(rounds) if v.hit and first.get(v.hash, 0) >= 1)
    assert final.discoveries_cumulative == hits_now
    last = {m.step: m.value for m in history["discoveries_cumulative"]}
    assert last[rounds] == hits_now
    calls = {m.step: m.value for m in history["oracle_calls_cumulative"]}
    assert calls[rounds] == sum(len(store.round_queries(r)) for r in range(1, rounds + 1))
    # one point per oracle call, at the call that made each hit
    curve = {m.step: m.value for m in history[DISCOVERY_CURVE]}
    assert sorted(curve) == list(range(1, int(calls[rounds]) + 1))
    assert curve[int(calls[rounds])] == hits_now
    assert "plots/discoveries_vs_oracle_calls.png" in _artifact_paths(client, parent.info.run_id)
    # the parent's run spans the campaign's stages
    assert parent.info.start_time == round(1000 * store.get_meta("started_at"))

    names = model_names(name)
    for model in names.values():
        versions = client.search_model_versions(f"name = '{model}'")
        # the description names a model only when the registry holds it
        assert (f"`{model}` ({len(versions)} version" in note) == bool(versions), model
    emulator = {v.version: v for v in client.search_model_versions(f"name = '{names['emulator']}'")}
    assert len(emulator) == rounds + 1  # every round retrains the emulator
    assert all("data_hash" in v.tags and v.tags["round_index"] for v in emulator.values())
    assert any(k.startswith("val.") for v in emulator.values() for k in v.tags)
    champion = client.get_model_version_by_alias(names["emulator"], CHAMPION)
    assert champion.tags["checkpoint"] == store.get_meta("emulator_checkpoint")
    generator = client.search_model_versions(f"name = '{names['generator']}'")
    if store.get_meta("generator_checkpoint"):
        gen_champion = client.get_model_version_by_alias(names["generator"], CHAMPION)
        assert gen_champion.tags["checkpoint"] == store.get_meta("generator_checkpoint")
        assert all("data_hash" in v.tags for v in generator)


@pytest.mark.slow
def test_a_store_logged_afresh_from_the_campaign_store_has_everything(
    smoke_campaign, tmp_path_factory
) -> None:
    """The shared smoke campaign's store logged into a new MLflow store by `matloop sync-tracking`: runs timed by
    the stages, curated parent, models named only when registered (see `_assert_campaign_tracked`)."""
    from tracked_smoke import SMOKE_NAME, resynced_smoke

    from loop.store import CampaignStore

    workdir = resynced_smoke(smoke_campaign, tmp_path_factory)
    store = CampaignStore.in_workdir(workdir)
    try:
        client = Tracker(config=TrackingConfig(), workdir=workdir, campaign_name=SMOKE_NAME).client
        _assert_campaign_tracked(client, name=SMOKE_NAME, store=store, rounds=2)
    finally:
        store.close()


@pytest.mark.slow
def test_broken_store_never_stops_discovery_and_sync_logs_everything(tmp_path_factory) -> None:
    from tracked_smoke import SMOKE_NAME, tracked_smoke

    from loop.store import CampaignStore

    run = tracked_smoke(tmp_path_factory)
    assert "tracking unavailable" in run.broken_run.stderr
    assert "Traceback" not in run.broken_run.stderr
    store = CampaignStore.in_workdir(run.workdir)
    try:
        assert [r.round for r in store.rounds() if r.status == "done"] == [0, 1, 2]
        assert store.stage_result(2, "track")["tracking"] == "pending"
        synced = json.loads(run.sync.stdout)
        assert 2 in synced["rounds"] and synced["parent_status"] == "FINISHED"
        assert synced["moved_aside"] and Path(synced["moved_aside"]).is_file()
        client = Tracker(config=TrackingConfig(), workdir=run.workdir, campaign_name=SMOKE_NAME).client
        _assert_campaign_tracked(client, name=SMOKE_NAME, store=store, rounds=2)
    finally:
        store.close()


@pytest.mark.slow
def test_track_stage_rerun_after_a_kill_duplicates_nothing(tmp_path_factory) -> None:
    """A kill during track means the stage runs again on resume: every log call must be idempotent."""
    from tracked_smoke import SMOKE_NAME, tracked_smoke

    from loop.config import CampaignConfig
    from loop.store import CampaignStore
    from loop.tracking.campaign import LOGGED_META, PARENT_META, track_round

    run = tracked_smoke(tmp_path_factory)
    store = CampaignStore.in_workdir(run.workdir)
    try:
        config = CampaignConfig.model_validate(store.get_meta("config"))
        store.set_meta(LOGGED_META, [0, 1])  # as if killed before round 2's logging was recorded
        result = track_round(config, store=store, round=2, workdir=run.workdir)
        assert result["tracking"] == "logged"
        client = Tracker(config=TrackingConfig(), workdir=run.workdir, campaign_name=SMOKE_NAME).client
        for rid in (result["round_run"], result["parent_run"]):
            for key, points in _histories(client, rid).items():
                steps = [m.step for m in points]
                assert len(steps) == len(set(steps)), key
        names = {v.version for v in client.search_model_versions(f"name = '{SMOKE_NAME}-emulator'")}
        assert len(names) == 3
    finally:
        # A campaign closes its parent run after its last track stage; this test ran the stage alone, on the
        # campaign the browser tests share, so it closes the parent as the campaign would have.
        client = Tracker(config=TrackingConfig(), workdir=run.workdir, campaign_name=SMOKE_NAME).client
        parent = store.get_meta(PARENT_META)
        if parent and client.get_run(parent).info.status == "RUNNING":
            client.set_terminated(parent, status="FINISHED")
        store.close()


@pytest.mark.slow
def test_campaign_over_http_survives_a_stopped_server(tmp_path: Path) -> None:
    """MLflow for teams: `mlflow server` on 127.0.0.1 (one worker, sqlite), a quick Cu-Au campaign over HTTP; the
    server stops during round 2 and the campaign goes on; round 3's track stage logs round 2 once the server is
    back."""
    from tracked_smoke import free_port, matloop, stop_process, wait_for_health

    from loop.store import CampaignStore
    from loop.tracking.campaign import model_names
    from loop.tracking.runs import ui_environment
    from tests.loop.quick_campaign import write_quick_config

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{(server_dir / 'mlflow.db').as_posix()}",
        "--artifacts-destination", (server_dir / "artifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, **ui_environment()}

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
        )
        wait_for_health(uri, proc)
        return proc

    path = write_quick_config(
        tmp_path / "smoke-http.yaml", name="smoke-http", rounds=3, tracking={"tracking_uri": uri}
    )
    workdir = tmp_path / "campaign"

    server = start()
    try:
        first = matloop("run", path, "--workdir", workdir, "--rounds", "1")
        assert first.returncode == 0, first.stderr[-3000:]
        assert not (workdir / "mlflow").exists()  # nothing local when a server is configured
        stop_process(server)
        down = matloop("run", path, "--workdir", workdir, "--rounds", "2")
        assert down.returncode == 0, down.stderr[-3000:]
        assert "tracking unavailable" in down.stderr and "Traceback" not in down.stderr
        server = start()
        back = matloop("run", path, "--workdir", workdir, "--rounds", "3")
        assert back.returncode == 0, back.stderr[-3000:]
        store = CampaignStore.in_workdir(workdir)
        try:
            assert store.stage_result(2, "track")["tracking"] == "pending"
            assert store.stage_result(3, "track")["synced_rounds"] == [2]
            sync = matloop("sync-tracking", "--workdir", workdir, "--json")
            assert sync.returncode == 0, sync.stderr[-2000:]
            assert json.loads(sync.stdout)["rounds"] == []  # nothing was left to sync
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            _assert_campaign_tracked(client, name="smoke-http", store=store, rounds=3)
            version = client.get_model_version_by_alias(model_names("smoke-http")["emulator"], CHAMPION)
            assert version.source.startswith("mlflow-artifacts:")
        finally:
            store.close()
    finally:
        stop_process(server)
    # With the server down, the sync command reports it in one line and loses nothing.
    down_sync = matloop("sync-tracking", "--workdir", workdir)
    assert down_sync.returncode == 1
    assert "unavailable" in down_sync.stderr and "Traceback" not in down_sync.stderr


FULL_STORE_SCRIPT = """
import resource, sys
from pathlib import Path
from loop.campaign import _setup_logging
from loop.tracking.runs import Tracker, TrackingConfig, TrackingUnavailable

workdir = Path(sys.argv[1])
_setup_logging(workdir / "campaign.log")
tracker = Tracker(config=TrackingConfig(), workdir=workdir, campaign_name="full")
run_id = tracker.start_campaign()
size = (workdir / "mlflow" / "mlflow.db").stat().st_size
# No file may grow past the store's present size: the next commit that needs a new page fails (EFBIG).
resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
try:
    tracker.log_params({f"p{i}": "x" * 4000 for i in range(2000)}, run_id=run_id)
except TrackingUnavailable as exc:
    print("unavailable:", str(exc).splitlines()[0])
"""


def test_a_store_that_cannot_grow_is_one_line_and_its_traceback_goes_to_the_log(tmp_path: Path) -> None:
    """MLflow logs a failed sqlite commit itself, with a 40-line traceback: that belongs in the campaign log, and
    the console gets the typed error only."""
    proc = subprocess.run(
        [sys.executable, "-c", FULL_STORE_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("unavailable: MLflow backend"), proc.stdout
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr[-3000:]
    log = (tmp_path / "campaign.log").read_text()
    assert "MLflow (mlflow.store.db.utils): SQLAlchemy database error" in log
    assert "Traceback" in log
