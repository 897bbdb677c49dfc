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
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability
from pymatgen.core import Composition, Element, Species, Structure

from generator.base import (
    Candidate,
    GenerationContext,
    Generator,
    GeneratorError,
    GeneratorSettings,
    KnownStructure,
    register,
)
from generator.chemistry import (
    atomic_radius,
    composition_class,
    formula_unit,
    is_charge_balanced,
    is_intermetallic,
    parse_chemical_system,
)
from generator.prototypes import structure_prototype, symmetry_dataset
from generator.seeds import SPLITS, Withholding, load_seeds, seed_table


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


@lru_cache(maxsize=65536)
def _parent_states(reduced_formula: str) -> tuple[dict[str, int], bool] | None:
    """(charge per element, intermetallic?) used to look a parent up in the table, or None if it has none."""
    metallic = is_intermetallic(Composition(reduced_formula))
    states = _metallic_states(reduced_formula) if metallic else None
    states = states or _integer_oxidation_states(reduced_formula)
    return None if states is None else (dict(states), metallic)


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
    target system (e.g. LiMnPO4 for "Li-Fe-P-O"), ranked by their best full-substitution score into a target
    (`parent_score`), then closest first; every candidate lies inside a target.
    """

    name = "substitution"
    Settings = SubstitutionSettings
    supports_prototype_search: ClassVar[bool] = True

    def __init__(self, *, settings: SubstitutionSettings | None = None) -> None:
        self.settings = settings or SubstitutionSettings()

    def generate(self, *, n: int, context: GenerationContext, seed: int = 0) -> list[Candidate]:
        """Propose up to `n` substituted crystals.

        Candidates come parent by parent (with target systems: best `parent_score` first, then closest to a
        target; otherwise in a shuffled order reproducible for `seed`), each parent giving up to `max_candidates_per_parent`, best score first.
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
                info = proposal.info
                if "prototype" in parent.properties:
                    info = {**info, "parent_prototype": parent.properties["prototype"]}
                out.append(
                    Candidate(structure=proposal.structure, source=self.name, parent=parent.id, info=info)
                )
                if len(out) >= n:
                    break
        return out

    def _ranked_parents(
        self, known: Sequence[KnownStructure], systems: list[frozenset[str]], rng: np.random.Generator
    ) -> Iterator[tuple[KnownStructure, frozenset[str] | None]]:
        order = rng.permutation(len(known))
        ranked: list[tuple[float, int, int, int, KnownStructure, frozenset[str] | None]] = []
        for tie, i in enumerate(order):
            parent = known[int(i)]
            if len(parent.structure) > self.settings.max_parent_sites:
                continue
            if not systems:
                ranked.append((0.0, 0, 0, tie, parent, None))
                continue
            elements = {el.symbol for el in parent.structure.composition.element_composition.elements}
            formula = parent.structure.composition.reduced_formula
            best = None
            for target in systems:
                foreign = len(elements - target)
                if len(elements) > len(target) or foreign > self.settings.max_substituted_species:
                    continue
                score = self._target_score(formula, target, systems)
                if score <= 0 and foreign:
                    continue  # no full substitution reaches the target, and partial ones keep foreign elements
                key = (-score, foreign, -len(elements & target))
                if best is None or key < best[0]:
                    best = (key, target)
            if best is not None:
                ranked.append((*best[0], tie, parent, best[1]))
        ranked.sort(key=lambda r: r[:4])
        for *_, parent, target in ranked:
            yield parent, target

    def _target_score(
        self, reduced_formula: str, target: frozenset[str], systems: list[frozenset[str]]
    ) -> float:
        key = (reduced_formula, target, tuple(sorted(map(tuple, map(sorted, systems)))))
        cache = self.__dict__.setdefault("_score_cache", {})
        if key not in cache:
            found = _parent_states(reduced_formula)
            maps = (
                self._species_maps(Composition(reduced_formula), found[0], target, systems, metallic=found[1])
                if found is not None
                else []
            )
            cache[key] = maps[0][0] if maps else 0.0
        return cache[key]

    def _proposals(
        self,
        parent: KnownStructure,
        target: frozenset[str] | None,
        systems: list[frozenset[str]],
        rng: np.random.Generator,
    ) -> list[_Proposal]:
        structure = parent.structure.copy()
        structure.remove_oxidation_states()
        found = _parent_states(structure.composition.reduced_formula)
        if found is None:
            return []
        oxi, metallic = found
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
        olds = [(el, oxi[el]) for el in sorted(oxi)]
        proposals: list[_Proposal] = []
        for score, changes in self._species_maps(
            structure.composition, oxi, target, systems, metallic=metallic
        ):
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

    def _species_maps(
        self,
        comp: Composition,
        oxi: dict[str, int],
        target: frozenset[str] | None,
        systems: list[frozenset[str]],
        *,
        metallic: bool,
    ) -> list[tuple[float, dict[int, tuple[str, int]]]]:
        """Valid full substitutions of a parent, best score first: (score, {species position: (symbol, q)}).

        Positions index the parent's species sorted by symbol. Valid: at most `max_substituted_species`
        replaced, every element outside `target` replaced, distinct elements, inside a target system, and
        charge-neutral (or intermetallic from an intermetallic parent).
        """
        cfg = self.settings
        olds = [(el, oxi[el]) for el in sorted(oxi)]
        if any(not _in_table(el, q) for el, q in olds):
            return []
        amounts = [comp[el] for el, _ in olds]
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
        valid = []
        for score, changes in sorted(found, key=lambda t: -t[0]):
            symbols = [changes[i][0] if i in changes else el for i, (el, _) in enumerate(olds)]
            if len(set(symbols)) != len(symbols):
                continue
            if systems and not any(set(symbols) <= t for t in systems):
                continue
            charge = sum(
                (changes[i][1] if i in changes else q) * a
                for i, ((_, q), a) in enumerate(zip(olds, amounts, strict=True))
            )
            if abs(charge) > 1e-6 and not (
                metallic and is_intermetallic(Composition(dict.fromkeys(symbols, 1)))
            ):
                # intermetallic parents give intermetallic children: formal charges do not apply
                continue
            valid.append((score, changes))
        return valid

    def parent_score(self, reduced_formula: str, systems: Sequence[str]) -> float:
        """Best full-substitution score (product of P(new | old)) taking a parent formula into a target system.

        0 when no valid substitution reaches one (see `_species_maps`).
        """
        targets = [parse_chemical_system(s) for s in systems]
        return max((self._target_score(reduced_formula, t, targets) for t in targets), default=0.0)

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
        dataset = symmetry_dataset(structure, cfg.symprec)
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
            child = symmetry_dataset(new_structure, cfg.symprec)
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


