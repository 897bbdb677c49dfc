"""Nothing lost with a relative, moved or copied workdir, nor with a corrupt MLflow store.

One tiny EMT campaign (Cu-Au, no diffusion model, inline execution, real CHGNet, MLflow and campaign store,
`checkpoints.keep_rounds: 1`) is started from its parent folder with a relative `--workdir`, the way `make demo`
runs. Each test continues a copy of it: moved to another folder, or with its MLflow database overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import mlflow.artifacts
import pytest
import yaml

from loop.config import CampaignConfig
from loop.report.status import campaign_status
from loop.runtime.checkpoints import CHECKPOINT_KINDS, checkpoint_sha256
from loop.store import CampaignStore
from loop.tracking.campaign import PARENT_META, mlflow_copy_checker, model_names
from loop.tracking.runs import Tracker, TrackingConfig
from tests.loop import cli_process
from tests.loop.quick_campaign import quick_config

NAME = "paths-cu-au"

pytestmark = pytest.mark.slow


def write_config(path: Path, *, rounds: int) -> Path:
    """The quick config, keeping only the newest round's checkpoints."""
    data = quick_config(name=NAME, rounds=rounds)
    data["checkpoints"] = {"keep_rounds": 1}
    path.write_text(yaml.safe_dump(data))
    return path


# A crash point left in the environment by an outer run must not reach these runs.
matloop = partial(cli_process.matloop, env={"MATLOOP_CRASH_AFTER": None})


