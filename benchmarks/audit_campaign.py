"""Structure-by-structure audit of a campaign: every oracle call with what the emulator predicted for it.

For each oracle call (round order): formula, source and parent, space group of the oracle's final structure, the
emulator's E_hull ± σ when it was chosen, the E_hull on the campaign's final oracle hull, the error of the predicted
energy against the oracle's (eV/atom, both per atom of the same composition; the predicted E_hull was measured on
the hull of its round, the oracle's on the final hull, so their difference mixes the error with what the hull
learnt since, e.g. a whole compound's formation energy in a campaign whose compounds are withheld) and |error|/σ,
and the oracle relaxation (steps, max force, pressure, wall time). Then, per composition on the final hull, every
labelled phase, so one can check that the references are the ground states the hull claims.

Usage:
    .venv/bin/python -m benchmarks.audit_campaign --workdir runs/demo

Units: eV/atom, eV/Å, GPa, s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from loop.report.science import collect
from loop.report.status import origin
from loop.science.structures import space_group
from loop.store import CampaignStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    data = collect(args.workdir)
    store = CampaignStore.in_workdir(args.workdir)
    try:
        rows = {r.hash: r for r in store.structure_rows()}
        predicted = {}
        for rnd in {c.round for c in data.calls}:
            for p in store.round_predictions(rnd):
                if p.relaxed_hash:
                    predicted[(rnd, p.relaxed_hash)] = p
        print(f"campaign {data.campaign}: {len(data.calls)} oracle calls, level of theory {data.level.kind}")
        print()
        print(
            "| round | formula | source (parent) | space group | predicted E_hull ± σ | oracle E_hull | energy error | "
            "\\|err\\|/σ | relax steps | max F | P (GPa) | wall (s) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        ratios = []
        for call in data.calls:
            res = call.result
            made_from = origin(rows, call.hash)  # a query is the emulator-relaxed child of a candidate
            final = (
                store.get_structure(res.final_hash)
                if res and res.final_hash
                else store.get_structure(call.hash)
            )
            pred = predicted.get((call.round, call.hash))
            pe = f"{pred.e_hull:+.3f} ± {pred.e_hull_std:.3f}" if pred and pred.e_hull is not None else "–"
            oe = f"{call.e_hull:+.3f}" if call.e_hull is not None else f"failed ({call.status})"
            err = ratio = "–"
            if pred and pred.energy_per_atom is not None and res and res.ok:
                e = pred.energy_per_atom - res.energy_per_atom
                err = f"{e:+.3f}"
                if pred.e_hull_std:
                    ratios.append(abs(e) / pred.e_hull_std)
                    ratio = f"{ratios[-1]:.1f}"
            fmax = pres = steps = wall = "–"
            if res and res.ok:
                fmax = f"{float(np.abs(np.asarray(res.forces)).max()):.3f}"
                pres = f"{-float(np.mean(res.stress[:3])):+.2f}"
                steps = str(res.metadata.get("relax_steps_taken", 0))
                wall = f"{res.wall_time:.0f}"
            source = "?" if made_from is None else made_from.source
            parent = (made_from.parent if made_from is not None else None) or ""
            print(
                f"| {call.round} | {final.composition.reduced_formula} | {source}"
                f"{f' ({parent})' if parent else ''} | {space_group(final, with_number=False)} | {pe} | {oe} | {err} | {ratio} | "
                f"{steps} | {fmax} | {pres} | {wall} |"
            )
        if ratios:
            r = np.asarray(ratios)
            print(f"\nwithin 1σ: {np.mean(r <= 1):.2f}, within 2σ: {np.mean(r <= 2):.2f} over {r.size} calls")
        print(
            "\nLabelled phases per composition on the final hull, references included (E above hull, eV/atom):"
        )
        first = store.first_query_rounds()
        results = {r.hash: r for r in store.oracle_results() if r.ok}
        by_formula: dict[str, list[tuple[float, str]]] = {}
        for v in store.stability():  # the latest round's verdicts
            res = results.get(v.hash)
            final = store.get_structure(res.final_hash if res and res.final_hash else v.hash)
            when = first.get(v.hash, 0)
            name = (
                f"{space_group(final, with_number=False)} ({'reference' if when == 0 else f'round {when}'})"
            )
            by_formula.setdefault(final.composition.reduced_formula, []).append((v.e_hull, name))
        for formula, phases in sorted(by_formula.items()):
            listed = ", ".join(f"{name} {e:+.4f}" for e, name in sorted(phases))
            print(f"- {formula}: {listed}")
    finally:
        store.close()


if __name__ == "__main__":
    main()