def table_prototypes(rows: pd.DataFrame) -> pd.Series:
    """`generator.prototypes.prototype_key` of every row of a `generator.seeds.seed_table`, indexed like the rows
    (read from the shipped index, so no structure is parsed)."""
    return rows["prototype"].astype(object)


@lru_cache(maxsize=8192)
def _best_into(symbol: str, target: frozenset[str], threshold: float) -> float:
    """Largest P(new | old) over the charge states of `symbol` and the species of `target` (1 if it is in it)."""
    if symbol in target:
        return 1.0
    best = 0.0
    for sp in _species_pool(frozenset({symbol})):
        options = _substitutes(sp.symbol, int(sp.oxi_state), target, threshold)
        if options:
            best = max(best, options[0][2])
    return best


@lru_cache(maxsize=256)
def _has_anions(target: frozenset[str]) -> bool:
    return any(sp.oxi_state < 0 for sp in _species_pool(target))


def _score_bound(
    elements: frozenset[str], targets: Sequence[frozenset[str]], cfg: SubstitutionSettings
) -> float:
    """An upper bound of `parent_score` from the elements alone (no oxidation-state guess): the product of each
    element's best substitution probability into the target. 0 when no target can be reached: too many elements,
    too many foreign ones, or an ionic parent for a target without anions (anions only replace anions)."""
    metallic = all(Element(e).is_metal for e in elements)
    best = 0.0
    for target in targets:
        if len(elements) > len(target) or len(elements - target) > cfg.max_substituted_species:
            continue
        if not metallic and not _has_anions(target):
            continue
        bound = 1.0
        for el in elements:
            bound *= _best_into(el, target, cfg.threshold)
        best = max(best, bound)
    return best if best >= cfg.threshold else 0.0


