"""Composition features for energy-convention offsets that are not per-element shifts.

A reference refit moves each element's reference energy, so it absorbs any offset between two levels of theory
that is linear in the atom fractions. The Materials Project 2020 scheme, which CHGNet's training energies carry,
is not: it corrects a U element (Co, Fe, Mn, ...) only in an oxide or fluoride, and O by the kind of O it is
(oxide, peroxide, superoxide, ozonide), not in O2. Between CHGNet and a raw-energy oracle (SevenNet-0, GPAW) such
an offset is 0.6-1.7 eV per atom of the element concerned. These features give the refit one extra column per
offset, so a linear fit can take it up:

* ``U:<el>``: the atom fraction of a U element when O or F is present (else 0);
* ``O:compound``: the atom fraction of O when another element is present (0 in elemental O);
* ``O:<kind>``: the atom fraction of O in a peroxide, superoxide or ozonide (pymatgen's `oxide_type`).

Units: atom fractions (dimensionless); the fitted coefficients are eV/atom per unit fraction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymatgen.core import Structure

U_ELEMENTS = ("Co", "Cr", "Fe", "Mn", "Mo", "Ni", "V", "W")
"""The elements the Materials Project 2020 scheme treats with GGA+U (and corrects) in oxides and fluorides."""

O_KINDS = ("peroxide", "superoxide", "ozonide")
FEATURES = (*(f"U:{el}" for el in U_ELEMENTS), "O:compound", *(f"O:{kind}" for kind in O_KINDS))


def convention_features(structures: Sequence[Structure]) -> np.ndarray:
    """(n, len(FEATURES)) features of `structures` in the order of `FEATURES`."""
    from pymatgen.analysis.structure_analyzer import oxide_type

    out = np.zeros((len(structures), len(FEATURES)))
    for row, structure in enumerate(structures):
        comp = structure.composition
        fractions = {el.symbol: comp.get_atomic_fraction(el) for el in comp.elements}
        if "O" in fractions or "F" in fractions:
            for col, el in enumerate(U_ELEMENTS):
                out[row, col] = fractions.get(el, 0.0)
        o = fractions.get("O", 0.0)
        if o and len(fractions) > 1:
            out[row, FEATURES.index("O:compound")] = o
            kind = oxide_type(structure)
            if kind in O_KINDS:
                out[row, FEATURES.index(f"O:{kind}")] = o
    return out
