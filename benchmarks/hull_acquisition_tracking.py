"""Speed of the screen-stage hull, acquisition and tracking on realistic sizes (run by hand, not in CI).

Usage:
    OMP_NUM_THREADS=1 MLFLOW_DISABLE_TELEMETRY=true python -m benchmarks.hull_acquisition_tracking [--n 5000]

Candidates are real mp_20 crystals (validation split, bundled). The hull is built from made-up elemental and
binary energies so that every candidate can be placed; candidate energies are the hull energy plus noise.
Prints one JSON line of timings in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure

from benchmarks.lib.timing import load_average
from loop.science.acquisition import AcquisitionConfig, select_queries, structure_features
from loop.science.hull import HullEntry, OracleHull
from loop.science.verdicts import StabilityRule
from loop.tracking.runs import Tracker, TrackingConfig

RULE = StabilityRule(near_stable=0.05)

MP20_VAL = Path(__file__).resolve().parents[1] / "generator" / "data" / "mp_20" / "val.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="candidates (taken from mp_20 val)")
    parser.add_argument("--budget", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    df = pd.read_csv(MP20_VAL).head(args.n)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    structures = [Structure.from_str(cif, fmt="cif") for cif in df.cif]
    timings["parse_cif"] = time.perf_counter() - t
    compositions = [s.composition for s in structures]

    # Oracle-like entries: every element at a random reference energy, plus random binaries below the tie line.
    elements = sorted({el.symbol for c in compositions for el in c.elements})
    entries = [
        HullEntry(entry_id=el, composition=el, energy_per_atom=float(rng.uniform(-9, -1))) for el in elements
    ]
    refs = {e.entry_id: e.energy_per_atom for e in entries}
    for k in range(300):
        a, b = rng.choice(elements, size=2, replace=False)
        x = rng.uniform(0.2, 0.8)
        comp = Composition({a: round(10 * (1 - x)) or 1, b: round(10 * x) or 1})
        tie = sum(refs[str(el)] * comp.get_atomic_fraction(el) for el in comp.elements)
        entries.append(
            HullEntry(entry_id=f"b{k}", composition=comp, energy_per_atom=tie - rng.uniform(0, 0.8))
        )
    t = time.perf_counter()
    hull = OracleHull.from_entries(entries)
    timings["hull_build"] = time.perf_counter() - t

    ref_e = np.array(
        [sum(refs[el.symbol] * c.get_atomic_fraction(el) for el in c.elements) for c in compositions]
    )
    energies = ref_e - rng.uniform(0, 0.6, size=len(compositions))
    stds = rng.uniform(0.005, 0.08, size=len(compositions))
    t = time.perf_counter()
    ev = hull.evaluate(compositions, energies, stds)
    timings["hull_evaluate"] = time.perf_counter() - t
    timings["n_chemsys"] = len(hull._diagrams)
    t = time.perf_counter()
    ev2 = hull.evaluate(compositions, energies, stds)
    timings["hull_evaluate_warm"] = time.perf_counter() - t
    assert np.allclose(ev.e_above_hull, ev2.e_above_hull, equal_nan=True)

    t = time.perf_counter()
    feats = structure_features(structures)
    timings["features"] = time.perf_counter() - t
    formulas = [c.reduced_formula for c in compositions]
    for strategy in ("p_stable", "max_std", "ucb", "greedy", "random"):
        config = AcquisitionConfig(strategy=strategy, budget=args.budget)
        t = time.perf_counter()
        res = select_queries(
            mean=ev.e_above_hull,
            std=ev.e_above_hull_std,
            config=config,
            rule=RULE,
            features=feats,
            formulas=formulas,
        )
        timings[f"select_{strategy}_diverse"] = time.perf_counter() - t
        assert len(res.indices) == args.budget
    config = AcquisitionConfig(
        strategy="p_stable",
        budget=args.budget,
        diversity={"max_per_formula": None, "similarity_penalty": 0.0},
    )
    t = time.perf_counter()
    select_queries(mean=ev.e_above_hull, std=ev.e_above_hull_std, config=config, rule=RULE)
    timings["select_p_stable_plain"] = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        tracker = Tracker(config=TrackingConfig(), workdir=tmp, campaign_name="bench")
        tracker.start_campaign()
        timings["mlflow_store_create"] = time.perf_counter() - t
        t = time.perf_counter()
        for k in range(5):
            rid = tracker.start_round(round_index=k)
            tracker.log_metrics({"hit_rate": 0.1 * k, "mae": 0.03, "n": {"queried": 20, "stable": k}}, step=k)
            tracker.log_structures(
                dict(zip(df.material_id[:20], structures[:20], strict=True)),
                artifact_path="queried",
                run_id=rid,
            )
            tracker.end_run(run_id=rid)
        timings["mlflow_5_rounds_20_cifs"] = time.perf_counter() - t

    timings["n_candidates"] = len(structures)
    timings["load_1min"] = load_average()[0]
    print(json.dumps({k: round(v, 4) for k, v in timings.items()}))


if __name__ == "__main__":
    main()