def prototype_parents(
    *,
    chemical_systems: Sequence[str],
    settings: SubstitutionSettings | None = None,
    withhold: Withholding | None = None,
    exclude_prototypes: Collection[str] = (),
    limit: int | None = None,
    min_elements: int = 2,
    splits: Sequence[str] = SPLITS,
) -> list[KnownStructure]:
    """One substitution parent per structure prototype, from every bundled chemical system that substitutes into
    a target system.

    Every bundled crystal whose elements can be mapped into a target system by the Hautier substitution table
    (same rules and threshold as `SubstitutionGenerator`) is scored with `parent_score`; the best-scoring crystal
    of each prototype (`generator.prototypes.prototype_key`) represents it. For Li-Al, LiIn, LiZn, LiCd and NaTl
    are all the B32 prototype (AB, Fd-3m, 4 atoms, Wyckoff 8a and 8b), so it is offered once. Exact scores need an
    oxidation-state guess per formula (slow for ionic crystals), so formulas are scored best bound first and the
    search stops once `limit` prototypes are found that no unscored formula could beat.

    Args:
        chemical_systems: Target systems such as "Li-Al".
        settings: Substitution settings (threshold, most substituted species, largest parent).
        withhold: Crystals hidden from the campaign; never parents.
        exclude_prototypes: Prototype keys already used (their children are known), skipped.
        limit: At most this many parents (None: all, which can take minutes for oxide targets).
        min_elements: Fewest elements of a parent; 2 leaves elemental structure types to the references.
        splits: Bundled splits searched.

    Returns:
        Parents, best score first, with properties prototype, prototype_score and prototype_members (bundled
        crystals of the prototype whose elements all reach the target) besides the seed properties.

    Raises:
        GeneratorError: On an unknown element or chemical system.
    """
    generator = SubstitutionGenerator(settings=settings)
    cfg = generator.settings
    targets = [parse_chemical_system(s) for s in chemical_systems]
    if not targets:
        raise GeneratorError("prototype_parents needs target chemical systems, e.g. ['Li-Al']")
    table = seed_table(splits=splits)
    mask = (table["n_sites"] <= cfg.max_parent_sites) & (table["element_set"].map(len) >= min_elements)
    if withhold:
        mask &= ~withhold.mask(table)
    bounds = {s: _score_bound(s, targets, cfg) for s in table["element_set"][mask].unique()}
    rows = table[mask & table["element_set"].map(lambda s: bounds.get(s, 0.0) > 0)]
    excluded = set(exclude_prototypes)
    prototypes = table_prototypes(rows)
    keep = ~prototypes.isin(excluded)
    rows, prototypes = rows[keep], prototypes[keep]
    by_formula = {f: group.index for f, group in rows.groupby("reduced_formula", sort=False)}
    bound_of = {f: bounds[rows.loc[idx[0], "element_set"]] for f, idx in by_formula.items()}
    order = sorted(by_formula, key=lambda f: (-bound_of[f], f))
    best: dict[str, tuple[float, str]] = {}  # prototype -> (score, material id)
    members = prototypes.value_counts().to_dict()
    for formula in order:
        if limit is not None and len(best) >= limit:
            kth = sorted((v[0] for v in best.values()), reverse=True)[limit - 1]
            if bound_of[formula] < kth:
                break  # no formula left can displace the current top `limit`
        score = generator.parent_score(formula, chemical_systems)
        if score <= 0:
            continue
        for idx in by_formula[formula]:
            proto, ident = prototypes[idx], str(rows.at[idx, "material_id"])
            if proto not in best or (-score, ident) < (-best[proto][0], best[proto][1]):
                best[proto] = (score, ident)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1]))[:limit]
    loaded = {k.id: k for k in load_seeds(splits=splits, ids=[ident for _, (_, ident) in ranked])}
    out = []
    for proto, (score, ident) in ranked:
        known = loaded[ident]
        known.properties.update(prototype=proto, prototype_score=score, prototype_members=int(members[proto]))
        out.append(known)
    return out


