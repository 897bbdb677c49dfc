"""Composition features for energy-convention offsets that are not per-element shifts.

A reference refit moves each element's reference energy, so it absorbs any offset between two levels of theory
that is linear in the atom fractions. The Materials Project 2020 scheme, which CHGNet's training energies carry,
is not: it corrects a U element (Co, Fe, Mn, ...) only in an oxide or fluoride, and O by the kind of O it is
(oxide, peroxide, superoxide, ozonide), not in O2. Between CHGNet and a raw-energy oracle (SevenNet-0, GPAW) such
an offset is 0.6-1.7 eV per atom of the element concerned. These features give the refit one extra column per
offset, so a linear fit can take it up:

* ``U:<el>``: the atom fraction of a U element when O or F is present (else 0);
* ``O:compound``: the atom fraction of O when another element is present (0 in elemental O);
* ``O:<kind>``: the atom fraction of O in a peroxide, superoxide or ozonide (pymatgen's `oxide_type`);
* ``anion:<el>``: the atom fraction of S, F, Cl, Br, I, N, Se, Te, H, Si or Sb when the compound has it as an
  anion, decided as MP2020 decides it: S in a sulfide or polysulfide (pymatgen's `sulfide_type`), the others when
  the first oxidation-state guess gives them a negative state or, without a guess, when they are the most
  electronegative element (or tied for it). MP2020 corrects these anions by -0.18 to -0.61 eV per atom (Si
  +0.07), so a chloride or sulfide is as far from a raw-energy oracle as an oxide before the refit has seen one.

When the oracle's energies carry no correction (every plain DFT calculation, and SevenNet-0, trained on MPtrj's raw
energies), the O and anion columns' offsets are known before any compound is labelled: MP2020's corrections with
the sign turned (`mp2020_prior`; N excepted, see `NO_PRIOR`). Without that prior, a campaign whose only labels are
elemental references (every compound withheld) predicted its first oxides 0.16-0.39 eV/atom too low with σ of
0.01-0.05 (Na-Al-O: Al2O3 0.39, NaAlO2 0.34, Na2O2 0.16, NaO2 0.08; oxide O alone explains 0.41, 0.34, 0.23 and
0.11), and the calibration then carried those errors into later rounds; its first halides, sulfides, selenides and
hydrides came 0.11-0.27 eV/atom too low (`benchmarks.anion_prior`). The U columns get no prior: a plain-GGA
oracle differs from CHGNet's GGA+U energies by more than MP2020's correction.

Units: atom fractions (dimensionless); the fitted coefficients are eV/atom per unit fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition, Element, Structure

U_ELEMENTS = ("Co", "Cr", "Fe", "Mn", "Mo", "Ni", "V", "W")
"""The elements the Materials Project 2020 scheme treats with GGA+U (and corrects) in oxides and fluorides."""

O_KINDS = ("peroxide", "superoxide", "ozonide")
ANIONS = ("S", "F", "Cl", "Br", "I", "N", "Se", "Te", "H", "Si", "Sb")
"""The elements besides O that MP2020 corrects when they are anions of a compound."""
NO_PRIOR = ("N",)
"""Anion columns that start at 0, not at MP2020's value: with the correction, round 1's nitrides were predicted 0.14
eV/atom too low against SevenNet-0 (10 nitrides; 0.05 without it), while every other anion's prior halved the error
(`python -m benchmarks.anion_prior`, BENCHMARKS.md). The column is still fitted once nitrides are labelled."""
FEATURES = (
    *(f"U:{el}" for el in U_ELEMENTS),
    "O:compound",
    *(f"O:{kind}" for kind in O_KINDS),
    *(f"anion:{el}" for el in ANIONS),
)


def mp2020_prior() -> dict[str, float]:
    """The O and anion columns' offsets (oracle minus CHGNet, eV/atom per unit atom fraction) for an oracle whose
    energies carry no correction: MP2020 lowers each O atom of an oxide by 0.687 eV, of a peroxide by 0.465, of a
    superoxide by 0.161 and of an ozonide by 0, and each anion atom by its own correction (Cl 0.614, S 0.503, F
    0.462, ...; pymatgen's `MaterialsProject2020Compatibility`), except the anions of `NO_PRIOR`; "O:compound" takes
    the oxide's and each kind's column the difference."""
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    correction = MaterialsProject2020Compatibility().comp_correction
    oxide = -float(correction["oxide"])
    return {
        "O:compound": oxide,
        **{f"O:{kind}": -float(correction[kind]) - oxide for kind in O_KINDS},
        **{f"anion:{el}": -float(correction[el]) for el in ANIONS if el not in NO_PRIOR},
    }


@lru_cache(maxsize=65536)
def _negative_elements(reduced_formula: str) -> frozenset[str] | None:
    """Elements with a negative state in pymatgen's first oxidation-state guess (MP2020's `max_sites=-20`), or None
    when there is no guess."""
    try:
        guesses = Composition(reduced_formula).oxi_state_guesses(max_sites=-20)
    except ValueError:
        return None
    if not guesses:
        return None
    return frozenset(el for el, q in guesses[0].items() if q < 0)


def _anions(structure: Structure) -> set[str]:
    """The elements of `ANIONS` that MP2020 would correct as anions in this compound."""
    from pymatgen.analysis.structure_analyzer import sulfide_type

    comp = structure.composition.element_composition
    present = {el.symbol for el in comp.elements}
    out = set()
    if "S" in present and sulfide_type(structure) in ("sulfide", "polysulfide"):
        out.add("S")
    others = [el for el in ANIONS if el != "S" and el in present]
    if others:
        negative = _negative_elements(comp.reduced_formula)
        if negative is None:
            # every element tied for the largest electronegativity (H and Pd both 2.20): a rule that does not
            # depend on the order of a set, so a compound gets the same features in every process
            top = max(Element(el).X for el in present)
            negative = frozenset(el for el in present if top == Element(el).X)
        out.update(el for el in others if el in negative)
    return out


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
        if len(fractions) > 1 and any(el in fractions for el in ANIONS):
            for el in _anions(structure):
                out[row, FEATURES.index(f"anion:{el}")] = fractions[el]
    return out
