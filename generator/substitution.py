"""Candidates by ionic substitution on known crystals: full and symmetry-aware partial (SAPS).

Full substitution replaces every site of one or more species of a parent, scored with the data-mined
substitution probabilities of Hautier et al. (Inorg. Chem. 50, 656 (2011), shipped with pymatgen): the score
is the product over replaced species of P(new species | old species) (`SubstitutionProbability.cond_prob(new,
old)`); unchanged species contribute 1. Partial substitution (SAPS, as in GNoME) replaces a fraction of one
Wyckoff orbit, keeping the parent's lattice and the other sites, which lowers the symmetry. Only
charge-balanced results are returned, except that intermetallic parents (all metals) give intermetallic
children without a charge check (each metal is looked up in the table as its common cation). Structures are unrelaxed: lengths in Å are the parent's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field, field_validator
from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability
from pymatgen.core import Composition, Species, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generator.base import (
    Candidate,
    GenerationContext,
    Generator,
    GeneratorError,
    GeneratorSettings,
    KnownStructure,
    register,
)
from generator.chemistry import is_charge_balanced, is_intermetallic, parse_chemical_system


class SubstitutionSettings(GeneratorSettings):
    """Settings of the substitution generator.

    Attributes:
        threshold: Smallest substitution score (product of P(new | old) over replaced species) kept.
        max_candidates_per_parent: Most candidates (full + partial) taken from one parent.
        max_substituted_species: Most species of a parent replaced at once in a full substitution.
        saps_fractions: Fractions of a Wyckoff orbit replaced in partial substitutions; () disables SAPS.
        saps_share: Share of each parent's candidates reserved for partial substitutions (if available).
        max_parent_sites: Parents with more sites are skipped.
        symprec: Symmetry tolerance (Å) for finding Wyckoff orbits; a partial substitution is kept only if
            the child has fewer symmetry operations than the parent at this tolerance.
    """

    kind: Literal["substitution"] = "substitution"
    threshold: float = Field(1e-3, gt=0, le=1)
    max_candidates_per_parent: int = Field(8, ge=1)
    max_substituted_species: int = Field(2, ge=1)
    saps_fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5])
    saps_share: float = Field(0.5, ge=0, le=1)
    max_parent_sites: int = Field(40, ge=1)
    symprec: float = Field(0.1, gt=0)

    @field_validator("saps_fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        for f in value:
            if not 0 < f < 1:
                raise ValueError(f"SAPS fractions must lie strictly between 0 and 1, got {f}")
        return value


@lru_cache(maxsize=1)
def _probability_model() -> SubstitutionProbability:
    return SubstitutionProbability()


@lru_cache(maxsize=16384)
def _integer_oxidation_states(reduced_formula: str) -> tuple[tuple[str, int], ...] | None:
    """Most probable integer oxidation state per element, or None (mixed valence, metals, no guess)."""
    for guess in Composition(reduced_formula).oxi_state_guesses(max_sites=-1)[:3]:
        if all(abs(q - round(q)) < 1e-6 for q in guess.values()):
            return tuple(sorted((el, round(q)) for el, q in guess.items()))
    return None


def _label(symbol: str, q: int) -> str:
    return str(Species(symbol, q))


@lru_cache(maxsize=4096)
def _in_table(symbol: str, q: int) -> bool:
    return Species(symbol, q) in _probability_model().species


@lru_cache(maxsize=16384)
def _substitutes(
    symbol: str, q: int, allowed: frozenset[str] | None, threshold: float
) -> tuple[tuple[str, int, float], ...]:
    """Species (symbol, charge, P(new | old)) that may replace (symbol, q): same charge sign, another
    element (inside `allowed` if given), probability >= threshold; most probable first."""
    model = _probability_model()
    old = Species(symbol, q)
    out = [
        (new.symbol, int(new.oxi_state), float(model.cond_prob(new, old)))
        for new in _species_pool(allowed)
        if new.symbol != symbol and _same_sign(new, old)
    ]
    return tuple(sorted((o for o in out if o[2] >= threshold), key=lambda t: (-t[2], t[0], t[1])))


def _symmetry_dataset(structure: Structure, symprec: float):
    try:
        return SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_dataset()
    except Exception:
        # spglib fails on some degenerate cells; such structures get no partial substitutions
        return None


def _same_sign(a: Species, b: Species) -> bool:
    # cations replace cations and anions anions; the data-mined table has rare cross-sign pairs
    return (a.oxi_state > 0) == (b.oxi_state > 0) and (a.oxi_state < 0) == (b.oxi_state < 0)


@lru_cache(maxsize=4096)
def _metallic_states(reduced_formula: str) -> tuple[tuple[str, int], ...] | None:
    """For an all-metal composition: each metal's most common positive oxidation state in the table.

    Used only to look up substitution probabilities between metals (the table is of ions).
    """
    out = []
    for el in Composition(reduced_formula).elements:
        states = [
            q
            for q in (*el.common_oxidation_states, *el.oxidation_states)
            if q > 0 and _in_table(el.symbol, q)
        ]
        if not states:
            return None
        out.append((el.symbol, int(states[0])))
    return tuple(sorted(out))


@dataclass
class _Proposal:
    score: float
    structure: Structure
    info: dict


@lru_cache(maxsize=256)
def _species_pool(allowed: frozenset[str] | None) -> list[Species]:
    model = _probability_model()
    pool = [sp for sp in model.species if isinstance(sp, Species) and sp.oxi_state is not None]
    if allowed is not None:
        pool = [sp for sp in pool if sp.symbol in allowed]
    return sorted(pool, key=str)


class SubstitutionGenerator(Generator):
    """Full and symmetry-aware partial ionic substitution on the known crystals of the context.

    With `context.chemical_systems`, parents are those within `max_substituted_species` elements of a
    target system (e.g. LiMnPO4 for "Li-Fe-P-O"), closest first, and every candidate lies inside a target.
    """

    name = "substitution"
    Settings = SubstitutionSettings

    def __init__(self, *, settings: SubstitutionSettings | None = None) -> None:
        self.settings = settings or SubstitutionSettings()

    def generate(self, *, n: int, context: GenerationContext, seed: int = 0) -> list[Candidate]:
        """Propose up to `n` substituted crystals.

        Candidates come parent by parent (closest to a target system first, otherwise in a shuffled order
        reproducible for `seed`), each parent giving up to `max_candidates_per_parent`, best score first.
        Each candidate's `info` records the operation ("substitution" or "saps"), the species mapping,
        the score and, for SAPS, the orbit and replaced site indices.

        Raises:
            GeneratorError: On a negative `n` or an unknown chemical system.
        """
        if n < 0:
            raise GeneratorError(f"n must be >= 0, got {n}")
        systems = [parse_chemical_system(s) for s in context.chemical_systems]
        rng = np.random.default_rng(seed)
        out: list[Candidate] = []
        for parent, target in self._ranked_parents(context.known, systems, rng):
            if len(out) >= n:
                break
            for proposal in self._proposals(parent, target, systems, rng):
                out.append(
                    Candidate(
                        structure=proposal.structure,
                        source=self.name,
                        parent=parent.id,
                        info=proposal.info,
                    )
                )
                if len(out) >= n:
                    break
        return out

    def _ranked_parents(
        self, known: Sequence[KnownStructure], systems: list[frozenset[str]], rng: np.random.Generator
    ) -> Iterator[tuple[KnownStructure, frozenset[str] | None]]:
        order = rng.permutation(len(known))
        ranked: list[tuple[int, int, int, KnownStructure, frozenset[str] | None]] = []
        for tie, i in enumerate(order):
            parent = known[int(i)]
            if len(parent.structure) > self.settings.max_parent_sites:
                continue
            elements = {el.symbol for el in parent.structure.composition.element_composition.elements}
            if not systems:
                ranked.append((0, 0, tie, parent, None))
                continue
            best = None
            for target in systems:
                foreign = len(elements - target)
                if len(elements) > len(target) or foreign > self.settings.max_substituted_species:
                    continue
                key = (foreign, -len(elements & target))
                if best is None or key < best[0]:
                    best = (key, target)
            if best is not None:
                ranked.append((*best[0], tie, parent, best[1]))
        ranked.sort(key=lambda r: r[:3])
        for *_, parent, target in ranked:
            yield parent, target

    def _proposals(
        self,
        parent: KnownStructure,
        target: frozenset[str] | None,
        systems: list[frozenset[str]],
        rng: np.random.Generator,
    ) -> list[_Proposal]:
        structure = parent.structure.copy()
        structure.remove_oxidation_states()
        comp = structure.composition
        metallic = is_intermetallic(comp)
        states = _metallic_states(comp.reduced_formula) if metallic else None
        states = states or _integer_oxidation_states(comp.reduced_formula)
        if states is None:
            return []
        oxi = dict(states)
        cap = self.settings.max_candidates_per_parent
        full = self._full(structure, oxi, target, systems, metallic=metallic)
        partial = (
            self._partial(structure, oxi, target, systems, rng, metallic=metallic)
            if self.settings.saps_fractions
            else []
        )
        n_partial = min(len(partial), round(cap * self.settings.saps_share))
        n_full = min(len(full), cap - n_partial)
        # give unused slots of one kind to the other
        n_partial = min(len(partial), cap - n_full)
        picked = full[:n_full] + partial[:n_partial]
        return sorted(picked, key=lambda p: -p.score)

    def _full(
        self,
        structure: Structure,
        oxi: dict[str, int],
        target: frozenset[str] | None,
        systems: list[frozenset[str]],
        *,
        metallic: bool,
    ) -> list[_Proposal]:
        cfg = self.settings
        comp = structure.composition
        olds = [(el, oxi[el]) for el in sorted(oxi)]
        if any(not _in_table(el, q) for el, q in olds):
            return []
        amounts = [round(comp[el]) for el, _ in olds]
        must_change = [i for i, (el, _) in enumerate(olds) if target is not None and el not in target]
        if len(must_change) > cfg.max_substituted_species:
            return []
        options = [_substitutes(el, q, target, cfg.threshold) for el, q in olds]
        found: list[tuple[float, dict[int, tuple[str, int]]]] = []
        free = [i for i in range(len(olds)) if i not in must_change]
        for extra in range(cfg.max_substituted_species - len(must_change) + 1):
            for more in itertools.combinations(free, extra):
                positions = sorted([*must_change, *more])
                if positions:
                    self._expand(positions, 0, {}, 1.0, options, found)
        proposals: list[_Proposal] = []
        base_charge = {i: q * a for i, ((_, q), a) in enumerate(zip(olds, amounts, strict=True))}
        for score, changes in sorted(found, key=lambda t: -t[0]):
            symbols = [changes[i][0] if i in changes else el for i, (el, _) in enumerate(olds)]
            if len(set(symbols)) != len(symbols):
                continue
            charge = sum(
                changes[i][1] * amounts[i] if i in changes else base_charge[i] for i in range(len(olds))
            )
            if systems and not any(set(symbols) <= t for t in systems):
                continue
            if charge != 0 and not (metallic and is_intermetallic(Composition(dict.fromkeys(symbols, 1)))):
                # intermetallic parents give intermetallic children: formal charges do not apply
                continue
            new_structure = structure.copy()
            new_structure.replace_species({olds[i][0]: changes[i][0] for i in changes})
            proposals.append(
                _Proposal(
                    score=score,
                    structure=new_structure,
                    info={
                        "operation": "substitution",
                        "substitutions": {_label(*olds[i]): _label(*changes[i]) for i in sorted(changes)},
                        "score": round(score, 6),
                        "formula": new_structure.composition.reduced_formula,
                    },
                )
            )
            if len(proposals) >= cfg.max_candidates_per_parent:
                break
        return proposals

    def _expand(
        self,
        positions: list[int],
        k: int,
        changes: dict[int, tuple[str, int]],
        score: float,
        options: list[tuple[tuple[str, int, float], ...]],
        found: list[tuple[float, dict[int, tuple[str, int]]]],
    ) -> None:
        if k == len(positions):
            found.append((score, dict(changes)))
            return
        i = positions[k]
        for symbol, q, p in options[i]:
            if score * p < self.settings.threshold:
                break  # options are sorted by probability, so the rest score lower
            changes[i] = (symbol, q)
            self._expand(positions, k + 1, changes, score * p, options, found)
            del changes[i]

    def _partial(
        self,
        structure: Structure,
        oxi: dict[str, int],
        target: frozenset[str] | None,
        systems: list[frozenset[str]],
        rng: np.random.Generator,
        *,
        metallic: bool,
    ) -> list[_Proposal]:
        cfg = self.settings
        elements = set(oxi)
        if systems and not any(elements <= t for t in systems):
            # keeping part of every species means a parent outside the targets stays outside them
            return []
        dataset = _symmetry_dataset(structure, cfg.symprec)
        if dataset is None:
            return []
        labels = np.asarray(dataset.equivalent_atoms)
        counts = structure.composition.element_composition.get_el_amt_dict()
        specs: list[tuple[float, int, str, int, int, str, int]] = []
        for label in np.unique(labels):
            m = int(np.sum(labels == label))
            symbol = structure[int(label)].specie.symbol
            if m < 2 or not _in_table(symbol, oxi[symbol]):
                continue
            best: dict[str, tuple[float, int]] = {}
            for new_symbol, q, p in _substitutes(symbol, oxi[symbol], target, cfg.threshold):
                best.setdefault(new_symbol, (p, q))  # most probable charge state per element
            for new_symbol, (p, q) in best.items():
                for k in sorted({max(1, round(f * m)) for f in cfg.saps_fractions}):
                    if k < m:
                        specs.append((p, int(label), new_symbol, q, k, symbol, m))
        specs.sort(key=lambda t: (-t[0], t[1], t[2], t[4]))
        results: list[_Proposal] = []
        for p, label, new_symbol, q, k, symbol, m in specs:
            new_counts = dict(counts)
            new_counts[symbol] -= k
            new_counts[new_symbol] = new_counts.get(new_symbol, 0) + k
            if not is_charge_balanced(Composition(new_counts), allow_intermetallics=metallic):
                continue
            sites = np.flatnonzero(labels == label)
            chosen = np.sort(rng.choice(sites, size=k, replace=False))
            new_structure = structure.copy()
            for idx in chosen:
                new_structure.replace(int(idx), new_symbol)
            child = _symmetry_dataset(new_structure, cfg.symprec)
            if child is None or len(child.rotations) >= len(dataset.rotations):
                # within the tolerance the child can look as symmetric as the parent (near-higher-symmetry
                # parents); such a candidate is not a symmetry-lowering partial substitution
                continue
            results.append(
                _Proposal(
                    score=p,
                    structure=new_structure,
                    info={
                        "operation": "saps",
                        "substitutions": {_label(symbol, oxi[symbol]): _label(new_symbol, q)},
                        "score": round(p, 6),
                        "wyckoff": f"{m}{dataset.wyckoffs[label]}",
                        "orbit_size": m,
                        "fraction": round(k / m, 4),
                        "sites": [int(i) for i in chosen],
                        "parent_spacegroup": int(dataset.number),
                        "spacegroup": int(child.number),
                        "formula": new_structure.composition.reduced_formula,
                    },
                )
            )
            if len(results) >= cfg.max_candidates_per_parent:
                break
        return results


register(SubstitutionGenerator)


def substitution_score(old: str, new: str) -> float:
    """P(new | old) for two species strings such as "Mn2+" and "Fe2+" (Hautier et al. data).

    Raises:
        GeneratorError: If a species is not in the data-mined table.
    """
    model = _probability_model()
    try:
        a, b = Species.from_str(old), Species.from_str(new)
    except ValueError as exc:
        raise GeneratorError(f"cannot parse species ({exc}); write them like 'Fe2+'") from None
    for sp in (a, b):
        if sp not in model.species:
            raise GeneratorError(
                f"species {sp} is not in the substitution table; use a common oxidation state"
            )
    return float(model.cond_prob(b, a))


__all__ = ["SubstitutionGenerator", "SubstitutionSettings", "substitution_score"]
