"""Thermal validation of the MD check: a known stable crystal survives, high-energy random structures do not.

`loop.design.thermal.thermal_stability` (relax with the model, NVT MD, quench the last frame, StructureMatcher of
the Li-free framework against the relaxed start's with ltol 0.2 / stol 0.3 / angle_tol 5°, framework Lindemann
ratio ≤ 0.2, Li mobile) with the shipped CHGNet 0.3.0 on:
* γ-LiAlO2 (mp-3427, bundled under generator/data; melts at ~1900 K), the known stable crystal;
* high-energy random LiAlO2 crystals: `--draw` from `generator.random_search` (pyxtal, random space group and
  Wyckoff positions, 8 atoms per cell) relaxed with the model; the `--random` highest of those at least
  `--min-above` eV/atom above the relaxed γ-LiAlO2 are checked (a random draw can land near the hull: one at
  +0.019 eV/atom is a plausible polymorph, and surviving 0.5 ps is no error of the check).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.thermal_validation [--temperature 1000] [--duration 1.0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from pymatgen.core import Structure

from benchmarks.lib.cells import bundled
from emulator.force_field import load_force_field, relax_structure
from generator.base import GenerationContext
from generator.random_search import RandomSearchGenerator, RandomSearchSettings
from loop.design.md_runs import MDSettings
from loop.design.thermal import thermal_stability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperature", type=float, default=1000.0, help="K")
    parser.add_argument("--duration", type=float, default=0.5, help="production ps")
    parser.add_argument("--equilibration", type=float, default=0.1, help="ps")
    parser.add_argument("--min-length", type=float, default=5.0, help="Å, supercell width")
    parser.add_argument("--draw", type=int, default=6, help="random structures generated")
    parser.add_argument("--random", type=int, default=2, help="high-energy random structures checked")
    parser.add_argument(
        "--min-above", type=float, default=0.1, help="eV/atom above γ-LiAlO2 to count as high"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    known = bundled("mp-3427")
    randoms = RandomSearchGenerator(settings=RandomSearchSettings(formulas=["LiAlO2"], max_atoms=8)).generate(
        n=args.draw, context=GenerationContext(), seed=0
    )
    model = load_force_field(checkpoint=None)

    def relaxed_energy(structure: Structure) -> float:
        return relax_structure(structure=structure, model=model, fmax=0.02, steps=300).energy_per_atom

    reference = relaxed_energy(known)
    energies = [relaxed_energy(c.structure) - reference for c in randoms]
    print(
        f"T = {args.temperature:g} K, {args.duration:g} ps production after {args.equilibration:g} ps, "
        f"supercell ≥ {args.min_length:g} Å, Li mobile\n"
    )
    print(
        f"{len(randoms)} random LiAlO2 crystals (8 atoms), model-relaxed energy above relaxed γ-LiAlO2 (eV/atom):"
    )
    for i, (c, e) in enumerate(zip(randoms, energies, strict=True)):
        print(f"  #{i} space group {c.info.get('space_group', '?')}: {e:+.3f}")
    high = [i for i in np.argsort(energies)[::-1] if energies[i] >= args.min_above][: args.random]
    cases = [("γ-LiAlO2 (mp-3427)", known, 0.0, "pass")]
    cases += [
        (
            f"random LiAlO2 #{i} (space group {randoms[i].info.get('space_group', '?')})",
            randoms[i].structure,
            energies[i],
            "fail",
        )
        for i in sorted(high)
    ]
    print(
        f"\nchecked: γ-LiAlO2 and the {len(high)} random crystals ≥ {args.min_above:g} eV/atom above it\n\n"
        "| structure | E above relaxed γ (eV/atom) | atoms | mean T (K) | quenched framework matches | whole cell | "
        "Lindemann | "
        "ΔE quench (eV/atom) | verdict | expected | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    agree = 0
    for label, structure, above, expected in cases:
        start = time.perf_counter()
        result = thermal_stability(
            structure=structure,
            temperature=args.temperature,
            duration=args.duration,
            md=MDSettings(equilibration=args.equilibration, min_length=args.min_length),
            mobile_species=["Li"],
        )
        seconds = time.perf_counter() - start
        agree += result.status.value == expected
        rms = "-" if result.rms_distance is None else f"{result.rms_distance:.3f}"
        print(
            f"| {label} | {above:.3f} | {result.n_atoms} | {result.mean_temperature:.0f} | {result.matched} "
            f"(rms {rms}) | {result.whole_cell_matched} | {result.lindemann_ratio:.3f} | {result.energy_change:+.3f} | {result.status.value} "
            f"| {expected} | {seconds:.0f} |",
            flush=True,
        )
        print(f"  reason: {result.reason}; quench converged: {result.quench_converged}", flush=True)
    print(f"\nverdicts as expected: {agree}/{len(cases)}")


if __name__ == "__main__":
    main()
