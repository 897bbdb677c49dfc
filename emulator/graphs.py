"""Whether a crystal can be turned into the emulator's crystal graph, decided without loading a model.

CHGNet builds its atom graph from every neighbour within `ATOM_GRAPH_CUTOFF` Å (periodic images included) and
refuses a crystal with an atom that has none: a cell blown up by a relaxation, or a sparse seed such as a one-atom
Na cell of 350 Å³. This is that rule, on pymatgen's neighbour list (the one CHGNet's converter calls), so a campaign
can set such a structure aside where it appears instead of failing the next prediction or training on it.

Units: Å.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure

# CHGNet 0.3.0's `CrystalGraphConverter.atom_graph_cutoff`.
ATOM_GRAPH_CUTOFF = 6.0


def graph_problem(structure: Structure, *, cutoff: float = ATOM_GRAPH_CUTOFF) -> str | None:
    """Why the emulator cannot build a crystal graph of `structure`, in a few words; None when it can.

    Args:
        structure: The crystal.
        cutoff: The emulator's atom-graph cutoff, Å.
    """
    n = len(structure)
    if n == 0:
        return "no atoms"
    if not (np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords))):
        return "non-finite lattice or coordinates"
    centres, _, _, _ = structure.get_neighbor_list(r=cutoff, sites=structure.sites, numerical_tol=1e-8)
    isolated = n - len(set(np.asarray(centres).tolist()))
    if isolated:
        return (
            f"{isolated} of {n} atom(s) have no neighbour within the emulator's {cutoff:g} Å graph cutoff "
            f"({structure.volume / n:.1f} Å³/atom)"
        )
    return None


__all__ = ["ATOM_GRAPH_CUTOFF", "graph_problem"]