@lru_cache(maxsize=65536)
def element_substitution_probability(old: str, new: str) -> float:
    """P(new | old) between two elements: the largest Hautier probability over their species of one sign (a
    cation for a cation, an anion for an anion); 1 for the same element, 0 when no such pair is in the table."""
    if old == new:
        return 1.0
    model = _probability_model()
    olds, news = _species_pool(frozenset({old})), _species_pool(frozenset({new}))
    return max(
        (float(model.cond_prob(b, a)) for a in olds for b in news if _same_sign(a, b)),
        default=0.0,
    )


@lru_cache(maxsize=65536)
def _reduced_counts(formula: str) -> tuple[tuple[str, int], ...]:
    comp = formula_unit(formula)
    return tuple(sorted((el.symbol, round(a)) for el, a in comp.items()))


@lru_cache(maxsize=262144)
def decoration_map(
    parent_formula: str, target_formula: str
) -> tuple[float, tuple[tuple[str, str], ...]] | None:
    """The element map that decorates a parent's structure type with a target composition, and its score.

    Elements are paired by their share of the formula (the anonymous formulas must agree); among elements of
    equal share, the pairing with the largest product of `element_substitution_probability` is taken, so the
    anion of the parent carries the anion of the target. Returns (score, ((old, new), ...)) or None when the
    anonymous formulas differ or some pair has no probability.
    """
    parent, target = _reduced_counts(parent_formula), _reduced_counts(target_formula)
    if sorted(c for _, c in parent) != sorted(c for _, c in target):
        return None
    score, pairs = 1.0, []
    for amount in sorted({c for _, c in parent}):
        olds = [s for s, c in parent if c == amount]
        news = [s for s, c in target if c == amount]
        best: tuple[float, tuple[str, ...]] | None = None
        for perm in itertools.permutations(news):
            p = float(
                np.prod([element_substitution_probability(o, n) for o, n in zip(olds, perm, strict=True)])
            )
            if best is None or p > best[0]:
                best = (p, perm)
        assert best is not None
        if best[0] <= 0:
            return None
        score *= best[0]
        pairs.extend(zip(olds, best[1], strict=True))
    return score, tuple(sorted(pairs))


def decorate(structure: Structure, mapping: dict[str, str]) -> Structure:
    """The parent's structure with its elements replaced by `mapping` (all sites of an element at once), its
    volume scaled by the ratio of the summed cubes of the atomic radii (Å) so the cell starts near a
    plausible density; fractional coordinates are the parent's."""
    child = structure.copy()
    child.remove_oxidation_states()
    old = sum(atomic_radius(site.specie.symbol) ** 3 for site in child)
    child.replace_species({a: b for a, b in mapping.items() if a != b})
    new = sum(atomic_radius(site.specie.symbol) ** 3 for site in child)
    child.scale_lattice(child.volume * new / old)
    return child


@dataclass(frozen=True)
class Decoration:
    """A bundled structure type decorated with a target composition.

    Attributes:
        prototype: The structure type (`generator.prototypes.prototype_key`).
        material_id: The bundled crystal that represents it (best score of its members).
        formula: The target's reduced formula.
        mapping: (parent element, target element) pairs.
        score: Product of the pairs' substitution probabilities (`decoration_map`).
        rank_score: What decorations are ranked by: the target composition's weight times `score`, halved for
        each better-scoring decoration of the same formula (so formulas take turns instead of the heaviest
            one taking every slot).
    """

    prototype: str
    material_id: str
    formula: str
    mapping: tuple[tuple[str, str], ...]
    score: float
    rank_score: float


