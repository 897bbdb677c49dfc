"""Recall lost by the cheap screening tier: how many oracle hits of a labelled pool its cut would not have relaxed.

    OMP_NUM_THREADS=1 python -m benchmarks.build_pool --system Li-Al --n 120 --oracle mlff \
        --workdir /tmp/pool-li-al --out /tmp/pool-li-al.json.gz
    OMP_NUM_THREADS=1 python -m benchmarks.tier_recall --pool /tmp/pool-li-al.json.gz --workdir /tmp/pool-li-al

A pool file (`benchmarks.build_pool`) holds every candidate's emulator-relaxed structure, its screening energy
and its oracle label, but not the structure as generated, which is what the cheap tier sees; the build's workdir
(its campaign store) still holds it (`pool_candidates`: each relaxed candidate's generated parent). So a pool built
with its workdir kept can be replayed through the tiers:

1. the cheap tier (`loop.runtime.screening_tiers.cheap_estimates`, the campaign's code: the pretrained ensemble's energy
   after `--steps` relaxation steps from the generated geometry, or a single point with 0) for every candidate;
2. both tiers placed on the same hull, the pretrained emulator's own energies of the pool's references (so the
   emulator's offset from the oracle's level of theory cancels, as the refit does in a campaign);
3. the cut (`loop.runtime.screening_tiers.relaxed_share`) at the default `screening` settings, at the margin alone
   (no best fraction, floor 1) for several margins, and with the floor and best fraction that a round of 10⁴
   would have (scaled to the pool size);
4. the ground truth is the pool's: a hit is a candidate whose oracle E_hull (against the hull of all references and
   candidates) is within `--near-stable` (0.05 and 0.01 eV/atom reported).

Reported: the candidates relaxed under each cut, the hits it would have dropped, and the spread of (cheap − relaxed)
E_hull per generator (how far generated cells sit above their relaxed energy). Units: eV/atom.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lib.pools import pool_candidates, read_pool
from benchmarks.lib.report import emit_json

MARGINS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
THRESHOLDS = (0.05, 0.01)


def _own_hull(pool: dict[str, Any]) -> Any:
    """The pretrained emulator's hull of the pool's references (mean member energy at the oracle's geometry)."""
    from pymatgen.core import Composition

    from loop.science.hull import HullEntry, OracleHull

    entries = []
    for e in pool["entries"]:
        if e["role"] != "reference":
            continue
        em = e.get("emulator") or {}
        members = em.get("member_energy_per_atom_at_oracle_geometry") or em.get("member_energy_per_atom")
        if members:
            entries.append(
                HullEntry(
                    entry_id=e["hash"],
                    composition=Composition(e["formula"]),
                    energy_per_atom=float(np.mean(members)),
                )
            )
    return OracleHull.from_entries(entries)


def replay(pool_path: Path, workdir: Path, *, members: int, steps: int) -> dict[str, Any]:
    """Cheap tier, relaxed tier and truth of every candidate of the pool, and the cuts."""
    from loop.runtime.screening_tiers import TiersConfig, cheap_estimates, relaxed_share
    from loop.store import CampaignStore

    pool = read_pool(pool_path)
    store = CampaignStore.in_workdir(workdir)
    try:
        generated = {c["hash"]: c["generated_hash"] for c in pool_candidates(store)}
        cands = [e for e in pool["entries"] if e["role"] == "candidate" and e["hash"] in generated]
        structures = store.get_structures([generated[e["hash"]] for e in cands])
    finally:
        store.close()
    missing = sum(1 for e in pool["entries"] if e["role"] == "candidate") - len(cands)
    hull = _own_hull(pool)
    unrelaxed = [structures[generated[e["hash"]]] for e in cands]
    estimates = cheap_estimates(
        unrelaxed,
        hull=hull,
        emulator_settings={"kind": "chgnet_ensemble", "n_members": members},
        checkpoint=None,
        executor=None,
        steps=steps,
    )
    relaxed = hull.evaluate(
        [structures[generated[e["hash"]]].composition for e in cands],
        [e["screen"]["energy_per_atom"] for e in cands],
        [e["screen"]["energy_per_atom_std"] for e in cands],
    ).e_above_hull
    truth = np.array([e["e_hull"] if e.get("e_hull") is not None else math.inf for e in cands], dtype=float)
    n = len(cands)

    def cut(settings: TiersConfig) -> dict[str, Any]:
        taken = set(relaxed_share(estimates, settings=settings).indices)
        out: dict[str, Any] = {"n_relaxed": len(taken), "share": round(len(taken) / n, 3)}
        for t in THRESHOLDS:
            hits = [i for i in range(n) if truth[i] <= t]
            out[f"hits_{t}"] = len(hits)
            out[f"dropped_{t}"] = sum(1 for i in hits if i not in taken)
        return out

    cuts: dict[str, Any] = {"default (margin 0.5, best 10 %, floor 64, cap 2000)": cut(TiersConfig())}
    cuts["default without sigma"] = cut(TiersConfig(sigma=0.0))
    for m in MARGINS:
        cuts[f"margin {m} alone"] = cut(TiersConfig(margin=m, keep_fraction=0.0, floor=1))
    # A round of 10^4 with the default floor of 64: the floor is < 1 % of it, so only margin and best 10 % count.
    cuts["default at scale (margin 0.5, best 10 %, floor 1)"] = cut(TiersConfig(floor=1))
    cuts["margin 0.2, best 10 %, floor 1"] = cut(TiersConfig(margin=0.2, floor=1))
    gap: dict[str, Any] = {}
    for source in sorted({e["source"] for e in cands}):
        d = np.array(
            [
                est.e_hull - r
                for e, est, r in zip(cands, estimates, relaxed, strict=True)
                if e["source"] == source and est.placed and math.isfinite(r)
            ]
        )
        if len(d):
            gap[source] = {
                "n": len(d),
                "median": round(float(np.median(d)), 3),
                "p90": round(float(np.quantile(d, 0.9)), 3),
                "max": round(float(d.max()), 3),
            }
    dropped_hits = [
        {
            "formula": e["formula"],
            "source": e["source"],
            "truth_e_hull": round(float(truth[i]), 3),
            "cheap_e_hull": round(est.e_hull, 3),
            "cheap_std": round(est.e_hull_std, 3),
            "relaxed_e_hull": round(float(relaxed[i]), 3),
        }
        for i, (e, est) in enumerate(zip(cands, estimates, strict=True))
        if truth[i] <= THRESHOLDS[0] and est.bound(1.0) > 0.5
    ]
    return {
        "pool": str(pool_path),
        "system": pool["system"],
        "oracle": pool["oracle"].get("kind") if isinstance(pool["oracle"], dict) else pool["oracle"],
        "cheap_steps": steps,
        "n_candidates": n,
        "n_without_generated_structure": missing,
        "cheap_minus_relaxed_e_hull": gap,
        "cuts": cuts,
        "hits_beyond_default_margin": dropped_hits,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="pool file (.json.gz) of benchmarks.build_pool")
    p.add_argument("--workdir", required=True, help="the workdir that build wrote (its campaign store)")
    p.add_argument("--members", type=int, default=4, help="emulator ensemble members (as the build used)")
    p.add_argument(
        "--steps", type=int, help="the cheap tier's relaxation steps (0: single point; default: config's)"
    )
    p.add_argument("--out", help="also write the report here (JSON)")
    args = p.parse_args()
    from loop.runtime.screening_tiers import TiersConfig

    steps = TiersConfig().steps if args.steps is None else args.steps
    report = replay(Path(args.pool), Path(args.workdir), members=args.members, steps=steps)
    emit_json(report, out=args.out)


if __name__ == "__main__":
    main()
