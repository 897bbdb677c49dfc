"""Ordered interstitial compounds: light non-metal atoms on the largest holes of a metal's own crystal.

Many metal-rich oxides, nitrides, carbides, borides and hydrides are the metal's close-packed lattice with the
non-metal ordered on a share of its octahedral holes (Hägg's interstitial compounds: anti-CdI2 Ti2O, Ti6O, Zr3O,
V2C, ...). No bundled structure type need exist for them, and random search rarely draws such an ordering. For a
composition M_a X_b of one transition or rare-earth metal M and one light non-metal X (`InterstitialSettings.guests`)
whose atomic radii obey Hägg's rule (r_X / r_M below 0.59, the ratio under which the non-metal fits the metal's
holes; alkali and alkaline-earth oxides are ionic crystals, not interstitial ones), this generator takes
M's elemental reference crystal (`generator.seeds.reference_state`, ASE's experimental lattice constants), finds its
largest holes (points farthest from every metal atom), and puts X on b of them in supercells of the host that hold
a metal atoms per formula unit (every Hermite normal form of that index). Orderings are ranked the way like atoms
repel: the largest shortest X-X distance first (periodic images included), then the smallest sum of 1/r over X-X
pairs (Å⁻¹). The best `structures_per_composition` distinct orderings (StructureMatcher) are proposed, unrelaxed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import DummySpecies, Element, Lattice, Structure

from generator.base import (
    Candidate,
    GenerationContext,
    Generator,
    GeneratorError,
    GeneratorSettings,
    register,
)
from generator.chemistry import atomic_radius, formula_unit, parse_element
from generator.seeds import reference_state

_GRID = 24  # divisible by 2, 3, 4, 6 and 8, so the holes of cubic and hexagonal hosts are grid points
_HOLE_TOLERANCE = 0.03  # a point within 3 % of the largest metal distance is one of the largest holes
_MERGE = 0.5  # Å: grid points closer than this are one hole
_HOLE = DummySpecies("X")
HAGG_RATIO = 0.59
"""Largest ratio of the non-metal's to the metal's atomic radius (pymatgen's) for an interstitial compound."""


class InterstitialSettings(GeneratorSettings):
    """Settings of `InterstitialGenerator`.

    Attributes:
        guests: Non-metals placed on holes; compositions of one metal and one of these are made.
        structures_per_composition: Orderings proposed per composition (the best-ranked distinct ones).
        max_atoms: Most atoms in a cell.
        max_supercells: Host supercells tried per composition, the most compact first (longest shortest lattice
            vector, Å).
        max_orderings: Orderings ranked per supercell; beyond, a random sample of this many.
    """

    kind: Literal["interstitial"] = "interstitial"
    guests: list[str] = Field(default_factory=lambda: ["H", "B", "C", "N", "O"])
    structures_per_composition: int = Field(default=2, ge=1)
    max_atoms: int = Field(default=20, ge=2)
    max_supercells: int = Field(default=64, ge=1)
    max_orderings: int = Field(default=2000, ge=1)

    @field_validator("guests")
    @classmethod
    def _elements(cls, guests: list[str]) -> list[str]:
        try:
            return [parse_element(g) for g in guests]
        except GeneratorError as exc:
            raise ValueError(str(exc)) from None


def largest_holes(host: Structure) -> np.ndarray:
    """Fractional coordinates of the host's largest holes: grid points whose distance to the nearest atom is
    within `_HOLE_TOLERANCE` of the largest such distance, one per hole."""
    axis = np.arange(_GRID) / _GRID
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    nearest = host.lattice.get_all_distances(grid, host.frac_coords).min(axis=1)
    order = np.argsort(-nearest, kind="stable")
    keep = order[nearest[order] >= nearest.max() * (1 - _HOLE_TOLERANCE)]
    holes: list[np.ndarray] = []
    for point in grid[keep]:
        if not holes or host.lattice.get_all_distances([point], holes).min() > _MERGE:
            holes.append(point)
    return np.array(holes)


def hermite_normal_forms(index: int) -> Iterator[np.ndarray]:
    """Every lower-triangular Hermite normal form of determinant `index` (each entry below the diagonal smaller
    than its column's diagonal entry): the distinct supercells of that size, as rows of host lattice vectors."""
    for a in range(1, index + 1):
        if index % a:
            continue
        for c in range(1, index // a + 1):
            if (index // a) % c:
                continue
            f = index // (a * c)
            for b, d, e in itertools.product(range(a), range(a), range(c)):
                yield np.array([[a, 0, 0], [b, c, 0], [d, e, f]])


def _host_metal(symbol: str) -> bool:
    el = Element(symbol)
    return bool(el.is_transition_metal or el.is_rare_earth)


def _shortest_translation(lattice: Lattice) -> float:
    """Shortest non-zero lattice vector, Å (on the LLL-reduced basis, combinations of -1, 0, 1)."""
    basis = lattice.lll_matrix
    steps = np.array([t for t in itertools.product((-1, 0, 1), repeat=3) if any(t)])
    return float(np.linalg.norm(steps @ basis, axis=1).min())


class InterstitialGenerator(Generator):
    """Metal-rich compounds as ordered non-metal atoms on the largest holes of the metal's crystal (see the
    module docstring). Makes only compositions of one metal and one of `guests`; others are passed over."""

    name: ClassVar[str] = "interstitial"
    Settings: ClassVar[type[GeneratorSettings]] = InterstitialSettings
    hands_on_compositions: ClassVar[bool] = False

    def __init__(self, *, settings: InterstitialSettings | None = None) -> None:
        self.settings = settings or InterstitialSettings()

    def generate(self, *, n: int, context: GenerationContext, seed: int = 0) -> list[Candidate]:
        """Up to `n` candidates, `structures_per_composition` for each interstitial composition of
        `context.compositions` in order (others are skipped)."""
        rng = np.random.default_rng(seed)
        out: list[Candidate] = []
        for formula in context.compositions:
            if len(out) >= n:
                break
            want = min(self.settings.structures_per_composition, n - len(out))
            out.extend(self.orderings(formula, n=want, rng=rng))
        return out

    def orderings(self, formula: str, *, n: int, rng: np.random.Generator) -> list[Candidate]:
        """The `n` best distinct orderings of `formula` (a reduced formula) over every cell of whole formula units
        up to `max_atoms`, or none when it is not one host metal and one guest within Hägg's ratio, the metal has
        no reference crystal, the guests outnumber the holes, or no cell fits."""
        cfg = self.settings
        counts = {el.symbol: round(x) for el, x in formula_unit(formula).items()}
        metals = [s for s in counts if _host_metal(s)]
        guests = [s for s in counts if s in cfg.guests]
        if len(counts) != 2 or len(metals) != 1 or len(guests) != 1:
            return []
        metal, guest = metals[0], guests[0]
        if atomic_radius(guest) / atomic_radius(metal) >= HAGG_RATIO:
            return []
        known = reference_state(metal)
        if known is None:
            return []
        host = known.structure
        holes = largest_holes(host)
        per_host = len(host)
        if counts[guest] * per_host > counts[metal] * len(holes):
            return []
        sizes = [
            z
            for z in range(1, cfg.max_atoms + 1)
            if (z * counts[metal]) % per_host == 0 and z * sum(counts.values()) <= cfg.max_atoms
        ]
        decorated = host.copy()
        for hole in holes:
            decorated.append(_HOLE, hole)
        ranked = []
        for z in sizes:
            ranked.extend(
                self._ranked(
                    decorated, index=z * counts[metal] // per_host, n_guests=z * counts[guest], rng=rng
                )
            )
        ranked.sort(key=lambda item: (item[0], item[1]))
        matcher = StructureMatcher()
        made: list[Candidate] = []
        seen: set[tuple[float, float]] = set()
        for neg_closest, repulsion, hnf, cell, chosen in ranked:
            if len(made) >= n:
                break
            if (neg_closest, repulsion) in seen:
                continue  # orderings of equal rank are nearly always one ordering by symmetry
            seen.add((neg_closest, repulsion))
            structure = Structure.from_sites(
                [s for s in cell if s.specie != _HOLE] + [cell[i] for i in chosen]
            )
            structure.replace_species({_HOLE: guest})
            if any(matcher.fit(structure, c.structure) for c in made):
                continue
            made.append(
                Candidate(
                    structure=structure,
                    source=self.name,
                    parent=known.id,
                    info={
                        "operation": "interstitial",
                        "formula": formula,
                        "host": known.id,
                        "guest": guest,
                        "holes": len(holes) * round(abs(np.linalg.det(hnf))),
                        "supercell": hnf.tolist(),
                        "shortest_guest_distance": -neg_closest,
                    },
                )
            )
        return made

    def _ranked(
        self, decorated: Structure, *, index: int, n_guests: int, rng: np.random.Generator
    ) -> list[tuple[float, float, np.ndarray, Structure, list[int]]]:
        """Orderings of `n_guests` on the holes (`_HOLE` sites of `decorated`) of every supercell of `index`, as
        (minus the shortest guest distance in Å, 1/r summed over guest pairs per guest in Å⁻¹, supercell, cell,
        chosen hole sites)."""
        cfg = self.settings
        supercells = []
        for hnf in hermite_normal_forms(index):
            cell = decorated.copy()
            cell.make_supercell(hnf)
            supercells.append((_shortest_translation(cell.lattice), hnf, cell))
        supercells.sort(key=lambda item: -item[0])
        ranked = []
        upper = np.triu_indices(n_guests, 1)
        for shortest, hnf, cell in supercells[: cfg.max_supercells]:
            sites = [i for i, site in enumerate(cell) if site.specie == _HOLE]
            distances = cell.lattice.get_all_distances(cell.frac_coords[sites], cell.frac_coords[sites])
            if math.comb(len(sites), n_guests) <= cfg.max_orderings:
                choices: Iterator[tuple[int, ...]] = itertools.combinations(range(len(sites)), n_guests)
            else:
                choices = (
                    tuple(sorted(rng.choice(len(sites), n_guests, replace=False)))
                    for _ in range(cfg.max_orderings)
                )
            for chosen in choices:
                pairs = distances[np.ix_(chosen, chosen)][upper]
                closest = min(shortest, float(pairs.min())) if len(pairs) else shortest
                repulsion = float(np.sum(1.0 / np.maximum(pairs, 0.1))) / n_guests
                ranked.append(
                    (-round(closest, 3), round(repulsion, 4), hnf, cell, [sites[i] for i in chosen])
                )
        return ranked


register(InterstitialGenerator)

__all__ = [
    "InterstitialGenerator",
    "InterstitialSettings",
    "hermite_normal_forms",
    "largest_holes",
]
