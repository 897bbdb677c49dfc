"""Chemistry helpers shared by the generators and the funnel: chemical systems and charge balance.

Charges are formal oxidation states in units of the elementary charge.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal

from pymatgen.core import Composition, Element

from generator.base import GeneratorError

ChargeRule = Literal["pymatgen", "common"]


class ChemistryError(GeneratorError):
    """An element symbol, chemical system or formula that cannot be understood."""


def parse_element(symbol: str) -> str:
    """Return the canonical element symbol, or raise `ChemistryError` naming the bad symbol."""
    text = symbol.strip()
    if not Element.is_valid_symbol(text):
        raise ChemistryError(f"unknown element {symbol!r}; use a symbol such as 'Li' or 'Fe'")
    return text


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


def is_intermetallic(comp: Composition) -> bool:
    """True when every element is a metal (alloys and intermetallics have no meaningful formal charges)."""
    return all(Element(el.symbol).is_metal for el in comp.elements)


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
    return common_charge_assignment(comp) is not None


def common_charge_assignment(comp: Composition) -> dict[str, int] | None:
    """Find one oxidation state per element from pymatgen's common states that sums to zero.

    SMACT-style rule: besides neutrality, every anion must be more electronegative (Pauling) than every
    cation, so e.g. Li3P is accepted as Li+/P3- but not as a P cation with Li anion.

    Returns:
        Element symbol -> oxidation state, or None when no assignment exists.
    """
    elements = sorted(comp.elements, key=lambda e: e.X if not math.isnan(e.X) else 0.0)
    amounts = [comp[el] for el in elements]
    choices = [el.common_oxidation_states or (0,) for el in elements]
    if len(elements) == 1:
        return {elements[0].symbol: 0}
    for states in itertools.product(*choices):
        if abs(sum(q * n for q, n in zip(states, amounts, strict=True))) > 1e-6:
            continue
        cation_x = [el.X for el, q in zip(elements, states, strict=True) if q > 0]
        anion_x = [el.X for el, q in zip(elements, states, strict=True) if q < 0]
        if cation_x and anion_x and max(cation_x) >= min(anion_x):
            continue
        return {el.symbol: int(q) for el, q in zip(elements, states, strict=True)}
    return None


def is_charge_balanced(
    comp: Composition, *, rule: ChargeRule = "pymatgen", allow_intermetallics: bool = True
) -> bool:
    """Whether a composition can be assigned formal oxidation states summing to zero.

    Args:
        comp: The composition (oxidation states on species, if any, are ignored).
        rule: "pymatgen" asks whether `Composition.oxi_state_guesses` would find any guess (same ICSD
            oxidation-state lists, mixed valence allowed, computed much faster); "common" uses pymatgen's
            common oxidation states with the electronegativity-ordering rule (SMACT-style).
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
    raise ChemistryError(f"unknown charge-balance rule {rule!r}; choose 'pymatgen' or 'common'")


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
