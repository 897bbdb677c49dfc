"""Structure prototypes: what makes two crystals "the same structure type" when the generators count and spend types.

A prototype is the anonymous formula, the space group, the atoms in the cell and the Wyckoff sites each element
occupies, e.g. "AB:227:4:a_b" for B32 (NaTl). The Wyckoff part is what separates types that agree on the first
three: TiO2-B and the other monoclinic VO2 of the bundled data are both "AB2:12:12", and without their sites one
of them stood for both, so a campaign that decorated one never decorated the other.

Sites come from spglib at `SYMPREC` (Å) on the cell as given. One type can have several such descriptions (another
origin of the same group puts an orbit on 4a instead of 4b): `equivalent_prototypes` finds them among the bundled
crystals with pymatgen's StructureMatcher, and the shipped index (`generator.seeds.build_index`) gives each type one
key. A generated structure's key (`structure_prototype`, for counting distinct types) is not merged that way, so
such counts can split a type in two.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

SYMPREC = 0.1
"""Symmetry tolerance (Å) of every prototype key, for bundled crystals and generated structures alike."""


@dataclass(frozen=True, slots=True)
class Symmetry:
    """The space group and Wyckoff signature of one structure (`symmetry_of`).

    Attributes:
        spacegroup: International number, 1 when spglib fails on the cell.
        wyckoff: Letters of each element's sites, elements in anonymous-formula order, e.g. "a_b"; "?" when
            spglib fails.
    """

    spacegroup: int
    wyckoff: str


def symmetry_dataset(structure: Structure, symprec: float = SYMPREC):
    """spglib's symmetry dataset of `structure` at `symprec` (Å), or None where spglib fails (some degenerate
    cells, such as overlapping atoms)."""
    try:
        return SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_dataset()
    except Exception:
        return None


def symmetry_of(structure: Structure, *, symprec: float = SYMPREC) -> Symmetry:
    """Space group and anonymous Wyckoff signature of `structure`.

    Each symmetry orbit contributes its Wyckoff letter once to its element; an element's letters are sorted and
    joined ("ii" for two 4i orbits), and elements are ordered as in the anonymous formula (fewest atoms first,
    ties by their letters), so the signature does not depend on which elements decorate the type.
    """
    dataset = symmetry_dataset(structure, symprec)
    if dataset is None:  # one key for every cell spglib cannot read
        return Symmetry(spacegroup=1, wyckoff="?")
    letters: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    for i, site in enumerate(structure):
        symbol = site.specie.symbol
        counts[symbol] += 1
        orbit = int(dataset.equivalent_atoms[i])
        if orbit not in seen:
            seen.add(orbit)
            letters[symbol].append(str(dataset.wyckoffs[i]))
    groups = sorted((counts[el], "".join(sorted(letters[el]))) for el in counts)
    return Symmetry(spacegroup=int(dataset.number), wyckoff="_".join(g for _, g in groups))


def prototype_key(*, anonymous_formula: str, spacegroup: int, n_sites: int, wyckoff: str) -> str:
    """A structure prototype, e.g. "AB:227:4:a_b" for B32: anonymous formula, space group, atoms in the cell and
    the Wyckoff signature (`symmetry_of`)."""
    return f"{anonymous_formula}:{spacegroup}:{n_sites}:{wyckoff}"


def structure_prototype(structure: Structure, *, symprec: float = SYMPREC) -> str:
    """`prototype_key` of a structure, its symmetry found at `symprec` (Å)."""
    symmetry = symmetry_of(structure, symprec=symprec)
    return prototype_key(
        anonymous_formula=structure.composition.reduced_composition.anonymized_formula,
        spacegroup=symmetry.spacegroup,
        n_sites=len(structure),
        wyckoff=symmetry.wyckoff,
    )


def without_sites(key: str) -> str:
    """A prototype key without its Wyckoff part: anonymous formula, space group and atoms."""
    return key.rsplit(":", 1)[0]


def equivalent_prototypes(representatives: Mapping[str, Structure]) -> dict[str, str]:
    """Keys that describe one structure type, each mapped to the type's canonical key (the smallest of them).

    Keys that agree on everything but their Wyckoff sites are compared by one representative each
    (`StructureMatcher().fit_anonymous`, pymatgen's default tolerances); matches are joined transitively.

    Args:
        representatives: A structure of each key.

    Returns:
        Alias -> canonical key, for the keys that are not their type's canonical key only.
    """
    canonical = {key: key for key in representatives}

    def root(key: str) -> str:
        while canonical[key] != key:
            key = canonical[key]
        return key

    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(representatives):
        groups[without_sites(key)].append(key)
    matcher = StructureMatcher()
    for keys in groups.values():
        for a, b in itertools.combinations(keys, 2):
            ra, rb = root(a), root(b)
            if ra != rb and matcher.fit_anonymous(representatives[a], representatives[b]):
                canonical[max(ra, rb)] = min(ra, rb)
    return {key: root(key) for key in representatives if root(key) != key}


__all__ = [
    "SYMPREC",
    "Symmetry",
    "equivalent_prototypes",
    "prototype_key",
    "structure_prototype",
    "symmetry_dataset",
    "symmetry_of",
    "without_sites",
]
