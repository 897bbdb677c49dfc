"""Chemistry helpers shared by the generators and the funnel: chemical systems and charge balance.

Charges are formal oxidation states in units of the elementary charge.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import cache, lru_cache
from typing import Literal

from pymatgen.core import Composition, Element

from generator.base import GeneratorError

ChargeRule = Literal["pymatgen", "common", "allowed"]
CompositionClass = Literal["common", "icsd", "full", "anion_rich", "metal_rich", "intermetallic"]

METAL_RICH_MAX_RATIO = 6
"""Most metal atoms per non-metal atom of a metal-rich composition (Ti6O, Fe3P, Ni3B, Cs11O3 lie within it)."""
ANION_RICH_MAX_RATIO = 3
"""Most anion atoms per other atom of an anion-rich composition (KO3, MgB2 and CoP3 lie within it)."""


class ChemistryError(GeneratorError):
    """An element symbol, chemical system or formula that cannot be understood."""


def parse_element(symbol: str) -> str:
    """Return the canonical element symbol, or raise `ChemistryError` naming the bad symbol."""
    text = symbol.strip()
    if not Element.is_valid_symbol(text):
        raise ChemistryError(f"unknown element {symbol!r}; use a symbol such as 'Li' or 'Fe'")
    return text


def atomic_radius(symbol: str) -> float:
    """pymatgen's atomic radius of an element (Å), its calculated radius where none is tabulated, else 1.5."""
    el = Element(symbol)
    return float(el.atomic_radius or el.atomic_radius_calculated or 1.5)


def parse_chemical_system(system: str | Iterable[str]) -> frozenset[str]:
    """Parse a chemical system such as "Li-Fe-P-O" (or a list of symbols) into a set of element symbols.

    Raises:
        ChemistryError: On an empty system or an unknown element.
    """
    parts = system.split("-") if isinstance(system, str) else list(system)
    elements = frozenset(parse_element(p) for p in parts if str(p).strip())
    if not elements:
        raise ChemistryError(f"empty chemical system {system!r}; write it like 'Li-Fe-P-O'")
    return elements


def parse_formula(formula: str) -> Composition:
    """Parse a formula such as "LiFePO4" into a composition of neutral elements.

    Raises:
        ChemistryError: If the formula cannot be parsed or names an unknown element.
    """
    try:
        comp = Composition(formula)
    except (ValueError, KeyError) as exc:
        raise ChemistryError(f"cannot parse formula {formula!r} ({exc}); write it like 'LiFePO4'") from None
    if comp.num_atoms <= 0:
        raise ChemistryError(f"formula {formula!r} has no atoms; write it like 'LiFePO4'")
    for el in comp.elements:
        if not Element.is_valid_symbol(str(getattr(el, "symbol", el))):
            raise ChemistryError(f"unknown element {el} in formula {formula!r}; write it like 'LiFePO4'")
    return comp.element_composition


