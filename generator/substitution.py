"""Candidates by ionic substitution on known crystals: full and symmetry-aware partial (SAPS).

Full substitution replaces every site of one or more species of a parent, scored with the data-mined
substitution probabilities of Hautier et al. (Inorg. Chem. 50, 656 (2011), shipped with pymatgen): the score
is the product over replaced species of P(new species | old species) (`SubstitutionProbability.cond_prob(new,
old)`); unchanged species contribute 1. Partial substitution (SAPS, as in GNoME) replaces a fraction of one
Wyckoff orbit, keeping the parent's lattice and the other sites, which lowers the symmetry. Only
charge-balanced results are returned. Structures are unrelaxed: lengths in Å are the parent's.
"""

from __future__ import annotations

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
from generator.chemistry import is_charge_balanced, parse_chemical_system


class SubstitutionSettings(GeneratorSettings):
    """Settings of the substitution generator.

    Attributes:
        threshold: Smallest substitution score (product of P(new | old) over replaced species) kept.
        max_candidates_per_parent: Most candidates (full + partial) taken from one parent.
        max_substituted_species: Most species of a parent replaced at once in a full substitution.
        saps_fractions: Fractions of a Wyckoff orbit replaced in partial substitutions; () disables SAPS.
        saps_share: Share of each parent's candidates reserved for partial substitutions (if available).
        max_parent_sites: Parents with more sites are skipped.
        symprec: Symmetry tolerance (Å) for finding Wyckoff orbits.
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


def _same_sign(a: Species, b: Species) -> bool:
    # cations replace cations and anions anions; the data-mined table has rare cross-sign pairs
    return (a.oxi_state > 0) == (b.oxi_state > 0) and (a.oxi_state < 0) == (b.oxi_state < 0)


@dataclass
class _Proposal:
    score: float
    structure: Structure
    info: dict


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
        states = _integer_oxidation_states(structure.composition.reduced_formula)
        if states is None:
            return []
        oxi = dict(states)
        cap = self.settings.max_candidates_per_parent
        full = self._full(structure, oxi, target, systems)
        partial = self._partial(structure, oxi, target, systems, rng) if self.settings.saps_fractions else []
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
    ) -> list[_Proposal]:
        model = _probability_model()
        comp = structure.composition
        olds = [Species(el, oxi[el]) for el in sorted(oxi)]
        if any(sp not in model.species for sp in olds):
            return []
        amounts = [comp[sp.symbol] for sp in olds]
        pool = _species_pool(target)
        options: list[list[tuple[Species, float]]] = []
        for old in olds:
            opts = [(old, 1.0)] if target is None or old.symbol in target else []
            opts += sorted(
                (
                    (new, model.cond_prob(new, old))
                    for new in pool
                    if new.symbol != old.symbol and _same_sign(new, old)
                ),
                key=lambda t: -t[1],
            )
            options.append([o for o in opts if o[1] >= self.settings.threshold])
        max_changed = self.settings.max_substituted_species
        results: list[_Proposal] = []

        def recurse(i: int, chosen: list[tuple[Species, float]], score: float, changed: int) -> None:
            if score < self.settings.threshold:
                return
            if i == len(olds):
                if changed == 0:
                    return
                news = [c[0] for c in chosen]
                symbols = [sp.symbol for sp in news]
                if len(set(symbols)) != len(symbols):
                    return
                charge = sum(sp.oxi_state * a for sp, a in zip(news, amounts, strict=True))
                if abs(charge) > 1e-6:
                    return
                if systems and not any(set(symbols) <= t for t in systems):
                    return
                mapping = {o.symbol: nw.symbol for o, nw in zip(olds, news, strict=True)}
                new_structure = structure.copy()
                new_structure.replace_species({o: nw for o, nw in mapping.items() if o != nw})
                substitutions = {str(o): str(nw) for o, nw in zip(olds, news, strict=True) if o != nw}
                results.append(
                    _Proposal(
                        score=score,
                        structure=new_structure,
                        info={
                            "operation": "substitution",
                            "substitutions": substitutions,
                            "score": round(score, 6),
                            "formula": new_structure.composition.reduced_formula,
                        },
                    )
                )
                return
            for new, p in options[i]:
                is_change = new != olds[i]
                if is_change and changed >= max_changed:
                    continue
                recurse(i + 1, [*chosen, (new, p)], score * p, changed + int(is_change))

        recurse(0, [], 1.0, 0)
        results.sort(key=lambda r: -r.score)
        return results

    def _partial(
        self,
        structure: Structure,
        oxi: dict[str, int],
        target: frozenset[str] | None,
        systems: list[frozenset[str]],
        rng: np.random.Generator,
    ) -> list[_Proposal]:
        elements = set(oxi)
        if systems and not any(elements <= t for t in systems):
            # keeping part of every species means a parent outside the targets stays outside them
            return []
        model = _probability_model()
        try:
            dataset = SpacegroupAnalyzer(structure, symprec=self.settings.symprec).get_symmetry_dataset()
        except Exception:
            # spglib fails on some degenerate cells; such parents simply give no partial substitutions
            return []
        if dataset is None:
            return []
        labels = np.asarray(dataset.equivalent_atoms)
        pool = _species_pool(target)
        results: list[_Proposal] = []
        seen: set[tuple] = set()
        for label in np.unique(labels):
            sites = np.flatnonzero(labels == label)
            m = len(sites)
            if m < 2:
                continue
            symbol = structure[int(sites[0])].specie.symbol
            old = Species(symbol, oxi[symbol])
            if old not in model.species:
                continue
            best_by_element: dict[str, tuple[float, Species]] = {}
            for new in pool:
                if new.symbol == symbol or not _same_sign(new, old):
                    continue
                p = model.cond_prob(new, old)
                if p >= self.settings.threshold and p > best_by_element.get(new.symbol, (0.0, None))[0]:
                    best_by_element[new.symbol] = (p, new)
            for p, new in sorted(best_by_element.values(), key=lambda t: -t[0]):
                for fraction in self.settings.saps_fractions:
                    k = max(1, round(fraction * m))
                    if k >= m:
                        continue
                    key = (int(label), new.symbol, k)
                    if key in seen:
                        continue
                    seen.add(key)
                    chosen = np.sort(rng.choice(sites, size=k, replace=False))
                    new_structure = structure.copy()
                    for idx in chosen:
                        new_structure.replace(int(idx), new.symbol)
                    if not is_charge_balanced(new_structure.composition, allow_intermetallics=False):
                        continue
                    results.append(
                        _Proposal(
                            score=p,
                            structure=new_structure,
                            info={
                                "operation": "saps",
                                "substitutions": {str(old): str(new)},
                                "score": round(p, 6),
                                "wyckoff": f"{m}{dataset.wyckoffs[int(sites[0])]}",
                                "orbit_size": m,
                                "fraction": round(k / m, 4),
                                "sites": [int(i) for i in chosen],
                                "parent_spacegroup": int(dataset.number),
                                "formula": new_structure.composition.reduced_formula,
                            },
                        )
                    )
        results.sort(key=lambda r: -r.score)
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
