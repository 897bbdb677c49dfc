"""Simple elemental cells (fcc, bcc, hcp) round 0 labels beside the known crystals.

Units: volumes Å^3/atom.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from generator.base import KnownStructure

SIMPLE_CELL_PREFIX = "cell:"
"""Id prefix of the simple elemental cells round 0 adds ("cell:Li-fcc")."""


def simple_cells(element: str, *, volume_per_atom: float) -> list[KnownStructure]:
    """The fcc, bcc and hcp cells (1, 1 and 2 atoms, hcp at the ideal c/a) of one element at one volume per atom.

    Many elements' ground state at a given level of theory is one of these three even where the data hold only
    others (the bundled data hold no fcc Li and no hcp Al cell; at the demo's GPAW settings the three Li polymorphs
    lie within 1 meV/atom, so any of them can be the end), and they cost almost nothing to label, so round 0 always labels them: a hull end is then never a polymorph lying above
    another one. The oracle relaxes them from this volume.

    Args:
        element: The element symbol.
        volume_per_atom: The cells' volume, Å^3/atom (the element's known crystal's).

    Returns:
        The three cells, ids "cell:<El>-fcc" etc., properties formula, symmetry, source "simple cell".
    """
    v = float(volume_per_atom)
    c_over_a = float(np.sqrt(8 / 3))
    a_fcc = (4 * v) ** (1 / 3)
    a_bcc = (2 * v) ** (1 / 3)
    a_hcp = (2 * v / (np.sqrt(3) / 2 * c_over_a)) ** (1 / 3)
    lattices = {
        "fcc": (Lattice(0.5 * a_fcc * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), [[0.0, 0.0, 0.0]]),
        "bcc": (Lattice(0.5 * a_bcc * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]])), [[0.0, 0.0, 0.0]]),
        "hcp": (Lattice.hexagonal(a_hcp, a_hcp * c_over_a), [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
    }
    return [
        KnownStructure(
            id=f"{SIMPLE_CELL_PREFIX}{element}-{kind}",
            structure=Structure(lattice, [element] * len(coords), coords),
            properties={"formula": element, "symmetry": kind, "source": "simple cell"},
        )
        for kind, (lattice, coords) in lattices.items()
    ]


__all__ = ["SIMPLE_CELL_PREFIX", "simple_cells"]
