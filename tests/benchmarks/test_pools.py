"""The benchmark pools' ground truth and their continued screening, on the shipped Li-Co-O pool (real SevenNet
labels, real CHGNet relaxations)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from benchmarks.acquisition import main as acquisition_main
from benchmarks.lib.pools import load_pool, read_pool, structure_from_compact
from benchmarks.lib.replay import RefitEmulator, campaign_references, distinct_candidates, replay
from benchmarks.rescreen_pool import main as rescreen_main
from loop.science.acquisition import one_per_crystal

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
POOL = BENCH / "pools" / "li-co-o_mlff.json.gz"


def test_distinct_candidates_are_what_a_campaign_offers_and_each_oracle_crystal_counts_once():
    pool = load_pool(POOL)
    kept, known, crystals = distinct_candidates(pool)
    assert set(kept) <= set(pool.cands.tolist())
    ok = [int(i) for i in kept if np.isfinite(pool.oracle_energy[i])]
    assert 200 < len(ok) < len(pool.cands)
    # Twins are judged on what a campaign sees, the emulator-relaxed structures: no two kept ones are one crystal.
    assert one_per_crystal([pool.structures[i] for i in ok], labelled=[]) == list(range(len(ok)))
    # Under the oracle, distinct screened crystals can still relax onto one (many samples end as LiCoO2): they share
    # an oracle crystal, the first of them in generation order, whose oracle structure is theirs.
    assert set(crystals) == set(ok) and len(set(crystals.values())) < len(ok)
    for i, first in list(crystals.items())[:40]:
        assert first <= i
        assert one_per_crystal([pool.oracle_structures[first], pool.oracle_structures[i]], labelled=[]) == [0]
    # The one known crystal among the hits is a reference's crystal, and references are never candidates.
    refs = [
        (pool.oracle_structures[r].composition.reduced_formula, lambda r=r: pool.oracle_structures[r])
        for r in pool.refs
    ]
    for i in np.flatnonzero(known):
        assert one_per_crystal([pool.oracle_structures[i]], labelled=refs) == []
    assert not known[pool.refs].any() and known.sum() >= 1


def test_replay_counts_a_crystal_once_and_labels_round_0_references_as_a_campaign_does():
    pool = load_pool(POOL, screening="rescreened")
    refs = campaign_references(pool, max_compounds=4)
    elements = [i for i in pool.refs if len(pool.structures[i].composition) == 1]
    compounds = [i for i in refs if len(pool.structures[i].composition) > 1]
    assert set(elements) <= set(refs) and len(compounds) == 4 and len(pool.refs) > 40
    assert (
        len({pool.structures[i].composition.reduced_formula for i in compounds}) == 4
    )  # one per composition
    kept, known, crystals = distinct_candidates(pool)
    pool.hit = pool.hit & ~known
    offered = np.asarray(kept[:120])
    runs = {}
    for strategy in ("p_stable", "uniform_random"):
        runs[strategy] = replay(
            pool,
            strategy=strategy,
            offered=offered,
            rounds=2,
            budget=8,
            seed=0,
            emulator=RefitEmulator(pool),
            references=refs,
            crystals=crystals,
        )
    for r in runs.values():
        picks = [i for rnd in r["rounds"] for i in rnd["picks"]]
        assert r["calls"] == 16 == len(set(picks))
        hit_crystals = {crystals.get(i, i) for i in picks if pool.hit[i]}
        assert r["hits"] == len(hit_crystals)  # one hit per oracle crystal, however many candidates reach it
    # Uniform random applies no formula cap: its picks are a plain random draw, the cap's re-ranking is absent.
    assert runs["p_stable"]["hits"] >= runs["uniform_random"]["hits"]


def test_rescreen_continues_unconverged_screening_to_a_lower_converged_minimum(tmp_path):
    data = read_pool(POOL)
    unconverged = [e for e in data["entries"] if e["role"] == "candidate" and not e["screen"]["converged"]]
    for e in unconverged:  # the shipped pool is rescreened already: undo it for these three
        e.pop("rescreen", None)
        e.pop("rescreen_basin", None)
        e["emulator"].pop("member_energy_per_atom_rescreened", None)
    data["entries"] = [e for e in data["entries"] if e["role"] == "reference"] + unconverged[:3]
    small = tmp_path / "small.json.gz"
    with gzip.open(small, "wt") as fh:
        json.dump(data, fh)
    out = tmp_path / "out.json.gz"
    assert rescreen_main(["--pool", str(small), "--steps", "400", "--workers", "1", "--out", str(out)]) == 0
    result = read_pool(out)
    cands = [e for e in result["entries"] if e["role"] == "candidate"]
    assert result["build"]["rescreen"]["unconverged_before"] == 3
    for e in cands:
        r = e["rescreen"]
        assert r["converged"] and 60 < r["n_steps"] <= 400
        before = np.mean(e["emulator"]["member_energy_per_atom"])
        after = np.mean(e["emulator"]["member_energy_per_atom_rescreened"])
        assert after < before  # further downhill on the emulator's own surface
        assert (
            structure_from_compact(r["structure"]).composition
            == structure_from_compact(e["structure"]).composition
        )
        assert e["rescreen_basin"] is not None


def test_rescreen_refuses_a_missing_pool_with_exit_code_2(tmp_path, capsys):
    assert rescreen_main(["--pool", str(tmp_path / "none.json.gz")]) == 2
    assert "no such pool file" in capsys.readouterr().err


def test_replay_calibration_rule_what_if_fits_an_error_floor_only_under_the_floor_rule(capsys):
    pool = load_pool(POOL, screening="rescreened")
    refs = [int(i) for i in pool.refs if np.isfinite(pool.oracle_energy[i])]
    fits = {}
    for rule in ("quantile", "floor"):
        emulator = RefitEmulator(pool, calibration_rule=rule)
        emulator.retrain(refs, [], round=0)
        fits[rule] = emulator.calibration
    assert fits["quantile"].floor == 0.0 and fits["floor"].floor > 1e-3  # eV/atom, fitted on the references
    assert fits["quantile"].n_pairs == fits["floor"].n_pairs == len(refs)
    # The retrain mode calibrates as the campaign's config says: the what-if is refused there.
    argv = ["--pool", str(POOL), "--mode", "retrain", "--calibration-rule", "floor"]
    assert acquisition_main(argv) == 2
    assert "applies to --mode refit" in capsys.readouterr().err
