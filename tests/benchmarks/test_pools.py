"""The benchmark pools' ground truth and their continued screening, on the shipped Li-Co-O pool (real SevenNet
labels, real CHGNet relaxations)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from acquisition import RefitEmulator, distinct_candidates, load_pool  # noqa: E402
from acquisition import main as acquisition_main  # noqa: E402
from build_pool import read_pool, structure_from_compact  # noqa: E402
from rescreen_pool import main as rescreen_main  # noqa: E402

from loop.stages.acquire import one_per_crystal  # noqa: E402

POOL = BENCH / "pools" / "li-co-o_mlff.json.gz"


def test_distinct_candidates_keep_one_candidate_per_oracle_minimum_and_no_known_crystal_as_a_hit():
    pool = load_pool(POOL)
    kept, known = distinct_candidates(pool)
    assert set(kept) <= set(pool.cands.tolist())
    assert 200 < len(kept) < len(pool.cands)  # many diffusion samples relax onto one LiCoO2
    oracle = [pool.oracle_structures[i] for i in kept]
    # Under the campaign's rule for "the same crystal", no two kept candidates are one.
    assert one_per_crystal(oracle, labelled=[]) == list(range(len(kept)))
    # Each dropped candidate is the crystal of a kept one that came before it in generation order.
    dropped = [int(i) for i in pool.cands if i not in set(kept.tolist())][:5]
    for i in dropped:
        earlier = [pool.oracle_structures[k] for k in kept if k < i]
        assert one_per_crystal([*earlier, pool.oracle_structures[i]], labelled=[]) == list(
            range(len(earlier))
        )
    # The one known crystal among the hits is a reference's crystal, and references are never candidates.
    refs = [
        (pool.oracle_structures[r].composition.reduced_formula, lambda r=r: pool.oracle_structures[r])
        for r in pool.refs
    ]
    for i in np.flatnonzero(known):
        assert one_per_crystal([pool.oracle_structures[i]], labelled=refs) == []
    assert not known[pool.refs].any() and known.sum() >= 1


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
