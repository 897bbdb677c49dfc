"""Compare the outcomes of two campaigns, e.g. the same config run by two versions of the code.

Reads both stores with plain read-only sqlite (any schema version), so a store written before a restructuring
compares with one written after it. This is the one benchmark that does not read through `loop.store.CampaignStore`,
on purpose: opening a store with it migrates an older schema in place (and refuses a newer one), which would change
the very store under comparison, and the comparison must hold across code versions whose store API differs. Timings,
run ids and file paths are left out; energies are rounded to 1e-6 eV/atom.

    python -m benchmarks.compare_campaigns WORKDIR_A WORKDIR_B

Exit code 0 when every table is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
from pathlib import Path
from typing import Any


def _r6(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def outcome(workdir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The rows that define a campaign's outcome, per table, sorted."""
    conn = sqlite3.connect(f"file:{workdir / 'matloop.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row

    def rows(sql: str) -> list[sqlite3.Row]:
        return list(conn.execute(sql))

    try:
        return {
            "structures": sorted(
                (r["hash"], r["source"], r["round"])
                for r in rows("SELECT hash, source, round FROM structures")
            ),
            "candidates": sorted(
                (r["round"], r["hash"], r["passed"], r["reason"]) for r in rows("SELECT * FROM candidates")
            ),
            "predictions": sorted(
                (
                    r["round"],
                    r["hash"],
                    r["relaxed_hash"],
                    _r6(r["energy_per_atom"]),
                    _r6(r["energy_per_atom_std"]),
                    _r6(r["e_hull"]),
                    _r6(r["e_hull_std"]),
                )
                for r in rows("SELECT * FROM predictions")
            ),
            "queries": sorted(
                (r["round"], r["hash"], r["rank"], _r6(r["score"])) for r in rows("SELECT * FROM queries")
            ),
            "oracle": sorted(
                (r["hash"], r["status"], _r6(r["energy"])) for r in rows("SELECT * FROM oracle_results")
            ),
            "stability": sorted(
                (r["round"], r["hash"], _r6(r["e_hull"]), r["stable"], r["near_stable"])
                for r in rows("SELECT * FROM stability")
            ),
        }
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="first campaign workdir (holds matloop.db)")
    parser.add_argument("b", type=Path, help="second campaign workdir")
    args = parser.parse_args()
    for workdir in (args.a, args.b):
        if not (workdir / "matloop.db").is_file():
            parser.error(f"{workdir}: no matloop.db here")
    a, b = outcome(args.a), outcome(args.b)
    same = True
    for table in a:
        if a[table] == b[table]:
            print(f"{table}: identical ({len(a[table])} rows)")
            continue
        same = False
        only_a, only_b = set(a[table]) - set(b[table]), set(b[table]) - set(a[table])
        print(
            f"{table}: DIFFERENT ({len(a[table])} vs {len(b[table])} rows; {len(only_a)} only in A, {len(only_b)} only in B)"
        )
        if table == "predictions":
            pa = {row[:2]: row for row in a[table]}
            pb = {row[:2]: row for row in b[table]}
            diffs = [
                abs(pa[k][3] - pb[k][3])
                for k in pa.keys() & pb.keys()
                if pa[k][3] is not None and pb[k][3] is not None
            ]
            if diffs:
                print(
                    f"  {len(diffs)} candidates in both: |ΔE| median {statistics.median(diffs):.2e}, "
                    f"max {max(diffs):.2e} eV/atom"
                )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
