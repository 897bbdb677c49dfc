"""A bare GPAW calculation (no matloop), the reference for the CLI test: prints energies per atom as JSON."""

from __future__ import annotations

import json
import sys

from ase.io import read
from gpaw import GPAW, PW, FermiDirac


def main() -> None:
    *paths, cutoff, density = sys.argv[1:]
    out = []
    for path in paths:
        atoms = read(path)
        atoms.calc = GPAW(
            mode=PW(float(cutoff)),
            xc="PBE",
            kpts={"density": float(density), "gamma": True},
            occupations=FermiDirac(0.05),
            txt=None,
        )
        out.append(atoms.get_potential_energy() / len(atoms))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
