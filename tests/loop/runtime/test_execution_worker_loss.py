"""Worker loss on a real Dask LocalCluster: SIGKILL of a worker in the middle of the label and screen stages, and a
task that kills every worker it runs on (quarantined as a failed label with a typed reason, never retried)."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from loop.config import validate_config
from loop.runtime.execution import ExecutionConfig, make_executor
from loop.runtime.labelling import label_hashes, oracle_workdir
from loop.store import CampaignStore
from loop.work.screening import screen
from oracle.ase_runner import CALLS_FILE
from oracle.emt_toy import EMTSettings
from tests.loop.worker_faults import die_on, echo, kill_busy_worker, kill_worker_in_calculation

FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def cu_au_cells(n: int) -> list[Structure]:
    """`n` distinct small Cu-Au cells (fcc Cu, fcc Au, L1_2 Cu3Au, L1_0 CuAu at several strains)."""
    species = [["Cu"] * 4, ["Au"] * 4, ["Au", "Cu", "Cu", "Cu"], ["Cu", "Cu", "Au", "Au"]]
    base = [3.61, 4.08, 3.75, 3.85]
    cells = []
    for i in range(n):
        kind, strain = i % 4, 1.0 + 0.01 * (i // 4)
        cells.append(Structure(Lattice.cubic(base[kind] * strain), species[kind], FCC))
    return cells


def audit(workdir: Path, h: str) -> list[dict]:
    path = oracle_workdir(workdir, h) / CALLS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


def local(**kwargs: object) -> ExecutionConfig:
    return ExecutionConfig(kind="local", n_workers=2, **kwargs)


@pytest.mark.slow
def test_label_stage_survives_a_worker_killed_mid_calculation(tmp_path: Path) -> None:
    store = CampaignStore.in_workdir(tmp_path)
    hashes = [store.add_structure(s, source="test") for s in cu_au_cells(8)]
    settings = EMTSettings()
    killed: list[int] = []
    with make_executor(local()) as ex:

        def on_commit() -> None:
            if not killed:  # after the first committed label, inside one of the others' calculations
                killed.append(kill_worker_in_calculation(tmp_path / "oracle", calls_file=CALLS_FILE))

        results = label_hashes(
            store,
            hashes,
            settings=settings,
            workdir=tmp_path,
            submit=ex.submit,
            as_completed=ex.as_completed,
            on_commit=on_commit,
        )
    assert killed
    assert all(results[h].ok for h in hashes)
    stored = store.oracle_results(settings_hash=settings.settings_hash())
    assert sorted(r.hash for r in stored) == sorted(hashes)  # each structure labelled exactly once
    events = {h: audit(tmp_path, h) for h in hashes}
    # No calculation completed twice ...
    assert all(sum(e["event"] == "finished" for e in events[h]) == 1 for h in hashes)
    # ... and the killed worker was inside a calculation, which another worker ran again from the start.
    interrupted = [
        h
        for h in hashes
        if any(e["event"] == "started" and e["pid"] == killed[0] for e in events[h])
        and not any(e["event"] == "finished" and e["pid"] == killed[0] for e in events[h])
    ]
    assert len(interrupted) == 1
    assert sum(e["event"] == "started" for e in events[interrupted[0]]) == 2
    store.close()


@pytest.mark.slow
def test_a_task_that_keeps_killing_workers_is_quarantined_not_retried(tmp_path: Path) -> None:
    store = CampaignStore.in_workdir(tmp_path)
    hashes = [store.add_structure(s, source="test") for s in cu_au_cells(4)]
    doomed = hashes[1]
    settings = EMTSettings()
    with make_executor(local(allowed_failures=1)) as ex:
        results = label_hashes(
            store,
            hashes,
            settings=settings,
            workdir=tmp_path,
            submit=lambda fn, *args, **kw: ex.submit(die_on, doomed, fn, *args, **kw),
            as_completed=ex.as_completed,
        )
    assert all(results[h].ok for h in hashes if h != doomed)
    bad = store.get_oracle_result(doomed, settings.settings_hash())
    assert bad is not None and bad.status == "failed"
    assert bad.metadata["failure"] == "worker_lost" and bad.metadata["workers_lost"] == 2
    assert bad.reason.startswith("quarantined: 2 Dask worker(s) died")
    # Stored, so a later round or rerun submits nothing for it.
    submitted: list[object] = []
    label_hashes(
        store,
        hashes,
        settings=settings,
        workdir=tmp_path,
        submit=lambda *args, **kw: submitted.append(args),
        as_completed=lambda futures: iter(futures),
    )
    assert submitted == []
    store.close()


@pytest.mark.slow
def test_map_chunks_quarantines_one_chunk_and_keeps_the_others() -> None:
    chunks = [["a", "b"], ["c", "poison"], ["d"]]
    fn = functools.partial(die_on, "poison", echo)
    with make_executor(local(allowed_failures=0)) as ex:
        out = ex.map_chunks(fn, chunks, on_quarantine=lambda chunk, q: [f"{q.kind}:{x}" for x in chunk])
    assert out == ["a", "b", "worker_lost:c", "worker_lost:poison", "d"]


SCREEN_CONFIG = {
    "name": "screen-worker-loss",
    "chemical_systems": ["Cu-Au"],
    "emulator": {"kind": "chgnet_ensemble", "n_members": 2, "design": "bootstrap_only"},
    "emulator_training": {"relax_fmax": 0.2, "relax_steps": 8},
    "oracle": {"kind": "emt"},
    "execution": {"kind": "local", "n_workers": 2},
}


@pytest.mark.slow
def test_screen_stage_survives_a_worker_killed_mid_relaxation(tmp_path: Path) -> None:
    config = validate_config(SCREEN_CONFIG)
    store = CampaignStore.in_workdir(tmp_path)
    cells = cu_au_cells(14)
    refs = [store.add_structure(s, source="reference") for s in cells[:2]]  # fcc Cu and Au: the hull's ends
    label_hashes(store, refs, settings=config.oracle, workdir=tmp_path)
    candidates = [store.add_structure(s, source="test") for s in cells[2:]]

    inline_rows = screen(config, store=store, hashes=candidates, checkpoint=None, executor=None).predictions
    killed: list[int] = []
    with make_executor(config.execution) as ex:
        killer = threading.Thread(
            target=lambda: killed.append(kill_busy_worker(ex.client, after_finished=1)), daemon=True
        )
        killer.start()
        screening = screen(config, store=store, hashes=candidates, checkpoint=None, executor=ex)
        rows, report = screening.predictions, screening.report
        killer.join(timeout=60)
    assert killed, "the worker was not killed during the stage"
    assert report["n_screened"] == len(candidates) == len(rows)
    assert not any("quarantined" in (r.data["reason"] or "") for r in rows)
    # The chunk lost with the worker was relaxed again from scratch: the same numbers as an undisturbed run.
    assert [r.hash for r in rows] == [r.hash for r in inline_rows]
    np.testing.assert_allclose(
        [r.energy_per_atom for r in rows], [r.energy_per_atom for r in inline_rows], atol=1e-5
    )
    store.close()


@pytest.mark.slow
def test_a_stop_request_lets_started_calculations_finish_and_starts_no_other(tmp_path: Path) -> None:
    """On Dask, after a stop request no calculation starts any more, and every one a worker had started is finished
    and stored (its audit log has "finished" and the store its result); a second call labels the rest."""
    store = CampaignStore.in_workdir(tmp_path)
    hashes = [store.add_structure(s, source="test") for s in cu_au_cells(12)]
    settings = EMTSettings()
    with make_executor(local()) as ex:
        first = label_hashes(
            store,
            hashes,
            settings=settings,
            workdir=tmp_path,
            submit=ex.submit,
            as_completed=ex.as_completed,
            should_stop=lambda: True,  # asked after the first stored result
            cancel_queued=ex.cancel_queued,
        )
        started = {h for h in hashes if (oracle_workdir(tmp_path, h) / CALLS_FILE).is_file()}
        assert 1 <= len(first) < len(hashes) and set(first) == started
        for h in started:
            assert [c["event"] for c in audit(tmp_path, h)][-1] == "finished", h
            assert store.get_oracle_result(h, settings.settings_hash()) is not None
        rest = label_hashes(
            store, hashes, settings=settings, workdir=tmp_path, submit=ex.submit, as_completed=ex.as_completed
        )
    assert all(r.ok for r in rest.values()) and len(store.oracle_results()) == len(hashes)
    assert all(len(audit(tmp_path, h)) == 2 for h in hashes)  # each calculated once: started, finished