def snapshot(root: Path, *, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under `root` (except under `skip`) with its size and modification time."""
    out = {}
    for path in root.rglob("*"):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return out


def saved_checkpoints(workdir: Path) -> dict[tuple[int, str], tuple[str, str]]:
    """(round, kind) -> (path recorded by the retrain stage, its recorded sha256)."""
    store = CampaignStore.in_workdir(workdir)
    try:
        return {
            (s.round, kind): (s.result[f"{kind}_checkpoint"], s.result["checkpoint_sha256"][kind])
            for s in store.stages()
            if s.stage == "retrain"
            for kind in CHECKPOINT_KINDS
            if s.result.get(f"{kind}_checkpoint")
        }
    finally:
        store.close()


def client_of(workdir: Path):
    return Tracker(config=TrackingConfig(), workdir=workdir, campaign_name=NAME).client


def assert_nothing_lost(workdir: Path) -> set[int]:
    """Every checkpoint a retrain stage saved is in the workdir or, byte for byte, in MLflow's registry.

    Returns:
        The rounds whose checkpoints are only in MLflow.
    """
    client = client_of(workdir)
    versions = {
        v.tags["checkpoint"]: v
        for name in model_names(NAME).values()
        for v in client.search_model_versions(f"name = '{name}'")
    }
    only_in_mlflow = set()
    for (rnd, kind), (path, sha) in saved_checkpoints(workdir).items():
        assert not Path(path).is_absolute() and Path(path).parts[0] == "checkpoints", path
        assert path in versions, f"no model version of {path}"
        if (workdir / path).exists():
            assert checkpoint_sha256(kind, workdir / path) == sha
            continue
        only_in_mlflow.add(rnd)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(mlflow.artifacts.download_artifacts(artifact_uri=versions[path].source, dst_path=tmp))
            fetched = copy if kind == "emulator" else copy / Path(path).name
            assert checkpoint_sha256(kind, fetched) == sha, f"the MLflow copy of {path} differs"
    return only_in_mlflow


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Path:
    """Round 0 and two rounds, run from the campaign's parent folder with `--workdir relw`."""
    base = tmp_path_factory.mktemp("relative")
    write_config(base / "campaign.yaml", rounds=2)
    proc = matloop("run", "campaign.yaml", "--workdir", "relw", cwd=base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base


def test_relative_workdir_registers_every_model_and_prunes_only_what_mlflow_holds(started):
    workdir = started / "relw"
    assert sorted(p.name for p in started.iterdir()) == ["campaign.yaml", "relw"]  # nothing written beside it
    saved = saved_checkpoints(workdir)
    assert {rnd for rnd, kind in saved if kind == "emulator"} == {0, 1, 2}
    only_in_mlflow = assert_nothing_lost(workdir)
    assert only_in_mlflow == {0, 1}  # keep_rounds: 1, and round 2's checkpoint is in use
    store = CampaignStore.in_workdir(workdir)
    try:
        assert store.get_meta("emulator_checkpoint") == "checkpoints/round_002/emulator"
        # One count of oracle calls (`loop.views.oracle_calls`) for status and MLflow.
        calls = campaign_status(workdir, store=store)["oracle_calls"]
        assert calls == len(store.round_queries(1)) + len(store.round_queries(2)) > 0
        parent = client_of(workdir).get_run(store.get_meta(PARENT_META))
        assert parent.data.metrics["oracle_calls_cumulative"] == calls
    finally:
        store.close()


def test_moved_campaign_resumes_writing_only_inside_its_new_folder(started, tmp_path):
    before_origin = snapshot(started)
    shutil.copytree(started / "relw", tmp_path / "old" / "relw")
    new = tmp_path / "new"
    new.mkdir()
    os.replace(tmp_path / "old" / "relw", new / "campaign")  # moved, as `mv` does
    write_config(tmp_path / "more.yaml", rounds=3)
    before = snapshot(tmp_path, skip=new)

    proc = matloop("run", "../more.yaml", "--workdir", "campaign", cwd=new)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert snapshot(started) == before_origin  # the folder it was copied from is untouched
    assert snapshot(tmp_path, skip=new) == before  # and nothing appeared where it was moved from
    assert not (tmp_path / "old" / "relw").exists()
    assert sorted(p.name for p in new.iterdir()) == ["campaign"]
    workdir = new / "campaign"
    root = (workdir / "mlflow" / "artifacts").resolve().as_uri()
    client = client_of(workdir)
    store = CampaignStore.in_workdir(workdir)
    try:
        parent = store.get_meta(PARENT_META)
    finally:
        store.close()
    runs = client.search_runs([client.get_run(parent).info.experiment_id])
    assert len(runs) == 5  # the campaign and rounds 0-3
    assert all(r.info.artifact_uri.startswith(root) for r in runs)
    round3 = next(r for r in runs if r.data.tags.get("round_index") == "3")
    assert any(a.path == "queried" for a in client.list_artifacts(round3.info.run_id))
    assert assert_nothing_lost(workdir) == {0, 1, 2}


def test_corrupt_mlflow_store_never_costs_a_checkpoint(started, tmp_path):
    workdir = tmp_path / "campaign"
    shutil.copytree(started / "relw", workdir)
    (workdir / "mlflow" / "mlflow.db").write_bytes(b"this is not an sqlite database" * 100)
    write_config(tmp_path / "more.yaml", rounds=3)

    proc = matloop("run", "more.yaml", "--workdir", "campaign", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tracking unavailable" in proc.stderr
    # Round 2's checkpoint is no longer in use nor among the newest, but MLflow cannot show that it holds a copy.
    assert (workdir / "checkpoints" / "round_002" / "emulator").is_dir()
    assert "checkpoints of round 2 stay in the workdir: MLflow could not be read back" in proc.stderr

    sync = matloop("sync-tracking", "--workdir", "campaign", "--json", cwd=tmp_path)
    assert sync.returncode == 0, sync.stderr[-3000:]
    assert json.loads(sync.stdout)["moved_aside"]
    # The rebuilt store holds the checkpoints still in the workdir; the next prune reads them back first.
    write_config(tmp_path / "more.yaml", rounds=4)
    proc = matloop("run", "more.yaml", "--workdir", "campaign", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (workdir / "checkpoints" / "round_002").exists()
    assert 2 in assert_nothing_lost(workdir)


def test_a_copy_that_differs_keeps_the_checkpoint(started, tmp_path):
    """MLflow answers, its registry holds the version, but a weight file of the copy was altered."""
    workdir = tmp_path / "campaign"
    shutil.copytree(started / "relw", workdir)
    store = CampaignStore.in_workdir(workdir)
    try:
        config = CampaignConfig.model_validate(store.get_meta("config"))
        check = mlflow_copy_checker(config, store=store, workdir=workdir)
        assert check(2) is None
        version = next(
            v
            for v in client_of(workdir).search_model_versions(f"name = '{model_names(NAME)['emulator']}'")
            if v.tags["checkpoint"] == "checkpoints/round_002/emulator"
        )
        copy = Path(version.source.removeprefix("file://"))
        weights = sorted(copy.glob("*.pt"))[0]
        weights.write_bytes(weights.read_bytes() + b"\0")
        problem = check(2)
        assert problem is not None and "does not match" in problem and weights.name in problem
        assert check(7) == "its retrain stage is not recorded"
    finally:
        store.close()