def formula_unit(formula: str | Composition) -> Composition:
    """The smallest formula unit of a composition: element amounts divided by their greatest common divisor.

    Unlike pymatgen's `reduced_composition`, which keeps peroxides and molecular elements whole ("Na2O2", "O2"),
    this gives Na1 O1 for Na2O2, so a peroxide has the anonymous formula AB of its structure types and a
    2-atom cell is a valid multiple of it. Non-integer amounts are returned as they are (elements only).

    Raises:
        ChemistryError: If a formula string cannot be parsed (see `parse_formula`).
    """
    comp = parse_formula(formula) if isinstance(formula, str) else formula.element_composition
    amounts = [comp[el] for el in comp.elements]
    if not amounts or any(abs(a - round(a)) > 1e-6 for a in amounts):
        return comp
    divisor = math.gcd(*(round(a) for a in amounts))
    return Composition({el.symbol: round(comp[el]) // divisor for el in comp.elements})


def is_intermetallic(comp: Composition) -> bool:
    """True when every element is a metal (alloys and intermetallics have no meaningful formal charges)."""
    return all(is_metal(Element(el.symbol).Z) for el in comp.elements)


def _icsd_states(el: Element) -> tuple[int, ...]:
    # the same lists pymatgen's oxi_state_guesses searches by default
    return tuple(el.icsd_oxidation_states or el.common_oxidation_states or ())


@lru_cache(maxsize=65536)
def _balanced_pymatgen(reduced_formula: str) -> bool:
    # Existence-only version of Composition.oxi_state_guesses (per-site states, mixed valence allowed):
    # a subset-sum over the reachable total charge of each element instead of ranking every combination,
    # which takes 10-100 ms per formula in pymatgen.
    comp = Composition(reduced_formula)
    totals = {0}
    for el, amount in comp.items():
        n = round(amount)
        states = _icsd_states(el)
        if not states or abs(amount - n) > 1e-6:
            return False
        reach = {0}
        for _ in range(n):
            reach = {r + q for r in reach for q in states}
        totals = {t + r for t in totals for r in reach}
    return 0 in totals


@lru_cache(maxsize=65536)
def _balanced_common(reduced_formula: str) -> bool:
    comp = Composition(reduced_formula)
    return neutral_counts({el.Z: round(amount) for el, amount in comp.items()})


@cache
def oxidation_states(z: int) -> tuple[int, ...]:
    """Oxidation states the "common" rule tries for element `z`: pymatgen's common ones, else every known one,
    else (0,)."""
    el = Element.from_Z(z)
    states = set(el.common_oxidation_states) or set(el.oxidation_states)
    return tuple(sorted(states)) or (0,)


@cache
def is_metal(z: int) -> bool:
    """Whether element `z` is a metal (compositions of metals only are exempt from the charge rule)."""
    return bool(Element.from_Z(z).is_metal)


def counts_key(counts: Mapping[int, int]) -> tuple[tuple[int, int], ...]:
    """Sorted (atomic number, count) pairs of the elements present, the cache key of the charge rule."""
    return tuple(sorted((int(z), int(c)) for z, c in counts.items() if c > 0))


@lru_cache(maxsize=200_000)
def reachable_charges(key: tuple[tuple[int, int], ...]) -> frozenset[int]:
    """Every total formal charge reachable with one oxidation state per element, for (z, count) pairs."""
    sums = {0}
    for z, count in key:
        sums = {s + count * q for s in sums for q in oxidation_states(z)}
    return frozenset(sums)


def neutral_counts(counts: Mapping[int, int]) -> bool:
    """The "common" charge rule (SMACT-style) on {atomic number: count}: a pure element, or some choice of one
    oxidation state per element (`oxidation_states`) whose formal charges sum to zero. The one implementation,
    shared by the funnel, random search, the diffusion sampler's constrained decoding and its validity metric."""
    key = counts_key(counts)
    return len(key) <= 1 or 0 in reachable_charges(key)


@cache
def _all_states(symbol: str) -> tuple[int, ...]:
    """Every oxidation state pymatgen knows for an element: its full list joined with the ICSD one, without 0."""
    el = Element(symbol)
    return tuple(sorted((set(el.oxidation_states) | set(el.icsd_oxidation_states or ())) - {0}))


@lru_cache(maxsize=65536)
def _site_sums(states: tuple[int, ...], n: int) -> frozenset[int]:
    """Every total of `n` sites that each take one of `states` (mixed valence allowed)."""
    if n == 0 or not states:
        return frozenset({0}) if n == 0 else frozenset()
    half = _site_sums(states, n // 2)
    out = {a + b for a in half for b in half}
    if n % 2:
        out = {a + q for a in out for q in states}
    return frozenset(out)


@lru_cache(maxsize=262144)
def classify_counts(counts: tuple[tuple[str, int], ...]) -> CompositionClass | None:
    """The composition rule of generation and of the funnel's "allowed" charge rule, on (symbol, count) pairs.

    A compound (two or more elements) is allowed, and classed by the first test it passes:

    1. "intermetallic": every element is a metal (no formal charges; any ratio).
    2. "common": one common oxidation state per element balances it (`neutral_counts`, SMACT-style).
    3. "icsd": per-site ICSD oxidation states balance it (pymatgen's `oxi_state_guesses`, mixed valence):
       Ti2O3, Fe3O4, and many metal-rich pnictides and chalcogenides (Co2P, Ni12P5, Ni3S2, Ni3B, Mn5Si3).
    4. "full": per-site states from pymatgen's full lists (`Element.oxidation_states` joined with the ICSD
       ones) balance it, metals positive and the anion (the most electronegative non-metal) negative:
       peroxides (K2O2), Fe2P, Fe3P, Fe3C, V3Si.
    5. "anion_rich": the cations' total charge (same states) can be shared by more anions than balance allows,
       with at least 1/3 of a charge per anion and at most `ANION_RICH_MAX_RATIO` anions per other atom, for
       anions that can take -2 or less (not halogens): anion-anion bonds such as superoxides and ozonides
       (KO2, KO3), polysulfides, polyphosphides, boride and carbide networks (MgB2, TiB2).
    6. "metal_rich": the cations' smallest total charge exceeds what every anion at its most negative state
       can take: metal-metal bonds beyond every oxidation-state list, as in suboxides (Ti2O, Ti6O, Zr3O,
       Cs11O3) and metal-rich phosphides, silicides, sulfides and antimonides (Ti3P, Nb3Si, Ta2S, Pd4S,
       Ti3Sb), up to `METAL_RICH_MAX_RATIO` metal atoms per non-metal atom.

    Anything else (one element, an anion-rich excess beyond either bound, a metal-rich excess beyond the ratio)
    is None.
    """
    key = tuple((s, c) for s, c in counts if c > 0)
    if len(key) <= 1:
        return None
    metals = [(s, c) for s, c in key if Element(s).is_metal]
    if len(metals) == len(key):
        return "intermetallic"
    if neutral_counts({Element(s).Z: c for s, c in key}):
        return "common"
    if _balanced_pymatgen(Composition(dict(key)).reduced_formula):
        return "icsd"
    nonmetals = [(s, c) for s, c in key if not Element(s).is_metal]
    anion, n_anion = max(nonmetals, key=lambda sc: (Element(sc[0]).X, Element(sc[0]).Z))
    anion_states = tuple(q for q in _all_states(anion) if q < 0)
    if not anion_states:
        return None
    cation_totals = {0}
    for s, c in key:
        if s == anion:
            continue
        states = _all_states(s)
        states = tuple(q for q in states if q > 0) if Element(s).is_metal else states
        cation_totals = {t + r for t in cation_totals for r in _site_sums(states, c)}
    anion_totals = _site_sums(anion_states, n_anion)
    if any(-t in anion_totals for t in cation_totals):
        return "full"
    most = n_anion * max(-q for q in anion_states)
    n_other = sum(c for s, c in key if s != anion)
    # halogens (most negative state -1) bond to each other only in rare polyhalides
    bonds = min(anion_states) <= -2
    if (
        bonds
        and n_anion <= ANION_RICH_MAX_RATIO * n_other
        and any(n_anion <= 3 * t <= 3 * most for t in cation_totals)
    ):
        return "anion_rich"
    n_metal = sum(c for _, c in metals)
    if min(cation_totals) > most and n_metal <= METAL_RICH_MAX_RATIO * sum(c for _, c in nonmetals):
        return "metal_rich"
    return None


def composition_class(comp: Composition) -> CompositionClass | None:
    """`classify_counts` of a composition (reduced first; oxidation states on species are ignored)."""
    reduced = comp.element_composition.reduced_composition
    if any(abs(a - round(a)) > 1e-6 for a in reduced.values()):
        return None
    return classify_counts(tuple(sorted((el.symbol, round(a)) for el, a in reduced.items())))


def is_charge_balanced(
    comp: Composition, *, rule: ChargeRule = "pymatgen", allow_intermetallics: bool = True
) -> bool:
    """Whether a composition can be assigned formal oxidation states summing to zero.

    Args:
        comp: The composition (oxidation states on species, if any, are ignored).
        rule: "pymatgen" asks whether `Composition.oxi_state_guesses` would find any guess (same ICSD
            oxidation-state lists, mixed valence allowed, computed much faster); "common" is `neutral_counts`
            (one common oxidation state per element, SMACT-style), the rule the diffusion sampler decodes with;
            "allowed" is the composition rule of generation (`classify_counts`: full oxidation-state lists,
            anion-rich and metal-rich compounds).
        allow_intermetallics: Accept compositions made only of metals (and pure elements) without a charge check.
    """
    element_comp = comp.element_composition
    if len(element_comp.elements) == 1:
        return True
    if allow_intermetallics and is_intermetallic(element_comp):
        return True
    reduced = element_comp.reduced_formula
    if rule == "pymatgen":
        return _balanced_pymatgen(reduced)
    if rule == "common":
        return _balanced_common(reduced)
    if rule == "allowed":
        return composition_class(element_comp) not in (None, "intermetallic")
    raise ChemistryError(f"unknown charge-balance rule {rule!r}; choose 'pymatgen', 'common' or 'allowed'")


def enumerate_compositions(
    elements: Sequence[str],
    *,
    max_atoms: int = 10,
    max_per_element: int = 6,
    rule: ChargeRule = "common",
) -> list[Composition]:
    """Charge-balanced compositions containing every element of a chemical system.

    Args:
        elements: The chemical system's elements.
        max_atoms: Largest number of atoms per formula unit.
        max_per_element: Largest count of any single element per formula unit.
        rule: Charge-balance rule (see `is_charge_balanced`); intermetallic systems are enumerated without it.

    Returns:
        Reduced compositions, fewest atoms first, then alphabetically by formula.
    """
    symbols = sorted({parse_element(e) for e in elements})
    metallic = all(Element(s).is_metal for s in symbols)
    found: dict[str, Composition] = {}
    counts_range = range(1, max_per_element + 1)
    for counts in itertools.product(counts_range, repeat=len(symbols)):
        if sum(counts) > max_atoms or math.gcd(*counts) != 1:
            continue
        comp = Composition(dict(zip(symbols, counts, strict=True)))
        if metallic or len(symbols) == 1 or is_charge_balanced(comp, rule=rule, allow_intermetallics=False):
            found.setdefault(comp.reduced_formula, comp)
    return sorted(found.values(), key=lambda c: (c.num_atoms, c.reduced_formula))
