"""Phonon validation of the dynamical-stability check: stable crystals show no imaginary mode, unstable ones do.

Known dynamically stable crystals (diamond Si, rock-salt NaCl and MgO) and known unstable high-symmetry parents
(cubic Pm-3m BaTiO3 and KNbO3, the paraelectric parents whose polar Γ mode condenses into their ferroelectric
phases; bcc Zr, stable only above 1136 K by anharmonic stabilisation, harmonically unstable at 0 K along Γ-N in
DFT) through `loop.design.dynamical.dynamical_stability` with its defaults (relax with the model, 0.03 Å
plus-minus displacements, supercell ≥ 10 Å, 8x8x8 Γ-centred mesh, tolerance 0.1 THz), shipped CHGNet 0.3.0.
Structures: the Materials Project entries bundled under generator/data.

`--scan` also prints the lowest mode and the Γ optical frequency of the stable crystals against the displacement
amplitude (why the default is 0.03 Å).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.phonon_validation [--scan]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.lib.cells import bundled
from emulator.phonons import PhononResult, phonon_spectrum
from loop.design.dynamical import dynamical_stability

CASES = [
    # (label, material id, expected verdict)
    ("Si diamond", "mp-149", "pass"),
    ("NaCl rock salt", "mp-22862", "pass"),
    ("MgO rock salt", "mp-1265", "pass"),
    ("BaTiO3 cubic Pm-3m", "mp-2998", "fail"),
    ("KNbO3 cubic Pm-3m", "mp-935811", "fail"),
    ("Zr bcc", "mp-41", "fail"),
]
SCAN = (0.005, 0.01, 0.02, 0.03, 0.05)


def optical_at_gamma(result: PhononResult) -> np.ndarray:
    """Γ frequencies without the three acoustic ones (smallest magnitude), THz."""
    gamma = np.array(result.gamma_frequencies)
    return np.sort(np.delete(gamma, np.argsort(np.abs(gamma))[:3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", type=int, default=8, help="q-mesh points per axis")
    parser.add_argument("--scan", action="store_true", help="also scan the displacement amplitude")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| crystal | id | atoms in supercell | lowest frequency (THz) | at q | imaginary modes | Γ optical (THz) "
        "| verdict | expected | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    agree = 0
    for label, material_id, expected in CASES:
        start = time.perf_counter()
        result = dynamical_stability(structure=bundled(material_id), mesh=(args.mesh,) * 3)
        seconds = time.perf_counter() - start
        ph = result.phonons
        assert ph is not None, result.reason
        optical = ", ".join(f"{f:.2f}" for f in sorted({round(float(x), 2) for x in optical_at_gamma(ph)}))
        q = "(" + ", ".join(f"{x:.2f}" for x in ph.min_frequency_q) + ")"
        n_super = len(ph.structure) * ph.supercell[0] * ph.supercell[1] * ph.supercell[2]
        agree += result.status.value == expected
        print(
            f"| {label} | {material_id} | {n_super} | {ph.min_frequency:.2f} | {q} | {ph.n_imaginary}/{ph.n_modes} "
            f"| {optical or '-'} | {result.status.value} | {expected} | {seconds:.0f} |"
        )
    print(f"\nverdicts as expected: {agree}/{len(CASES)}")
    if args.scan:
        print("\n| crystal | displacement (Å) | lowest frequency (THz) | lowest Γ optical (THz) |")
        print("|---|---|---|---|")
        for label, material_id, expected in CASES:
            if expected != "pass":
                continue
            for amplitude in SCAN:
                ph = phonon_spectrum(
                    structure=bundled(material_id), displacement=amplitude, mesh=(args.mesh,) * 3
                )
                print(f"| {label} | {amplitude:g} | {ph.min_frequency:.2f} | {optical_at_gamma(ph)[0]:.2f} |")


if __name__ == "__main__":
    main()