def prototype_decorations(
    *,
    weights: dict[str, float],
    max_sites: int,
    withhold: Withholding | None = None,
    exclude: Collection[tuple[str, str]] = (),
    splits: Sequence[str] = SPLITS,
) -> list[Decoration]:
    """Every bundled structure type whose anonymous formula is that of a target composition, decorated with it.

    For each target formula (`weights`: reduced formula -> weight, e.g. from `generator.compositions`) every
    bundled crystal of the same anonymous formula (two or more elements, at most `max_sites` atoms, not
    withheld) is a candidate parent; the best-scoring crystal (`decoration_map`) of each prototype represents it.
    A prototype is decorated once per target formula that fits it, so the search covers every structure type
    of every allowed composition instead of the types the ionic substitution table reaches.

    Args:
        weights: Target reduced formulas and their weights (formulas of one element are ignored).
        max_sites: Largest parent cell, atoms (the child has as many).
        withhold: Crystals hidden from the campaign; never parents.
        exclude: (prototype, formula) pairs already spent, skipped.
        splits: Bundled splits searched.

    Returns:
        Decorations, highest `rank_score` first (ties: prototype, formula).
    """
    targets: dict[str, list[str]] = {}
    for formula in weights:
        counts = _reduced_counts(formula)
        if len(counts) >= 2:
            anonymous = Composition(dict(counts)).anonymized_formula
            targets.setdefault(anonymous, []).append(formula)
    table = seed_table(splits=splits)
    mask = (table["n_sites"] <= max_sites) & table["anonymous_formula"].isin(set(targets))
    if withhold:
        mask &= ~withhold.mask(table)
    rows = table[mask]
    spent = set(exclude)
    best: dict[tuple[str, str], tuple[float, str, tuple[tuple[str, str], ...]]] = {}
    for ident, parent_formula, anonymous, proto in zip(
        rows["material_id"],
        rows["reduced_formula"],
        rows["anonymous_formula"],
        table_prototypes(rows),
        strict=True,
    ):
        for formula in targets[anonymous]:
            if (proto, formula) in spent:
                continue
            found = decoration_map(parent_formula, formula)
            if found is None:
                continue
            key = (proto, formula)
            if key not in best or (-found[0], str(ident)) < (-best[key][0], best[key][1]):
                best[key] = (found[0], str(ident), found[1])
    by_formula: dict[str, list[tuple[float, str, str, tuple[tuple[str, str], ...]]]] = {}
    for (proto, formula), (score, ident, mapping) in best.items():
        by_formula.setdefault(formula, []).append((score, proto, ident, mapping))
    out = []
    for formula, found in by_formula.items():
        for k, (score, proto, ident, mapping) in enumerate(sorted(found, key=lambda t: (-t[0], t[1]))):
            out.append(
                Decoration(
                    prototype=proto,
                    material_id=ident,
                    formula=formula,
                    mapping=mapping,
                    score=score,
                    rank_score=weights[formula] * score * 0.5**k,
                )
            )
    return sorted(out, key=lambda d: (-d.rank_score, d.prototype, d.formula))


def decorated_candidates(
    decorations: Sequence[Decoration],
    *,
    chemical_systems: Sequence[str] = (),
    settings: SubstitutionSettings | None = None,
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
) -> Iterator[Candidate]:
    """The children of `decorations`, in their order (parents parsed in batches as they are needed), each followed
    by its partial substitution (`partial_decoration`) when `chemical_systems` are given and the settings'
    `saps_fractions` are not empty.

    Each candidate's `info`: operation "decoration" (or "decoration_saps", with the orbit, fraction and sites
    replaced), parent_prototype, formula, substitutions and score.
    """
    cfg = settings or SubstitutionSettings()
    systems = [parse_chemical_system(s) for s in chemical_systems]
    rng = np.random.default_rng(seed)
    batch = 32
    for start in range(0, len(decorations), batch):
        chunk = decorations[start : start + batch]
        parents = {k.id: k for k in load_seeds(splits=splits, ids=[d.material_id for d in chunk])}
        for d in chunk:
            child = decorate(parents[d.material_id].structure, dict(d.mapping))
            info = {
                "operation": "decoration",
                "parent_prototype": d.prototype,
                "formula": d.formula,
                "substitutions": {a: b for a, b in d.mapping if a != b},
                "score": round(d.score, 8),
            }
            yield Candidate(
                structure=child, source=SubstitutionGenerator.name, parent=d.material_id, info=info
            )
            elements = {el.symbol for el in child.composition.elements}
            system = min((t for t in systems if elements <= t), key=len, default=None)
            if system is None or not cfg.saps_fractions:
                continue
            partial = partial_decoration(child, elements=system, settings=cfg, rng=rng)
            if partial is not None:
                variant, extra = partial
                yield Candidate(
                    structure=variant,
                    source=SubstitutionGenerator.name,
                    parent=d.material_id,
                    info={**info, **extra, "score": round(d.score * extra["score"], 8)},
                )


