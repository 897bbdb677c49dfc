"""Continue a pool's unconverged screening relaxations to convergence, and record where they end.

    OMP_NUM_THREADS=1 python -m benchmarks.rescreen_pool --pool benchmarks/pools/li-co-o_mlff.json.gz \
        --steps 500 --workers 2 --progress /tmp/rescreen-li-co-o.jsonl

A pool stores each candidate at the geometry its screening relaxation reached within the build's step budget
(`--relax-steps`, 60). In the oxide and phosphate pools most random-search and diffusion candidates stopped there
unconverged, so the emulator saw them far above their minimum, and the acquisition replay could not pick them.
This script takes every candidate whose screening relaxation did not converge and relaxes it further with the
same pretrained emulator (`loop.runtime.tasks.relax_chunk`, the screening stage's own task: FIRE and a cell filter on the
ensemble mean, `--fmax` eV/Å), from the stored geometry, up to `--steps` steps in all. Per rescreened candidate
the pool gains

* ``rescreen``: the new geometry, the steps taken in all, whether it converged, and whether it collapsed;
* ``emulator.member_energy_per_atom_rescreened``: the pretrained members' energies there (eV/atom);
* ``rescreen_basin``: whether the new geometry is the oracle-relaxed crystal (the campaign's same-crystal rule,
  `loop.science.acquisition.one_per_crystal`) and the emulator's energy difference between the two (eV/atom).

The oracle's labels are not recomputed: the oracle relaxed each candidate from the stored geometry, and the
basin record says how often the emulator's own minimum is the oracle's. The replay (`benchmarks.acquisition --screening
rescreened`) uses the new geometries and energies. Units: eV/atom, eV/Å, Å.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lib.pools import compact_structure, read_pool, structure_from_compact, write_pool

log = logging.getLogger("rescreen_pool")
CHUNK = 2  # structures per task: small, so the two workers stay busy to the end


def relax_further(
    items: list[tuple[str, dict[str, Any]]], settings: dict[str, Any], fmax: float, steps: dict[str, int]
) -> list[dict[str, Any]]:
    """Worker: relax each (hash, compact structure) for its remaining steps; energies per member at the end."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = "1"
    warnings.filterwarnings("ignore")
    from pymatgen.core import Structure

    from loop.runtime.tasks import load_emulator, relax_chunk

    out = []
    for h, compact in items:
        structure = structure_from_compact(compact)
        res = relax_chunk([structure.as_dict()], None, settings, fmax, steps[h])[0]
        relaxed = Structure.from_dict(res["structure"])
        members = load_emulator(settings, None).predict([relaxed], forces=False, stress=False)
        out.append(
            {
                "hash": h,
                "structure": compact_structure(relaxed),
                "steps_here": int(res["n_steps"]),
                "converged": bool(res["converged"]),
                "collapsed": bool(res["collapsed"]),
                "member_energy_per_atom": np.round(members.member_energy_per_atom[:, 0], 6).tolist(),
            }
        )
    return out


def basin(entry: dict[str, Any], rescreened: dict[str, Any]) -> dict[str, Any] | None:
    """Is the emulator's new minimum the oracle-relaxed crystal (the campaign's same-crystal rule,
    `loop.science.acquisition.one_per_crystal`); the emulator's energy difference between the two (eV/atom)."""
    from loop.science.acquisition import one_per_crystal

    if "oracle_relaxed_structure" not in entry:
        return None
    new = structure_from_compact(rescreened["structure"])
    oracle = structure_from_compact(entry["oracle_relaxed_structure"])
    at_oracle = entry["emulator"].get("member_energy_per_atom_at_oracle_geometry")
    diff = (
        float(np.mean(rescreened["member_energy_per_atom"]) - np.mean(at_oracle)) if at_oracle else math.nan
    )
    same = not one_per_crystal([new], labelled=[(oracle.composition.reduced_formula, lambda: oracle)])
    return {"matches_oracle": same, "emulator_minus_at_oracle": diff}


def rescreen(args: argparse.Namespace) -> dict[str, Any]:
    pool_path = Path(args.pool)
    pool = read_pool(pool_path)
    settings = pool["emulator"]["settings"]
    todo = {
        e["hash"]: e
        for e in pool["entries"]
        if e["role"] == "candidate" and not e["screen"].get("converged", True) and "rescreen" not in e
    }
    done: dict[str, dict[str, Any]] = {}
    progress = Path(args.progress) if args.progress else None
    if progress and progress.is_file():
        for line in progress.read_text().splitlines():
            row = json.loads(line)
            if row["hash"] in todo:
                done[row["hash"]] = row
    remaining = {
        h: max(1, args.steps - int(e["screen"].get("n_steps") or 0)) for h, e in todo.items() if h not in done
    }
    log.info("%d unconverged candidates, %d already rescreened", len(todo), len(done))
    items = [(h, todo[h]["structure"]) for h in remaining]
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    started = time.time()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as ex:
        futures = [ex.submit(relax_further, c, settings, args.fmax, remaining) for c in chunks]
        for fut in as_completed(futures):
            for row in fut.result():
                done[row["hash"]] = row
                if progress:
                    with progress.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
            log.info("%d / %d rescreened, %.0f s", len(done), len(todo), time.time() - started)
    for h, e in todo.items():
        row = done[h]
        e["rescreen"] = {
            "structure": row["structure"],
            "n_steps": int(e["screen"].get("n_steps") or 0) + row["steps_here"],
            "converged": row["converged"],
            "collapsed": row["collapsed"],
            "fmax": args.fmax,
        }
        e["emulator"]["member_energy_per_atom_rescreened"] = row["member_energy_per_atom"]
        e["rescreen_basin"] = basin(e, row)
    basins = [e["rescreen_basin"] for e in todo.values() if e["rescreen_basin"]]
    summary = {
        "unconverged_before": len(todo),
        "converged_after": sum(e["rescreen"]["converged"] for e in todo.values()),
        "collapsed_after": sum(e["rescreen"]["collapsed"] for e in todo.values()),
        "step_budget": args.steps,
        "fmax": args.fmax,
        "matches_oracle_minimum": sum(b["matches_oracle"] for b in basins),
        "with_oracle_minimum": len(basins),
        "median_abs_emulator_minus_at_oracle": float(
            np.nanmedian([abs(b["emulator_minus_at_oracle"]) for b in basins])
        )
        if basins
        else math.nan,
        "wall_time_s": round(time.time() - started, 1),
    }
    pool.setdefault("build", {})["rescreen"] = {
        **summary,
        "command": "python -m benchmarks.rescreen_pool "
        + " ".join(a for a in sys.argv[1:] if not a.startswith("/") and "progress" not in a),
    }
    write_pool(pool, Path(args.out or pool_path))
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="pool file from benchmarks.build_pool")
    p.add_argument("--steps", type=int, default=500, help="screening steps in all, earlier ones included")
    p.add_argument("--fmax", type=float, default=0.1, help="eV/Å, the screening's convergence threshold")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--progress", help="JSON-lines file of finished candidates, so a stopped run goes on")
    p.add_argument("--out", help="write here instead of updating the pool file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore")
    args = parse_args(argv)
    if not Path(args.pool).is_file():
        print(f"rescreen_pool: {args.pool}: no such pool file", file=sys.stderr)
        return 2
    if args.steps < 1 or args.fmax <= 0:
        print("rescreen_pool: --steps must be ≥ 1 and --fmax > 0 eV/Å", file=sys.stderr)
        return 2
    print(json.dumps(rescreen(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
