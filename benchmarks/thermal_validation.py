"""Thermal validation of the MD check: a known stable crystal survives, high-energy random structures do not.

`loop.design.thermal.thermal_stability` (relax with the model, NVT MD, quench the last frame, StructureMatcher
against the relaxed start with ltol 0.2 / stol 0.3 / angle_tol 5°, framework Lindemann ratio ≤ 0.15, Li mobile)
with the shipped CHGNet 0.3.0 on:
* γ-LiAlO2 (mp-3427, bundled under generator/data; melts at ~1900 K), the known stable crystal;
* random LiAlO2 crystals from `generator.random_search` (pyxtal, random space group and Wyckoff positions, 8 atoms
  per cell), whose model-relaxed energy above the relaxed γ-LiAlO2 is printed.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.thermal_validation [--temperature 1000] [--duration 1.0]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.design_structures import bundled
from emulator.force_field import load_force_field, relax_structure
from generator.base import GenerationContext
from generator.random_search import RandomSearchGenerator, RandomSearchSettings
from loop.design.thermal import thermal_stability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperature", type=float, default=1000.0, help="K")
    parser.add_argument("--duration", type=float, default=0.5, help="production ps")
    parser.add_argument("--equilibration", type=float, default=0.1, help="ps")
    parser.add_argument("--min-length", type=float, default=5.0, help="Å, supercell width")
    parser.add_argument("--random", type=int, default=2, help="random structures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    known = bundled("mp-3427")
    randoms = RandomSearchGenerator(settings=RandomSearchSettings(formulas=["LiAlO2"], max_atoms=8)).generate(
        n=args.random, context=GenerationContext(), seed=0
    )
    model = load_force_field(checkpoint=None)
    reference = relax_structure(structure=known, model=model, fmax=0.02, steps=300).energy_per_atom
    cases = [("γ-LiAlO2 (mp-3427)", known, "pass")]
    cases += [
        (f"random LiAlO2 #{i} (space group {c.info.get('space_group', '?')})", c.structure, "fail")
        for i, c in enumerate(randoms)
    ]
    print(
        f"T = {args.temperature:g} K, {args.duration:g} ps production after {args.equilibration:g} ps, "
        f"supercell ≥ {args.min_length:g} Å, Li mobile\n"
    )
    print(
        "| structure | E above relaxed γ (eV/atom) | atoms | mean T (K) | quench matches | Lindemann | "
        "ΔE quench (eV/atom) | verdict | expected | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    agree = 0
    for label, structure, expected in cases:
        above = (
            relax_structure(structure=structure, model=model, fmax=0.02, steps=300).energy_per_atom
            - reference
        )
        start = time.perf_counter()
        result = thermal_stability(
            structure=structure,
            temperature=args.temperature,
            duration=args.duration,
            equilibration=args.equilibration,
            min_length=args.min_length,
            mobile_species=["Li"],
        )
        seconds = time.perf_counter() - start
        agree += result.status.value == expected
        print(
            f"| {label} | {above:.3f} | {result.n_atoms} | {result.mean_temperature:.0f} | {result.matched} "
            f"(rms {result.rms_distance if result.rms_distance is None else round(result.rms_distance, 3)}) "
            f"| {result.lindemann_ratio:.3f} | {result.energy_change:+.3f} | {result.status.value} | {expected} "
            f"| {seconds:.0f} |",
            flush=True,
        )
        print(f"  reason: {result.reason}; quench converged: {result.quench_converged}", flush=True)
    print(f"\nverdicts as expected: {agree}/{len(cases)}")


if __name__ == "__main__":
    main()