def partial_decoration(
    structure: Structure,
    *,
    elements: Collection[str],
    settings: SubstitutionSettings,
    rng: np.random.Generator,
) -> tuple[Structure, dict] | None:
    """A symmetry-aware partial substitution (SAPS) of a decorated child without oxidation states: a fraction
    (`saps_fractions`) of one Wyckoff orbit of two or more sites takes another element of `elements`, the most
    probable first (`element_substitution_probability`, so a cation never takes an anion's place), when the new
    composition is allowed (`generator.chemistry.composition_class`) and the child keeps fewer symmetry
    operations than the structure. None when no such substitution exists."""
    dataset = symmetry_dataset(structure, settings.symprec)
    if dataset is None:
        return None
    labels = np.asarray(dataset.equivalent_atoms)
    counts = structure.composition.element_composition.get_el_amt_dict()
    options = []
    for label in np.unique(labels):
        m = int(np.sum(labels == label))
        old = structure[int(label)].specie.symbol
        for new in sorted(set(elements) - {old}):
            p = element_substitution_probability(old, new)
            for k in sorted({max(1, round(f * m)) for f in settings.saps_fractions}):
                if p > 0 and k < m:
                    options.append((-p, int(label), new, k, old, m))
    for neg_p, label, new, k, old, m in sorted(options):
        new_counts = dict(counts)
        new_counts[old] -= k
        new_counts[new] = new_counts.get(new, 0) + k
        if composition_class(Composition(new_counts)) is None:
            continue
        chosen = np.sort(rng.choice(np.flatnonzero(labels == label), size=k, replace=False))
        variant = structure.copy()
        for idx in chosen:
            variant.replace(int(idx), new)
        lowered = symmetry_dataset(variant, settings.symprec)
        if lowered is None or len(lowered.rotations) >= len(dataset.rotations):
            continue
        return variant, {
            "operation": "decoration_saps",
            "formula": variant.composition.reduced_formula,
            "saps": {old: new},
            "score": -neg_p,
            "wyckoff": f"{m}{dataset.wyckoffs[label]}",
            "fraction": round(k / m, 4),
            "sites": [int(i) for i in chosen],
        }
    return None


@dataclass(frozen=True)
class Breadth:
    """How varied a set of structures is: distinct reduced formulas and distinct prototypes
    (`structure_prototype`)."""

    formulas: int
    prototypes: int

    def narrower_than(self, other: Breadth) -> bool:
        """Fewer distinct formulas or fewer distinct prototypes than `other`."""
        return self.formulas < other.formulas or self.prototypes < other.prototypes


def breadth(structures: Sequence[Structure]) -> Breadth:
    """Distinct formulas and prototypes of `structures`."""
    return Breadth(
        formulas=len({s.composition.reduced_formula for s in structures}),
        prototypes=len({structure_prototype(s) for s in structures}),
    )


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


__all__ = [
    "Breadth",
    "Decoration",
    "SubstitutionGenerator",
    "SubstitutionSettings",
    "breadth",
    "decorate",
    "decorated_candidates",
    "decoration_map",
    "element_substitution_probability",
    "partial_decoration",
    "prototype_decorations",
    "prototype_parents",
    "substitution_score",
    "table_prototypes",
]
