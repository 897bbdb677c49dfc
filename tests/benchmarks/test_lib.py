"""The benchmark library on the shipped Li-Al GPAW pool (12 references, 71 candidates, real GPAW labels): the pool
file format round-trips, and the replay engine gives the same, consistent campaign twice."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.lib.cells import b32_lial, li_al_cells
from benchmarks.lib.pools import (
    compact_structure,
    load_pool,
    read_pool,
    structure_from_compact,
    write_pool,
)
from benchmarks.lib.replay import RefitEmulator, replay
from benchmarks.lib.timing import Stopwatch, children_cpu_s, load_average

POOL = Path(__file__).resolve().parents[2] / "benchmarks" / "pools" / "li-al_gpaw.json.gz"


def test_a_pool_file_round_trips_and_another_format_is_refused(tmp_path):
    data = read_pool(POOL)
    out = tmp_path / "sub" / "copy.json.gz"
    write_pool(data, out)
    assert read_pool(out) == data
    assert not list(out.parent.glob(".*.tmp"))  # the temporary file became the pool
    for e in data["entries"]:
        assert compact_structure(structure_from_compact(e["structure"])) == e["structure"]
    with gzip.open(out, "wt") as fh:
        json.dump({**data, "format": 99}, fh)
    with pytest.raises(ValueError, match="pool format 99"):
        read_pool(out)


def test_a_loaded_pool_holds_the_files_labels_and_verdicts():
    data = read_pool(POOL)
    pool = load_pool(POOL)
    assert len(pool.refs) == 12 and len(pool.cands) == 71
    ok = [i for i, e in enumerate(data["entries"]) if e["oracle"]["status"] == "ok"]
    assert np.allclose(pool.oracle_energy[ok], [data["entries"][i]["oracle"]["energy_per_atom"] for i in ok])
    assert int(pool.hit[pool.cands].sum()) == data["summary"]["n_hits"] == 17
    assert pool.members.shape == (4, len(data["entries"]))
    stricter = load_pool(POOL, near_stable=0.0)  # only hull phases are hits
    assert int(stricter.hit[pool.cands].sum()) == data["summary"]["n_stable"] < 17


def test_the_replay_engine_is_deterministic_and_counts_what_it_picked():
    pool = load_pool(POOL)
    emulator = RefitEmulator(pool)
    runs = [
        replay(pool, strategy="greedy", offered=pool.cands, rounds=3, budget=4, seed=0, emulator=emulator)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]  # one emulator serves both: each replay starts from round 0's refit
    run = runs[0]
    picks = [i for rnd in run["rounds"] for i in rnd["picks"]]
    assert run["calls"] == len(picks) == 12 == len(set(picks))
    assert set(picks) <= set(pool.cands.tolist())
    assert run["hits"] == sum(r["hits"] for r in run["rounds"]) == int(pool.hit[picks].sum())
    # Greedy picks the lowest predicted E_hull: its hit rate beats the pool's prevalence (17 of 71).
    assert run["hits"] / run["calls"] > 17 / 71
    assert all(np.isfinite(r["mae"]) for r in run["rounds"])


def test_cells_are_the_crystals_they_name():
    cells = li_al_cells()
    assert {k: len(v) for k, v in cells.items()} == {
        "Al_fcc": 1,
        "Al_hcp": 2,
        "Al_bcc": 1,
        "Li_bcc": 1,
        "Li_fcc": 1,
        "LiAl_B32": 4,
        "Li_cI16": 8,
        "Li3Al2": 5,
        "LiAl3": 4,
    }
    b32 = b32_lial(6.37)
    assert len(b32) == 16 and b32.composition.reduced_formula == "LiAl"
    assert cells["LiAl_B32"].volume == pytest.approx(b32.volume / 4)


def test_the_stopwatch_counts_the_work_of_children():
    import subprocess
    import sys

    watch = Stopwatch(cpu=children_cpu_s)
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert watch.cpu_s() > 0 and watch.wall_s() > 0
    assert len(load_average()) == 3


def test_a_campaign_run_that_fails_stops_the_benchmark_and_names_its_log(tmp_path):
    from benchmarks.lib.runs import run_campaign

    workdir = tmp_path / "campaign"
    with pytest.raises(SystemExit, match="exited 2") as stop:
        run_campaign({"name": "bad", "seed": "not a number"}, workdir=workdir, rounds=1)
    log = tmp_path / "campaign.log"
    assert str(log) in str(stop.value)
    assert "seed" in log.read_text()  # the campaign's own one-line refusal
    assert (tmp_path / "campaign.yaml").is_file()
