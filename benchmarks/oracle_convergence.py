"""Convergence of GPAW energy *differences* for the demo system Li-Al, and the cost of each setting.

Stability verdicts depend on energy differences (polymorph energies, formation energies, distances to the hull),
so this measures those, not total energies. Every calculation runs through the project's `GPAWOracle` (child
process, Niggli reduction, Γ-centred mesh from the k-point density), so the cost per label is what a campaign pays.

Cells (fixed geometries near equilibrium; lengths Å): fcc, hcp and bcc Al; bcc, fcc and cI16 Li; B32 (NaTl-type)
LiAl with a = 6.37; the bundled mp_20 compounds Li3Al2 (mp-16506) and LiAl3 (mp-975906).
Energy differences (meV/atom): Al hcp-fcc and bcc-fcc, Li fcc-bcc and cI16-bcc, and the formation energies of
B32 LiAl, Li3Al2 and LiAl3 against fcc Al and bcc Li.

Reference: `--ref-cutoff` eV, k-point density `--ref-density` Å⁻¹, Marzari-Vanderbilt smearing `--ref-width` eV.
Scanned: every k-point density x smearing width at `--cutoff`, then every cutoff at one k/smearing setting
(cutoff errors measured against the reference cutoff at that same k/smearing setting).

Results are appended to a JSON-lines cache (`--cache`) so an interrupted run resumes where it stopped.

Usage:
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.oracle_convergence [--cache FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from benchmarks.lib.cells import li_al_cells
from benchmarks.lib.timing import Stopwatch, children_cpu_s, load_average
from oracle import GPAWOracle, GPAWSettings
from oracle.ase_runner import kpoint_mesh

DIFFERENCES: dict[str, tuple[str, str]] = {
    "Al hcp-fcc": ("Al_hcp", "Al_fcc"),
    "Al bcc-fcc": ("Al_bcc", "Al_fcc"),
    "Li fcc-bcc": ("Li_fcc", "Li_bcc"),
    "Li cI16-bcc": ("Li_cI16", "Li_bcc"),
}
FORMATION = ["LiAl_B32", "Li3Al2", "LiAl3"]


def differences(e: dict[str, float], structures: dict[str, Structure]) -> dict[str, float]:
    """The energy differences of the module docstring, eV/atom, from energies per atom `e` (eV/atom)."""
    out = {name: e[a] - e[b] for name, (a, b) in DIFFERENCES.items() if a in e and b in e}
    for name in (n for n in FORMATION if n in e):
        comp = structures[name].composition
        x_li = comp.get_atomic_fraction("Li")
        out[f"{name} formation"] = e[name] - x_li * e["Li_bcc"] - (1 - x_li) * e["Al_fcc"]
    return out


def label(
    cache: Path,
    tmp: Path,
    name: str,
    s: Structure,
    *,
    cutoff: float,
    density: float,
    width: float,
    report_only: bool = False,
) -> dict | None:
    key = {"name": name, "cutoff": cutoff, "density": density, "width": width}
    if cache.exists():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            if all(row.get(k) == v for k, v in key.items()):
                return row
    if report_only:
        return None
    settings = GPAWSettings(
        cutoff=cutoff,
        kpoint_density=density,
        smearing="marzari-vanderbilt",
        smearing_width=width,
        relax_steps=0,  # fixed geometries: the differences measure the settings, not the relaxation
        timeout_s=3600,
    )
    watch = Stopwatch(cpu=children_cpu_s)
    result = GPAWOracle(settings).label(s, workdir=tmp / f"{name}-{cutoff}-{density}-{width}")
    wall, cpu = watch.wall_s(), watch.cpu_s()
    if not result.ok:
        raise RuntimeError(f"{name} {key}: {result.reason}")
    row = {
        **key,
        "energy_per_atom": result.energy_per_atom,
        "natoms": len(s),
        "mesh": kpoint_mesh(s, density),
        "wall_s": wall,
        "cpu_s": cpu,
        "n_scf": result.metadata.get("n_scf"),
    }
    with cache.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "oracle_convergence.jsonl"
    )
    parser.add_argument("--cutoff", type=float, default=400.0, help="eV, for the k/smearing scan")
    parser.add_argument("--densities", type=float, nargs="+", default=[2.5, 3.5, 4.5, 6.0], help="Å⁻¹")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.05, 0.1, 0.2], help="eV (MV)")
    parser.add_argument("--cutoffs", type=float, nargs="+", default=[300.0, 350.0, 400.0, 500.0], help="eV")
    parser.add_argument("--cutoff-scan-at", type=float, nargs=2, default=[4.5, 0.1], help="density, width")
    parser.add_argument("--ref-cutoff", type=float, default=500.0)
    parser.add_argument("--ref-density", type=float, default=8.0)
    parser.add_argument("--ref-width", type=float, default=0.05)
    parser.add_argument("--skip", nargs="*", default=[], help="cell names to leave out")
    parser.add_argument("--report-only", action="store_true", help="tables from the cache, computing nothing")
    opts = parser.parse_args()
    structures = {k: v for k, v in li_al_cells().items() if k not in opts.skip}
    print(f"load {load_average()}; cells: " + ", ".join(f"{k} ({len(v)} at.)" for k, v in structures.items()))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def energies(
            cutoff: float, density: float, width: float
        ) -> tuple[dict[str, float], list[float]] | None:
            rows = [
                label(
                    opts.cache,
                    tmp,
                    n,
                    s,
                    cutoff=cutoff,
                    density=density,
                    width=width,
                    report_only=opts.report_only,
                )
                for n, s in structures.items()
            ]
            if any(r is None for r in rows):
                return None
            # CPU time where recorded (it does not depend on how busy the machine was), else wall time.
            return {r["name"]: r["energy_per_atom"] for r in rows}, [
                r.get("cpu_s", r["wall_s"]) for r in rows
            ]

        ref_e, ref_t = energies(opts.ref_cutoff, opts.ref_density, opts.ref_width)
        ref = differences(ref_e, structures)
        print("\nreference", opts.ref_cutoff, opts.ref_density, opts.ref_width, f"total {sum(ref_t):.0f} s")
        print("| difference | reference, meV/atom |\n|---|---|")
        for k, v in ref.items():
            print(f"| {k} | {1000 * v:.1f} |")

        table = []
        for density, width in itertools.product(opts.densities, opts.widths):
            if (got := energies(opts.cutoff, density, width)) is None:
                continue
            e, t = got
            errors = {k: 1000 * (v - ref[k]) for k, v in differences(e, structures).items()}
            table.append((opts.cutoff, density, width, errors, t))
        d_at, w_at = opts.cutoff_scan_at
        top = energies(max(opts.cutoffs), d_at, w_at)
        for cutoff in sorted(opts.cutoffs)[:-1] if top is not None else []:
            if (got := energies(cutoff, d_at, w_at)) is None:
                continue
            e, t = got
            top_diff = differences(top[0], structures)
            errors = {k: 1000 * (v - top_diff[k]) for k, v in differences(e, structures).items()}
            table.append((cutoff, d_at, w_at, errors, t))

    names = list(ref)
    print(
        "\n| cutoff eV | k-density Å⁻¹ | MV width eV | "
        + " | ".join(names)
        + " | max abs error | mean CPU s/label | total CPU s |"
    )
    print("|" + "---|" * (len(names) + 6))
    for cutoff, density, width, errors, t in table:
        worst = max(abs(v) for v in errors.values())
        print(
            f"| {cutoff:g} | {density:g} | {width:g} | "
            + " | ".join(f"{errors[k]:+.1f}" for k in names)
            + f" | **{worst:.1f}** | {np.mean(t):.1f} | {sum(t):.0f} |"
        )
    print(f"\nload {load_average()}")


if __name__ == "__main__":
    main()
