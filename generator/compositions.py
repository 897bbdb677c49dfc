"""The compositions a round asks its generators for: every allowed composition of the target systems, weighted.

`allowed_compositions` lists the reduced formulas of every target system and subsystem (two or more elements)
whose formula unit fits the cell limit and that the composition rule allows (`generator.chemistry.
classify_counts`: ionic by common, ICSD or full oxidation-state lists, anion-rich, metal-rich, intermetallic).
`composition_weights` prefers plausible classes, small formula units, formulas without a labelled ground state
and formulas the campaign has tried less; `rank_compositions` draws a round's order from those weights
(reproducible for a seed), so successive rounds walk through the whole list instead of one formula.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition

from generator.chemistry import CompositionClass, classify_counts, parse_chemical_system

CLASS_WEIGHTS: dict[str, float] = {
    "common": 1.0,
    "intermetallic": 1.0,
    "icsd": 0.7,
    "full": 0.4,
    "metal_rich": 0.4,
    "anion_rich": 0.2,
}
"""Prior weight of each composition class: charge balance with common states is the likeliest, compounds that
need anion-anion bonds the least."""
SOLVED_FACTOR = 0.2
"""Weight factor of a formula that already has a labelled stable or near-stable phase."""
TRIED_DECAY = 0.5
"""Weight factor per earlier round that generated the formula."""
QUATERNARY_MAX_ATOMS = 20
"""Largest formula unit enumerated for four or more elements (their number grows as atoms⁴: 113k compositions
and a minute at 40 atoms, 9k and a second at 20)."""


@dataclass(frozen=True)
class AllowedComposition:
    """A reduced composition a generator may be asked for.

    Attributes:
        formula: Reduced formula, pymatgen's ("Ti2O3").
        counts: (element symbol, atoms per formula unit), sorted by symbol.
        kind: Its class under the composition rule (`classify_counts`).
    """

    formula: str
    counts: tuple[tuple[str, int], ...]
    kind: CompositionClass

    @property
    def atoms(self) -> int:
        """Atoms per formula unit."""
        return sum(c for _, c in self.counts)

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.counts)

    @property
    def chemical_system(self) -> str:
        """Its own elements as a chemical system ("O-Ti")."""
        return "-".join(self.elements)

    def composition(self) -> Composition:
        return Composition(dict(self.counts))


def _count_vectors(k: int, budget: int) -> list[tuple[int, ...]]:
    """Every tuple of `k` positive counts summing to at most `budget`."""
    if k == 0:
        return [()]
    return [(c, *rest) for c in range(1, budget - k + 2) for rest in _count_vectors(k - 1, budget - c)]


@lru_cache(maxsize=64)
def _system_compositions(elements: tuple[str, ...], max_atoms: int) -> tuple[AllowedComposition, ...]:
    found = []
    for counts in _count_vectors(len(elements), max_atoms):
        if math.gcd(*counts) != 1:
            continue
        pairs = tuple(zip(elements, counts, strict=True))
        kind = classify_counts(pairs)
        if kind is not None:
            found.append(
                AllowedComposition(formula=Composition(dict(pairs)).reduced_formula, counts=pairs, kind=kind)
            )
    return tuple(found)


def allowed_compositions(
    chemical_systems: Sequence[str], *, max_atoms: int, max_elements: int = 4
) -> list[AllowedComposition]:
    """Every allowed compound composition of the systems and their subsystems whose formula unit fits a cell.

    Args:
        chemical_systems: Target systems such as "Ti-O".
        max_atoms: Most atoms per formula unit (the cell limit: a formula unit larger than it cannot be made).
        max_elements: Subsystems with more elements are skipped (the enumeration grows as max_atoms^elements);
            those of four or more use at most `QUATERNARY_MAX_ATOMS`.

    Returns:
        Compositions, fewest atoms first, then by formula; each formula once.

    Raises:
        ChemistryError: On an unknown element or an empty system.
    """
    seen: dict[str, AllowedComposition] = {}
    for system in chemical_systems:
        symbols = sorted(parse_chemical_system(system))
        for k in range(2, min(len(symbols), max_elements) + 1):
            for subset in itertools.combinations(symbols, k):
                limit = min(max_atoms, QUATERNARY_MAX_ATOMS) if k >= 4 else max_atoms
                for comp in _system_compositions(subset, limit):
                    seen.setdefault(comp.formula, comp)
    return sorted(seen.values(), key=lambda c: (c.atoms, c.formula))


def composition_weights(
    compositions: Sequence[AllowedComposition],
    *,
    solved: Collection[str] = (),
    tried: Mapping[str, int] | None = None,
) -> list[float]:
    """Relative weight of each composition for a round.

    Weight = `CLASS_WEIGHTS[kind]` / atoms³ (small formula units first: the number of binary compositions
    grows with the size, so 1/atoms would give every size the same share and 1/atoms³ gives a size n a share
    of about 1/n²), times `SOLVED_FACTOR` when the formula already
    has a labelled stable or near-stable phase (`solved`), times `TRIED_DECAY` per earlier round that generated
    it (`tried`: formula -> rounds).
    """
    tried = tried or {}
    out = []
    for comp in compositions:
        w = CLASS_WEIGHTS[comp.kind] / comp.atoms**3
        if comp.formula in solved:
            w *= SOLVED_FACTOR
        out.append(w * TRIED_DECAY ** tried.get(comp.formula, 0))
    return out


def rank_compositions(
    compositions: Sequence[AllowedComposition], *, weights: Sequence[float], seed: int
) -> list[AllowedComposition]:
    """All compositions in a random order drawn by weight (sampling without replacement, Gumbel top-k):
    heavier ones tend to come first, and every one comes eventually. Reproducible for `seed`."""
    if not compositions:
        return []
    w = np.asarray(weights, dtype=float)
    keys = np.log(np.maximum(w, 1e-300)) + np.random.default_rng(seed).gumbel(size=len(w))
    return [compositions[int(i)] for i in np.argsort(-keys, kind="stable")]


__all__ = [
    "CLASS_WEIGHTS",
    "AllowedComposition",
    "allowed_compositions",
    "composition_weights",
    "rank_compositions",
]
