"""Would the cheap screening tier pick a withheld phase out of hundreds of decorations? Its rank among the
decorations of its own formula.

`benchmarks.decoration_reach` shows that a withheld phase's own (structure type, formula) pair often sits a few
hundred places down round 1's decoration list, beyond the 6-12 decorations a campaign takes a round. Offering
hundreds a round only helps if something cheap tells the right decoration from the wrong ones of the same
formula. This measures that, with the campaign's code: round 1's first `--n` decorations of each system
(`benchmarks.decoration_reach.round_one`, every compound withheld; full decorations only, no partial substitution;
those the emulator cannot graph set aside as the funnel does),
each through the cheap tier (`loop.runtime.screening_tiers.cheap_estimates`: the pretrained CHGNet ensemble's
energy after `--steps` relaxation steps from the decorated cell); then the decorations of each target's formula
are ranked by that energy (one formula: the hull does not change the order, so none is built). The target's
decoration and the `--relax` best of its formula are then relaxed as screening does (300 steps, fmax 0.1 eV/Å)
to see whether the cheap order survives relaxation.

Reported per target: its list rank, the decorations of its formula among the first `--n`, its cheap rank among
them (0 best) and energy above the formula's cheap best, its relaxed rank among the relaxed ones; and what a cut
"relax the best k of each formula" would cost in relaxations. Units: eV/atom.

    OMP_NUM_THREADS=1 python -m benchmarks.decoration_screen --systems Ti-O,Na-Al-O,K-O \
        --targets mp-1215,mp-554098,mp-8057,mp-2352,mp-1901,mp-2340,mp-1866 --n 400
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from typing import Any

import numpy as np

from benchmarks.decoration_reach import phases, round_one
from benchmarks.lib.report import emit_json
from emulator.graphs import graph_problem
from generator.chemistry import ChemistryError, parse_chemical_system
from generator.substitution import decorated_candidates

KEEP = (1, 2, 4, 8)  # the "best k of each formula" cuts reported
EMULATOR = {"kind": "chgnet_ensemble", "n_members": 4, "batch_size": 4}


def _energies(structures: list[Any], *, steps: int) -> np.ndarray:
    from loop.runtime.tasks import relax_chunk

    out = []
    for start in range(0, len(structures), 16):
        chunk = [s.as_dict() for s in structures[start : start + 16]]
        out.extend(
            r["energy_per_atom"] if not r.get("collapsed") else math.nan
            for r in relax_chunk(chunk, None, EMULATOR, 0.1, steps)
        )
    return np.array(out, dtype=float)


def screen(system: str, *, n: int, steps: int, relax: int, targets: set[str]) -> dict[str, Any]:
    """The cheap and relaxed ranks of `system`'s targets among round 1's first `n` decorations."""
    decorations, held = round_one(system)
    wanted = phases(held, max_atoms=40, targets=targets)
    taken = decorations[:n]
    # The funnel sets aside what the emulator cannot graph (a decorated cell with an atom beyond 6 Å of all others).
    children = [
        c
        for c in decorated_candidates(taken)
        if c.info["operation"] == "decoration" and graph_problem(c.structure) is None
    ]
    start = time.process_time()
    cheap = _energies([c.structure for c in children], steps=steps)
    cheap_cpu = time.process_time() - start
    formulas = [c.info["formula"] for c in children]
    per_formula = Counter(formulas)
    out: dict[str, Any] = {
        "system": system,
        "decorations": len(taken),
        "formulas": len(per_formula),
        "cheap_steps": steps,
        "cheap_cpu_s": round(cheap_cpu, 1),
        "relaxations_for_best_k": {k: sum(min(k, v) for v in per_formula.values()) for k in KEEP},
        "targets": [],
    }
    key = {(c.info["parent_prototype"], c.info["formula"]): i for i, c in enumerate(children)}
    for ident, formula, proto in wanted:
        row: dict[str, Any] = {"material_id": ident, "formula": formula, "prototype": proto}
        i = key.get((proto, formula))
        if i is None:
            row["list_rank"] = next(
                (r for r, d in enumerate(decorations) if (d.prototype, d.formula) == (proto, formula)), None
            )
            out["targets"].append(row)
            continue
        same = [j for j, f in enumerate(formulas) if f == formula and math.isfinite(cheap[j])]
        order = sorted(same, key=lambda j: cheap[j])
        row.update(
            list_rank=next(r for r, d in enumerate(taken) if (d.prototype, d.formula) == (proto, formula)),
            of_formula=len(same),
            cheap_rank=order.index(i) if i in order else None,
            cheap_above_best=round(float(cheap[i] - cheap[order[0]]), 3) if i in order else None,
        )
        chosen = sorted(set(order[:relax]) | {i})
        relaxed = _energies([children[j].structure for j in chosen], steps=300)
        by_energy = [chosen[k] for k in np.argsort(relaxed, kind="stable")]
        row.update(
            relaxed_rank_among=f"{by_energy.index(i)} of {len(chosen)}",
            relaxed_above_best=round(float(relaxed[chosen.index(i)] - np.nanmin(relaxed)), 3),
            best_cheap_prototypes=[children[j].info["parent_prototype"] for j in order[:relax]],
        )
        out["targets"].append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", required=True, help="chemical systems, comma-separated, e.g. Ti-O,K-O")
    parser.add_argument("--targets", default="", help="material ids (else the withheld MP-stable phases)")
    parser.add_argument("--n", type=int, default=400, help="decorations screened per system")
    parser.add_argument(
        "--steps", type=int, default=5, help="cheap-tier relaxation steps (the default tier's)"
    )
    parser.add_argument(
        "--relax", type=int, default=4, help="best cheap decorations of a target's formula relaxed"
    )
    parser.add_argument("--out", help="also write the report here (JSON)")
    args = parser.parse_args()
    try:
        systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        for s in systems:
            parse_chemical_system(s)
    except ChemistryError as exc:
        parser.error(str(exc))
    if args.n < 1 or args.steps < 0 or args.relax < 1:
        parser.error("--n and --relax must be at least 1, --steps at least 0")
    import torch

    torch.set_num_threads(1)
    targets = {t.strip() for t in args.targets.split(",") if t.strip()}
    report = [screen(s, n=args.n, steps=args.steps, relax=args.relax, targets=targets) for s in systems]
    emit_json(report, out=args.out)


if __name__ == "__main__":
    main()
