from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure
from pymatgen.core import Structure

from loop.errors import InputError
from loop.tracking import (
    PARENT_TAG,
    ROUND_TAG,
    Tracker,
    TrackingConfig,
    TrackingError,
    flatten,
    local_store,
    ui_command,
)

MP20_VAL = Path(__file__).resolve().parents[2] / "generator" / "data" / "mp_20" / "val.csv.gz"


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # starting the real MLflow UI takes 10-20 s on a loaded machine
def test_ui_serves_the_campaign_store(tracker: Tracker, workdir: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        ui_command(workdir, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow ui exited early"
            assert time.monotonic() < deadline, "mlflow ui did not come up"
            time.sleep(0.5)
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
