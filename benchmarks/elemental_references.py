"""Round 0's elemental references at a campaign's own oracle settings: which polymorph is each hull end?

Builds the campaign's reference pool (`loop.work.references.reference_pool`: bundled polymorphs, ASE's reference
states and the fcc, bcc and hcp cells), labels its elemental crystals through the campaign's own labelling path
(`loop.runtime.labelling.label_hashes`, the config's `oracle:` section, oracle relaxation included) in a scratch workdir, and
prints each one's energy per atom, its distance to the lowest polymorph of its element (meV/atom) and which one is
the hull end. A rerun with the same workdir reuses every stored label.

Usage:
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.elemental_references configs/demo.yaml \
        --workdir runs/elemental_references
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from loop.config import load_config
from loop.runtime.labelling import label_hashes
from loop.science.structures import space_group
from loop.store import CampaignStore
from loop.work.references import reference_pool

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "elemental_references")
    opts = parser.parse_args()
    config = load_config(opts.config)
    elements = [k for k in reference_pool(config) if len(k.structure.composition) == 1]
    store = CampaignStore.in_workdir(opts.workdir)
    hashes = {k.id: store.add_structure(k.structure, source="seed", parent=k.id, round=0) for k in elements}
    started = time.time()
    results = label_hashes(
        store, list(hashes.values()), settings=config.oracle, workdir=opts.workdir, round=0
    )
    wall = time.time() - started
    rows = []
    for k in elements:
        r = results[hashes[k.id]]
        sg = space_group(k.structure, with_number=False)
        energy = r.energy_per_atom if r.ok else None
        rows.append((k.structure.composition.reduced_formula, k.id, sg, len(k.structure), energy))
    lowest = {}
    for formula, _, _, _, e in rows:
        if e is not None:
            lowest[formula] = min(e, lowest.get(formula, e))
    print(f"{config.oracle.kind} {config.oracle.settings_hash()[:12]}, {len(rows)} cells, {wall:.0f} s wall")
    print("| element | reference | space group | atoms | E (eV/atom) | above lowest (meV/atom) |")
    print("|---|---|---|---|---|---|")
    for formula, ident, sg, n, e in sorted(rows, key=lambda r: (r[0], r[4] if r[4] is not None else 1e9)):
        above = "failed" if e is None else f"{1000 * (e - lowest[formula]):.1f}"
        end = " (hull end)" if e is not None and e == lowest[formula] else ""
        shown = "-" if e is None else f"{e:.4f}"
        print(f"| {formula} | {ident}{end} | {sg} | {n} | {shown} | {above} |")
    store.close()


if __name__ == "__main__":
    main()
