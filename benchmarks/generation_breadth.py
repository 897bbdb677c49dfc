"""Generation breadth: distinct formulas and structure types per round and generator, over a campaign's rounds.

Runs the generate and funnel stages of `configs/default.yaml` (every known compound withheld) for `--rounds`
rounds in a scratch store; every candidate that passes the funnel is screened with a stand-in prediction so that
it stays in the candidate pool (unlabelled), as a campaign's would, and nothing is labelled. Prints one JSON line
per round: candidates, funnel passes, distinct formulas (all and passing) and, per generator, candidates,
formulas and prototypes (anonymous formula, space group, atoms).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.generation_breadth --system V-O --rounds 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from generator.substitution import breadth
from loop.config import validate_config
from loop.store import CampaignStore, Generated, Prediction
from loop.work.funnel import run_funnel
from loop.work.generation import generate_candidates

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True, help="chemical system, e.g. V-O")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    data.update(
        name="breadth",
        seed=args.seed,
        chemical_systems=[args.system],
        withhold=["all_compounds"],
        oracle={"kind": "mlff"},
        committee=[],
    )
    config = validate_config(data)
    with tempfile.TemporaryDirectory() as tmp:
        store = CampaignStore.in_workdir(Path(tmp))
        for rnd in range(1, args.rounds + 1):
            started = time.time()
            made = generate_candidates(config, store=store, round=rnd, generator_checkpoint=None).candidates
            rows = [
                Generated(
                    hash=store.add_structure(
                        c.structure, source=c.source, parent=c.parent, round=rnd, provenance=c.info
                    ),
                    source=c.source,
                )
                for c in made
            ]
            store.add_generated(rnd, rows)
            outcomes = run_funnel(config, store=store, round=rnd, candidates=rows).outcomes
            passed = [o.hash for o in outcomes if o.passed]
            # a stand-in screening: what passed stays in the candidate pool, as a campaign's unlabelled candidates
            store.add_predictions(
                rnd,
                [
                    Prediction(
                        hash=h,
                        relaxed_hash=h,
                        model="stand-in",
                        energy_per_atom=0.0,
                        energy_per_atom_std=0.0,
                        e_hull=0.1,
                        e_hull_std=0.0,
                        data={"reason": None},
                    )
                    for h in passed
                ],
            )
            per_source = {}
            for source in sorted({c.source for c in made}):
                mine = [c.structure for c in made if c.source == source]
                b = breadth(mine)
                per_source[source] = {"n": len(mine), "formulas": b.formulas, "prototypes": b.prototypes}
            line = {
                "system": args.system,
                "seed": args.seed,
                "round": rnd,
                "candidates": len(made),
                "passed": len(passed),
                "formulas": breadth([c.structure for c in made]).formulas,
                "passed_formulas": len({store.structure_row(h).reduced_formula for h in passed}),
                "per_source": per_source,
                "wall_s": round(time.time() - started, 1),
            }
            print(json.dumps(line), flush=True)
        store.close()


if __name__ == "__main__":
    main()
