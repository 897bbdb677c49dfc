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

When the oracle's energies carry no correction (every plain DFT calculation, and SevenNet-0, trained on MPtrj's raw
energies), the O columns' offsets are known before any compound is labelled: MP2020's O corrections with the sign
turned (`mp2020_prior`). Without that prior, a campaign whose only labels are elemental references (every compound
withheld) predicted its first oxides 0.16-0.39 eV/atom too low with σ of 0.01-0.05 (Na-Al-O: Al2O3 0.39, NaAlO2
0.34, Na2O2 0.16, NaO2 0.08; oxide O alone explains 0.41, 0.34, 0.23 and 0.11), and the calibration then carried
those errors into later rounds. The U columns get no prior: a plain-GGA oracle differs from CHGNet's GGA+U energies
by more than MP2020's correction.

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


def mp2020_prior() -> dict[str, float]:
    """The O columns' offsets (oracle minus CHGNet, eV/atom per unit O fraction) for an oracle whose energies carry no
    correction: MP2020 lowers each O atom of an oxide by 0.687 eV, of a peroxide by 0.465, of a superoxide by 0.161
    and of an ozonide by 0 (pymatgen's `MaterialsProject2020Compatibility`); "O:compound" takes the oxide's and each
    kind's column the difference."""
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    correction = MaterialsProject2020Compatibility().comp_correction
    oxide = -float(correction["oxide"])
    return {"O:compound": oxide, **{f"O:{kind}": -float(correction[kind]) - oxide for kind in O_KINDS}}


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
