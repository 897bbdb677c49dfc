"""The structure sanity rule shared by every room that may import it (generator, and `loop` on its behalf).

A crystal is unphysical when two atoms, or an atom and its own periodic image, sit closer than `MIN_DISTANCE`;
the shortest real bond (H2) is 0.74 Å. Lengths in Å, volumes in Å³.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure

MIN_DISTANCE = 0.5
# More room per atom than this is a gas, not a crystal.
MAX_VOLUME_PER_ATOM = 200.0


def shortest_distance(structure: Structure) -> float:
    """The shortest periodic distance between two sites, or between a site and its own image, Å."""
    shortest = float(min(structure.lattice.abc))
    if len(structure) > 1:
        dm = structure.distance_matrix
        shortest = min(shortest, float(dm[np.triu_indices(len(structure), 1)].min()))
    return shortest


def too_close(structure: Structure, *, min_distance: float = MIN_DISTANCE) -> bool:
    """Whether some atom pair (or an atom and its image) is closer than `min_distance` Å."""
    return shortest_distance(structure) < min_distance


def is_sane(
    structure: Structure,
    *,
    min_distance: float = MIN_DISTANCE,
    max_volume_per_atom: float = MAX_VOLUME_PER_ATOM,
) -> bool:
    """No atoms closer than `min_distance` Å and a volume between 0.1 and `max_volume_per_atom` Å³ per atom."""
    volume = structure.volume
    n = len(structure)
    if not np.isfinite(volume) or volume <= 0.1 * n or volume / n > max_volume_per_atom:
        return False
    return not too_close(structure, min_distance=min_distance)
