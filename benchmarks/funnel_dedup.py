"""Benchmark: deduplicate 10,000 candidates against 20,000 known crystals (target: <= 2 min on 2 cores).

Known set: 20,000 mp_20 crystals (origin "seed"). Candidates: disguised copies of known crystals (rotated,
site-permuted supercells, rattled by 0.02 Å; all must be caught), the held-out mp_20 crystals, and
substitution candidates from mp_20 parents, up to the requested total.

Run by hand (not part of the test suite):
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.funnel_dedup [--known 20000] [--candidates 10000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from benchmarks.lib.timing import Stopwatch, load_average
from generator.base import Candidate, GenerationContext
from generator.seeds import load_seeds
from generator.substitution import SubstitutionGenerator, SubstitutionSettings
from loop.science.funnel import Funnel, FunnelConfig, KnownIndex


def disguise(structure: Structure, *, rng: np.random.Generator) -> Structure:
    """Rotated, permuted, supercell, slightly rattled copy of a structure."""
    sc = structure.copy()
    sc.make_supercell(
        [[1, 1, 0], [0, 1, 0], [0, 0, 2]] if len(sc) <= 10 else [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    )
    rot = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
    perm = rng.permutation(len(sc))
    cart = sc.cart_coords[perm] + rng.normal(scale=0.02, size=(len(sc), 3))
    return Structure(
        Lattice(sc.lattice.matrix @ rot.T),
        [sc[i].specie for i in perm],
        cart @ rot.T,
        coords_are_cartesian=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--known", type=int, default=20000)
    parser.add_argument("--candidates", type=int, default=10000)
    parser.add_argument("--copies", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def record(name: str, watch: Stopwatch) -> None:
        timings[name] = watch.wall_s()
        cpu[name] = watch.cpu_s()

    t0 = Stopwatch()
    everything = load_seeds(seed=args.seed)
    record("parse_cifs_s", t0)
    known, held_out = everything[: args.known], everything[args.known :]

    t0 = Stopwatch()
    index = KnownIndex()
    stored = [(k.id, index.add(id=k.id, structure=k.structure, origin="seed").to_str()) for k in known]
    record("index_from_structures_s", t0)

    by_id = {k.id: k.structure for k in known}
    t0 = Stopwatch()
    rebuilt = KnownIndex()
    for ident, fp in stored:
        rebuilt.add(id=ident, structure=lambda i=ident: by_id[i], fp=fp, origin="seed")
    record("index_from_fingerprints_s", t0)

    picks = rng.choice(len(known), size=min(args.copies, len(known)), replace=False)
    copies = [
        Candidate(structure=disguise(known[i].structure, rng=rng), source="copy", parent=known[i].id)
        for i in picks
    ]
    pool = copies + [Candidate(structure=k.structure, source="mp20_held_out") for k in held_out]
    t0 = Stopwatch()
    n_sub = max(0, args.candidates - len(pool))
    parents = load_seeds(limit=n_sub, seed=args.seed + 1)  # parents overlap the known set on purpose
    generator = SubstitutionGenerator(settings=SubstitutionSettings(max_candidates_per_parent=4))
    pool += generator.generate(n=n_sub, context=GenerationContext(known=parents), seed=args.seed)
    record("make_substitution_candidates_s", t0)
    order = rng.permutation(len(pool))[: args.candidates]
    batch = [pool[i] for i in order]

    dedup_only = FunnelConfig(charge_balance="off", max_atoms=None, min_distance=0.0, min_distance_factor=0.0)
    t0 = Stopwatch()
    _, report = Funnel(dedup_only, known=rebuilt).run(batch)
    record("dedup_s", t0)
    caught = sum(1 for r in report.rejections if batch[r.index].source == "copy")
    n_copies = sum(1 for c in batch if c.source == "copy")
    # a copy that survives is a bucketing miss only if plain StructureMatcher matches it to its original
    matcher = StructureMatcher()
    missed = [batch[i] for i in report.kept_indices if batch[i].source == "copy"]
    bucketing_misses = sum(matcher.fit(by_id[c.parent], c.structure) for c in missed)

    t0 = Stopwatch()
    _, report_full = Funnel(FunnelConfig(), known=rebuilt).run(batch)
    record("full_funnel_s", t0)

    result = {
        "known": len(known),
        "candidates": len(batch),
        "by_source": {
            s: sum(c.source == s for c in batch) for s in ("copy", "mp20_held_out", "substitution")
        },
        "dedup_removed": {k: v for k, v in report.removed.items() if v},
        "copies_caught": f"{caught}/{n_copies}",
        "copies_missed_although_structurematcher_matches": bucketing_misses,
        "full_funnel_removed": {k: v for k, v in report_full.removed.items() if v},
        "full_funnel_kept": report_full.n_kept,
        "wall_s": {k: round(v, 1) for k, v in timings.items()},
        "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
        "load_average": load_average(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
