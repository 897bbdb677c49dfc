"""How far down substitution's decoration list a system's known phases sit: what the structure-type search can
reach in a campaign's rounds.

For each chemical system, every bundled compound of it is withheld and round 1's decorations are listed as a
campaign lists them (`generator.substitution.prototype_decorations`: every bundled structure type whose anonymous
formula is that of an allowed composition, `generator.compositions` weights up to the funnel's 40 atoms, nothing yet
solved or tried). A withheld phase counts as reached at rank k when its own (structure type, formula) pair is the
k-th decoration (rank 0 first). Phases: the withheld crystals of at most `--max-atoms` atoms that the Materials
Project puts on its hull (`e_above_hull` 0; crystals without that property count too), or the material ids given
with `--targets`. No structure is relaxed, so "reached" means "offered in the right structure type": relaxation
may still carry it elsewhere (`benchmarks.composition_hits` measures that side).

A campaign takes 6-12 decorations a round at the default mix (its log: "N decorations (k used)"), so recall at 24
and 48 is what 4 rounds can offer.

    python -m benchmarks.decoration_reach --systems Li-Al,Al-Ni,Li-Co-O,Li-P-O,Mg-Si,Fe-S
    python -m benchmarks.decoration_reach --systems Ti-O --targets mp-1215,mp-554098,mp-8057,mp-554278
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from generator.chemistry import ChemistryError, parse_chemical_system
from generator.compositions import allowed_compositions, composition_weights
from generator.seeds import Withholding, seed_table
from generator.substitution import Decoration, prototype_decorations, table_prototypes

CUTS = (6, 12, 24, 48, 96, 200, 400)
CELL_LIMIT = 40  # the funnel's default max_atoms


def round_one(system: str) -> tuple[list[Decoration], Withholding]:
    """Round 1's decorations of `system` with every compound withheld, as a campaign lists them, and the
    withholding."""
    elements = parse_chemical_system(system)
    held = Withholding(compounds_in=(frozenset(elements),))
    allowed = allowed_compositions([system], max_atoms=CELL_LIMIT)
    weights = dict(zip((c.formula for c in allowed), composition_weights(allowed), strict=True))
    return prototype_decorations(weights=weights, max_sites=CELL_LIMIT, withhold=held), held


def phases(held: Withholding, *, max_atoms: int, targets: set[str]) -> list[tuple[str, str, str]]:
    """(material id, formula, prototype) of the withheld phases: the `targets` ids, or else the withheld crystals
    of at most `max_atoms` atoms on MP's hull."""
    table = seed_table()
    rows = table[held.mask(table)]
    if targets:
        rows = rows[rows["material_id"].isin(targets)]
    else:
        rows = rows[(rows["n_sites"] <= max_atoms) & (rows["e_above_hull"].fillna(0) <= 0)]
    return [
        (str(ident), str(formula), proto)
        for ident, formula, proto in zip(
            rows["material_id"], rows["reduced_formula"], table_prototypes(rows), strict=True
        )
    ]


def ranks(
    system: str, *, max_atoms: int, targets: set[str]
) -> tuple[list[tuple[str, str, str, int | None]], int]:
    """(material id, formula, prototype, rank or None) of the system's phases, and the number of decorations."""
    found, held = round_one(system)
    position = {(d.prototype, d.formula): i for i, d in enumerate(found)}
    out = [
        (ident, formula, proto, position.get((proto, formula)))
        for ident, formula, proto in phases(held, max_atoms=max_atoms, targets=targets)
    ]
    return out, len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", required=True, help="chemical systems, comma-separated, e.g. Li-Al,Fe-S")
    parser.add_argument("--targets", default="", help="material ids to rank instead of the MP-stable phases")
    parser.add_argument("--max-atoms", type=int, default=20, help="largest phase counted, atoms")
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    try:
        for s in systems:
            parse_chemical_system(s)
    except ChemistryError as exc:
        parser.error(str(exc))
    targets = {t.strip() for t in args.targets.split(",") if t.strip()}
    print(f"| system | decorations | phases | {' | '.join(f'≤ {k}' for k in CUTS)} | ranks (phase: rank) |")
    print(f"|---|---|---|{'---|' * len(CUTS)}---|")
    totals, n_phases = np.zeros(len(CUTS)), 0
    start = time.process_time()
    for system in systems:
        phases, n = ranks(system, max_atoms=args.max_atoms, targets=targets)
        hits = [sum(1 for *_, r in phases if r is not None and r < k) for k in CUTS]
        totals += hits
        n_phases += len(phases)
        listed = ", ".join(f"{f} {p.split(':')[1]}: {'–' if r is None else r}" for _, f, p, r in phases)
        print(f"| {system} | {n} | {len(phases)} | {' | '.join(map(str, hits))} | {listed} |")
    if n_phases:
        shares = " | ".join(f"{h / n_phases:.0%}" for h in totals)
        print(f"| all | | {n_phases} | {shares} | |")
    print(f"# CPU {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()
