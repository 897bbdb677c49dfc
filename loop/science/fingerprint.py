"""A compact structure fingerprint for bucketing before StructureMatcher.

The fingerprint is the reduced formula (an exact invariant, used as the bucket key) plus, per element, the
mean sorted distances from its sites to their nearest neighbours after scaling the cell to 1 Å³/atom. It
does not change under rotation, translation, site permutation, supercells or isotropic scaling, and moves
continuously with small distortions, so two structures StructureMatcher calls equal have nearby
fingerprints; far-apart fingerprints let the funnel skip the (≈15 ms) matcher call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core import Lattice, Structure

N_NEIGHBOURS = 6
# at 1 Å³/atom the nearest-neighbour distance is ≈1, so this radius holds well over 6 neighbours
_CUTOFF = 2.2


class FingerprintError(ValueError):
    """A fingerprint string that cannot be parsed."""


@dataclass(frozen=True)
class Fingerprint:
    """Reduced formula plus a dimensionless neighbour-distance vector (distances at 1 Å³/atom).

    Attributes:
        formula: pymatgen reduced formula; structures with different formulas never match.
        vector: `N_NEIGHBOURS` mean sorted neighbour distances per element, elements in alphabetical order.
    """

    formula: str
    vector: tuple[float, ...]

    def to_str(self) -> str:
        """Compact text form for storage, e.g. in sqlite: "LiFePO4|0.8123,0.8311,..."."""
        return self.formula + "|" + ",".join(f"{v:.4f}" for v in self.vector)

    @classmethod
    def from_str(cls, text: str) -> Fingerprint:
        """Parse `to_str` output.

        Raises:
            FingerprintError: If the text is not a fingerprint.
        """
        formula, sep, numbers = text.partition("|")
        if not sep or not formula:
            raise FingerprintError(f"not a fingerprint: {text[:60]!r}; expected 'FORMULA|v1,v2,...'")
        try:
            vector = tuple(float(v) for v in numbers.split(",")) if numbers else ()
        except ValueError:
            raise FingerprintError(
                f"not a fingerprint: {text[:60]!r}; expected 'FORMULA|v1,v2,...'"
            ) from None
        return cls(formula=formula, vector=vector)

    def distance(self, other: Fingerprint) -> float:
        """Largest absolute difference between the vectors (inf for different formulas or lengths)."""
        if self.formula != other.formula or len(self.vector) != len(other.vector):
            return float("inf")
        if not self.vector:
            return 0.0
        return float(np.max(np.abs(np.asarray(self.vector) - np.asarray(other.vector))))


def fingerprint(structure: Structure, *, n_neighbours: int = N_NEIGHBOURS) -> Fingerprint:
    """Fingerprint of a structure (ordered or with oxidation states; oxidation states are ignored).

    Args:
        structure: The crystal.
        n_neighbours: Neighbours per site in the vector.

    Returns:
        The fingerprint; for an empty structure, an empty vector.
    """
    comp = structure.composition.element_composition
    formula = comp.reduced_formula
    n_sites = len(structure)
    if n_sites == 0:
        return Fingerprint(formula=formula, vector=())
    scale = (n_sites / structure.volume) ** (1 / 3)
    symbols = np.array([site.specie.symbol for site in structure])
    scaled = Structure(
        Lattice(structure.lattice.matrix * scale),
        symbols.tolist(),
        structure.frac_coords,
        coords_are_cartesian=False,
    )
    centres, _, _, dists = scaled.get_neighbor_list(_CUTOFF)
    table = np.full((n_sites, n_neighbours), _CUTOFF)
    if len(centres):
        order = np.lexsort((dists, centres))
        centres, dists = centres[order], dists[order]
        starts = np.searchsorted(centres, np.arange(n_sites))
        rank = np.arange(len(centres)) - starts[centres]
        keep = rank < n_neighbours
        table[centres[keep], rank[keep]] = dists[keep]
    vector: list[float] = []
    for symbol in sorted(set(symbols.tolist())):
        vector.extend(table[symbols == symbol].mean(axis=0).round(4).tolist())
    return Fingerprint(formula=formula, vector=tuple(vector))
