"""The committee rule: E_hull over model families, each measured against its own hull of the oracle hull's phases.

Units: energies eV/atom.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from pymatgen.core import Composition

from loop.science.hull import HullEntry, OracleHull


def family_e_hull(
    phases: Iterable[HullEntry], *, compositions: Sequence[Composition], energies: Sequence[float]
) -> np.ndarray:
    """E_hull (eV/atom; NaN where it cannot be placed) of a model family's `energies` at `compositions`, against
    the hull of that family's own energies of the oracle hull's `phases` (those it could not compute, NaN, left
    out): the committee rule, which cancels the family's offsets from the oracle's level of theory."""
    own = OracleHull.from_entries(p for p in phases if math.isfinite(p.energy_per_atom))
    return np.asarray(own.evaluate(compositions, energies, [0.0] * len(energies)).e_above_hull, dtype=float)


def combine_committee(mean: float, std: float, members: Sequence[float]) -> tuple[float, float]:
    """E_hull mean and std (eV/atom) over model families: the emulator's calibrated (mean, std) and each member's
    E_hull. The mean is the families' average; the variance is the emulator's plus the families' spread (ddof 0).
    Members that could not place the structure are left out."""
    values = [mean, *[m for m in members if math.isfinite(m)]]
    spread = float(np.var(values)) if len(values) > 1 else 0.0
    return float(np.mean(values)), float(math.sqrt(std**2 + spread))


__all__ = ["combine_committee", "family_e_hull"]
