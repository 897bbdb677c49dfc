"""AIRSS-like random search: symmetric random crystals for given compositions (pyxtal).

Each candidate draws a number of formula units and a space group compatible with the resulting atom
counts, places atoms on random Wyckoff positions, and takes its volume from pyxtal's atomic-radius
estimate times `volume_factor`. Lengths in Å. Structures are unrelaxed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field, field_validator
from pymatgen.core import Composition, Structure
from pyxtal import pyxtal
from pyxtal.symmetry import Group
from pyxtal.tolerance import Tol_matrix

from generator.base import (
    Candidate,
    GenerationContext,
    Generator,
    GeneratorError,
    GeneratorSettings,
    register,
)
from generator.chemistry import (
    ChargeRule,
    enumerate_compositions,
    formula_unit,
    parse_chemical_system,
    parse_formula,
)


class RandomSearchSettings(GeneratorSettings):
    """Settings of the random-search generator.

    Attributes:
        formulas: Explicit compositions such as "LiFePO4"; when empty, compositions are enumerated from the
            context's chemical systems.
        max_atoms: Most atoms in a generated cell.
        max_formula_atoms: Most atoms per formula unit when enumerating compositions.
        max_per_element: Largest count of one element per formula unit when enumerating.
        max_compositions: Most enumerated compositions used per chemical system (fewest atoms first).
        charge_rule: Charge-balance rule for enumeration ("common": SMACT-style; "pymatgen": ICSD states).
        space_groups: Space groups to draw from (default: 2-230, i.e. all but P1).
        volume_factor: Multiplier on pyxtal's volume estimate from atomic radii.
        distance_factor: Closest allowed contact as a multiple of half the sum of covalent radii (pyxtal's
            default is 1.0, which lets e.g. Li-P sit at 1.2 Å).
        attempts_per_candidate: pyxtal attempts allowed per requested candidate before giving up.
        structures_per_composition: Structures made for each composition of `GenerationContext.compositions`
            before the next one (many random structures per composition, as in AIRSS and GNoME's compositional
            pipeline).
        formula_unit_exponent: A cell of z formula units is drawn with weight z^-exponent (0, the default: every
            z that fits `max_atoms` alike). Measured on seven small targets, 16 structures each
            (benchmarks/composition_hits.py): 1 gives cells of 4-7 atoms on average instead of 7-12 (cheaper to
            screen) and the same number of hits (8 of 112), but it traded antifluorite Na2O (found from 6- and
            9-atom cells) for anti-CdI2 Ti2O and L1_0 TiAl.
    """

    kind: Literal["random_search"] = "random_search"
    formulas: list[str] = Field(default_factory=list)
    max_atoms: int = Field(20, ge=1)
    max_formula_atoms: int = Field(10, ge=2)
    max_per_element: int = Field(6, ge=1)
    max_compositions: int = Field(8, ge=1)
    charge_rule: ChargeRule = "common"
    space_groups: list[int] | None = None
    volume_factor: float = Field(1.1, gt=0.3, le=5.0)
    distance_factor: float = Field(1.2, gt=0, le=2.0)
    attempts_per_candidate: int = Field(4, ge=1)
    structures_per_composition: int = Field(4, ge=1)
    formula_unit_exponent: float = Field(0.0, ge=0.0, le=4.0)

    @field_validator("formulas")
    @classmethod
    def _parseable(cls, value: list[str]) -> list[str]:
        for formula in value:
            try:
                parse_formula(formula)
            except GeneratorError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("space_groups")
    @classmethod
    def _valid_groups(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            bad = [g for g in value if not 1 <= g <= 230]
            if bad or not value:
                raise ValueError(f"space groups must be a non-empty list of numbers 1-230, got {value}")
        return value


@lru_cache(maxsize=256)
def _group(number: int) -> Group:
    # Building a pyxtal Group costs ~7 ms; without this cache the first round's compatibility scan spent ~20 s
    # rebuilding the same 229 groups for each atom count.
    return Group(number)


@lru_cache(maxsize=4096)
def _compatible_groups(counts: tuple[int, ...], groups: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(g for g in groups if _group(g).check_compatible(list(counts))[0])


def cell_options(
    unit: Sequence[int], *, max_atoms: int, groups: tuple[int, ...]
) -> list[tuple[int, tuple[int, ...]]]:
    """The cells random search draws from for one formula unit: (z, space groups) for every number of formula
    units z whose cell has at most `max_atoms` atoms and that some group of `groups` accepts (pyxtal counts atoms
    in the conventional cell)."""
    return [
        (z, allowed)
        for z in range(1, max_atoms // sum(unit) + 1)
        if (allowed := _compatible_groups(tuple(z * u for u in unit), groups))
    ]


def formula_unit_probabilities(zs: Sequence[int], *, exponent: float) -> np.ndarray:
    """Probability of drawing each number of formula units z of `zs`: proportional to z^-exponent (uniform at 0)."""
    weights = np.asarray(zs, dtype=float) ** -exponent
    return weights / weights.sum()


@lru_cache(maxsize=1)
def _tolerances() -> Tol_matrix:
    return Tol_matrix(prototype="atomic")


def _too_close(structure: Structure, factor: float) -> bool:
    """Whether any pair is closer than `factor` times pyxtal's own limit (half the covalent-radius sum).

    Checked after the draw rather than passed to pyxtal: a stricter tolerance inside pyxtal makes its
    placement loop retry far more often and runs ~10x slower.
    """
    tol = _tolerances()
    symbols = [site.specie.symbol for site in structure]
    limits = {(a, b): factor * tol.get_tol(a, b) for a in set(symbols) for b in set(symbols)}
    cutoff = max(limits.values())
    centres, neighbours, _, dists = structure.get_neighbor_list(cutoff)
    return any(d < limits[symbols[i], symbols[j]] for i, j, d in zip(centres, neighbours, dists, strict=True))


class RandomSearchGenerator(Generator):
    """Random symmetric structures for compositions from the settings or the context's chemical systems."""

    name = "random_search"
    Settings = RandomSearchSettings

    def __init__(self, *, settings: RandomSearchSettings | None = None) -> None:
        self.settings = settings or RandomSearchSettings()

    def compositions(self, context: GenerationContext) -> list[Composition]:
        """The compositions (formula units) this generator will sample for `context`: the settings' formulas,
        else the context's compositions (those whose formula unit fits `max_atoms`), else compositions
        enumerated from its chemical systems.

        Raises:
            GeneratorError: If there are neither formulas nor chemical systems, or a system has no
                charge-balanced composition within the limits.
        """
        cfg = self.settings
        if cfg.formulas:
            return [formula_unit(f) for f in cfg.formulas]
        if context.compositions:
            comps = [formula_unit(f) for f in context.compositions]
            return [c for c in comps if c.num_atoms <= cfg.max_atoms]
        if not context.chemical_systems:
            raise GeneratorError(
                "random search needs settings.formulas or context.chemical_systems; give one"
            )
        out: list[Composition] = []
        for system in context.chemical_systems:
            elements = sorted(parse_chemical_system(system))
            found = enumerate_compositions(
                elements,
                max_atoms=min(cfg.max_formula_atoms, cfg.max_atoms),
                max_per_element=cfg.max_per_element,
                rule=cfg.charge_rule,
            )
            if not found:
                raise GeneratorError(
                    f"no charge-balanced composition of {system} with <= {cfg.max_formula_atoms} atoms; "
                    "raise max_formula_atoms or give settings.formulas"
                )
            out.extend(found[: cfg.max_compositions])
        return out

    def generate(self, *, n: int, context: GenerationContext, seed: int = 0) -> list[Candidate]:
        """Propose up to `n` random symmetric crystals.

        With the context's compositions: `structures_per_composition` structures for each composition in turn,
        most needed first, a composition pyxtal cannot place being passed over after its attempts, and round again
        while `n` is not reached. Otherwise cycling over the compositions. Each candidate's `info` holds the
        formula, formula units, the space group drawn, and the volume factor. Fewer than `n` come back only if
        pyxtal fails `attempts_per_candidate * n` times (with the context's compositions: a whole pass places
        nothing).

        Raises:
            GeneratorError: On a negative `n`, or see `compositions`.
        """
        if n < 0:
            raise GeneratorError(f"n must be >= 0, got {n}")
        cfg = self.settings
        comps = self.compositions(context)
        groups = tuple(cfg.space_groups or range(2, 231))
        rng = np.random.default_rng(seed)
        if context.compositions and not cfg.formulas:
            return self._per_composition(n, comps, groups, rng)
        out: list[Candidate] = []
        attempts = 0
        while len(out) < n and attempts < cfg.attempts_per_candidate * max(n, 1):
            comp = comps[attempts % len(comps)]
            attempts += 1
            structure_info = self._attempt(comp, groups, rng)
            if structure_info is None:
                continue
            structure, info = structure_info
            out.append(Candidate(structure=structure, source=self.name, parent=None, info=info))
        return out

    def _per_composition(
        self, n: int, comps: list[Composition], groups: tuple[int, ...], rng: np.random.Generator
    ) -> list[Candidate]:
        cfg = self.settings
        out: list[Candidate] = []
        # More than `structures_per_composition` per composition once every one has had its share: asked for more
        # candidates than the compositions hold (another generator's shortfall), the search goes round again, as
        # an AIRSS search samples many structures of each composition. A pass that places nothing ends it.
        while len(out) < n:
            before = len(out)
            for comp in comps:
                want = min(cfg.structures_per_composition, n - len(out))
                if want <= 0:
                    break
                made = 0
                for _ in range(cfg.attempts_per_candidate * want):
                    structure_info = self._attempt(comp, groups, rng)
                    if structure_info is not None:
                        structure, info = structure_info
                        out.append(Candidate(structure=structure, source=self.name, parent=None, info=info))
                        made += 1
                        if made >= want:
                            break
            if len(out) == before:
                break
        return out

    def _attempt(
        self, comp: Composition, groups: tuple[int, ...], rng: np.random.Generator
    ) -> tuple[Structure, dict] | None:
        cfg = self.settings
        symbols = [el.symbol for el in comp.elements]
        unit = [round(comp[s]) for s in symbols]
        options = cell_options(unit, max_atoms=cfg.max_atoms, groups=groups)
        if not options:
            return None
        if cfg.formula_unit_exponent:
            p = formula_unit_probabilities([z for z, _ in options], exponent=cfg.formula_unit_exponent)
            z, allowed = options[int(rng.choice(len(options), p=p))]
        else:  # the uniform draw of before the exponent existed: the same structures for a seed
            z, allowed = options[int(rng.integers(len(options)))]
        group = int(allowed[int(rng.integers(len(allowed)))])
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(
                    3,
                    group,
                    symbols,
                    [z * u for u in unit],
                    factor=cfg.volume_factor,
                    random_state=int(rng.integers(2**31 - 1)),
                )
        except Exception:
            # pyxtal raises assorted errors when it cannot place atoms; that draw is just discarded
            return None
        if not crystal.valid:
            return None
        structure = crystal.to_pymatgen()
        if _too_close(structure, cfg.distance_factor):
            return None
        info = {
            "operation": "random_search",
            "formula": comp.reduced_formula,
            "formula_units": z,
            "space_group": group,
            "volume_factor": cfg.volume_factor,
        }
        return structure, info


register(RandomSearchGenerator)
