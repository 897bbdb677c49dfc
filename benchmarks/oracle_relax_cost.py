"""Cost of the oracle's own relaxation (positions and cell) on demo-like Li-Al cells, against a single point.

A campaign's queried candidates arrive pre-relaxed by the emulator, i.e. close to, but not at, the DFT minimum. This
starts each cell from its near-equilibrium geometry strained by `--strain` (volume scale) and rattled by `--rattle`
Å (seeded), then runs `GPAWOracle` once as a single point and once with the relaxation, and reports wall time,
ionic steps, the energy lowering (meV/atom) and the final max force (eV/Å) and pressure (GPa).

Usage:
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.oracle_relax_cost --kpoint-density 4.5 \
        --smearing-width 0.2 [--cutoff 400] [--relax-steps 20] [--relax-fmax 0.05]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.lib.cells import li_al_cells
from benchmarks.lib.timing import Stopwatch, children_cpu_s, load_average
from oracle import GPAWOracle, GPAWSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cutoff", type=float, default=400.0)
    parser.add_argument("--kpoint-density", type=float, default=4.5)
    parser.add_argument("--smearing-width", type=float, default=0.2)
    parser.add_argument("--relax-steps", type=int, default=20)
    parser.add_argument("--relax-fmax", type=float, default=0.05)
    parser.add_argument("--strain", type=float, default=1.04, help="volume scale of the start")
    parser.add_argument("--rattle", type=float, default=0.05, help="Å, normal displacement per coordinate")
    parser.add_argument("--cells", nargs="+", default=["LiAl_B32", "Li3Al2", "Al_fcc"])
    opts = parser.parse_args()
    rng = np.random.default_rng(0)
    common = {
        "cutoff": opts.cutoff,
        "kpoint_density": opts.kpoint_density,
        "smearing": "marzari-vanderbilt",
        "smearing_width": opts.smearing_width,
    }
    print(
        f"load {load_average()}; settings {common}, relax {opts.relax_steps} steps / {opts.relax_fmax} eV/Å"
    )
    print(
        "| cell | atoms | single point CPU s | relaxation CPU s | steps | converged | ΔE meV/atom | max F eV/Å | P GPa |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    all_cells = li_al_cells()
    with tempfile.TemporaryDirectory() as tmp:
        for name in opts.cells:
            start = all_cells[name].copy()
            start.scale_lattice(start.volume * opts.strain)
            if len(start) > 1:
                for i in range(len(start)):
                    start.translate_sites([i], rng.normal(0, opts.rattle, 3), frac_coords=False)
            watch = Stopwatch(cpu=children_cpu_s)
            single = GPAWOracle(GPAWSettings(**common, relax_steps=0)).label(
                start, workdir=Path(tmp) / f"{name}-sp"
            )
            t_single = watch.cpu_s()
            watch = Stopwatch(cpu=children_cpu_s)
            relaxed = GPAWOracle(
                GPAWSettings(**common, relax_steps=opts.relax_steps, relax_fmax=opts.relax_fmax)
            ).label(start, workdir=Path(tmp) / f"{name}-relax")
            t_relax = watch.cpu_s()
            assert single.ok and relaxed.ok, (single.reason, relaxed.reason)
            drop = 1000 * (relaxed.energy_per_atom - single.energy_per_atom)
            fmax = float(np.linalg.norm(relaxed.forces, axis=1).max())
            pressure = float(-np.mean(relaxed.stress[:3]))
            print(
                f"| {name} | {len(start)} | {t_single:.0f} | {t_relax:.0f} | {relaxed.metadata['relax_steps_taken']} |"
                f" {relaxed.metadata['relax_converged']} | {drop:+.1f} | {fmax:.3f} | {pressure:+.2f} |",
                flush=True,
            )
    print(f"load {load_average()}")


if __name__ == "__main__":
    main()
