"""Quality checks for generated crystals (structural and compositional validity, uniqueness, novelty).

Distances in Å, volumes in Å³.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from generator.diffusion.charge import charge_balanced_counts
from generator.sanity import MAX_VOLUME_PER_ATOM, MIN_DISTANCE, is_sane


def structurally_valid(
    structure: Structure,
    *,
    min_distance: float = MIN_DISTANCE,
    max_volume_per_atom: float = MAX_VOLUME_PER_ATOM,
) -> bool:
    """The structural-validity metric: the sanity rule of `generator.sanity` (distances in Å, volume Å³/atom)."""
    return is_sane(structure, min_distance=min_distance, max_volume_per_atom=max_volume_per_atom)


def charge_balanced(composition: Composition) -> bool:
    """SMACT-style test: some combination of common oxidation states sums to zero.

    Pure elements and all-metal compositions (intermetallics) count as valid, as in the SMACT validity
    metric used by CDVAE/DiffCSP/MatterGen; electronegativity ordering is not required.
    """
    comp = composition.reduced_composition
    return charge_balanced_counts({el.Z: round(comp[el]) for el in comp.elements})


def _bucket(structures: Sequence[Structure]) -> dict[str, list[int]]:
    buckets: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(structures):
        buckets[s.composition.reduced_formula].append(i)
    return buckets


def unique_mask(structures: Sequence[Structure], *, matcher: StructureMatcher | None = None) -> list[bool]:
    """True for the first of each group of matching structures (StructureMatcher within formula buckets)."""
    matcher = matcher or StructureMatcher()
    keep = [True] * len(structures)
    for idx in _bucket(structures).values():
        reps: list[int] = []
        for i in idx:
            if any(matcher.fit(structures[i], structures[j]) for j in reps):
                keep[i] = False
            else:
                reps.append(i)
    return keep


def novel_mask(
    structures: Sequence[Structure],
    reference: Sequence[Structure],
    *,
    matcher: StructureMatcher | None = None,
) -> list[bool]:
    """True where no reference structure of the same reduced formula matches."""
    matcher = matcher or StructureMatcher()
    ref = _bucket(reference)
    out = []
    for s in structures:
        cands = ref.get(s.composition.reduced_formula, [])
        out.append(not any(matcher.fit(s, reference[j]) for j in cands))
    return out
