"""Electrochemical stability window against Li from a convex hull (grand-potential analysis, pymatgen).

With Li open to a reservoir at chemical potential μ_Li, a phase is stable where it stays on the hull of the grand
potential; as μ_Li falls from that of Li metal the phase is first (maybe) reduced, then stable, then oxidised.
pymatgen's `PhaseDiagram.get_element_profile` gives the critical chemical potentials along that path and the
phases in equilibrium between them; the window is the μ_Li interval in which the phase itself is the equilibrium,
written as a voltage V = -(μ_Li - μ_Li(metal)) / e vs Li/Li+ (Richards et al., Chem. Mater. 28, 266 (2016)).

Every energy comes from one hull (the campaign's oracle level of theory). A phase above the hull is stable at no
μ_Li; it is placed on the hull (its energy lowered by its E_hull) and the window of that placement is reported with
its E_hull beside it, since a metastable phase that survives keeps roughly the window of the hull phase it mimics.

Units: energies eV/atom, voltages V vs Li/Li+.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element

from loop.errors import InputError
from loop.science.hull import HullEntry

# How far below the hull a phase above it is placed, so that it is an equilibrium phase of the profile, eV/atom.
_ONTO_HULL = 1e-6


class WindowError(InputError, ValueError):
    """The window cannot be computed: the mobile ion or an element reference is missing from the hull."""


@dataclass(frozen=True)
class StabilityWindow:
    """The voltage range vs Li/Li+ over which one phase is stable on the hull.

    Attributes:
        reduction_v: Lower end: below it the phase takes up Li (is reduced); 0 means stable against Li metal.
        oxidation_v: Upper end: above it the phase gives up Li (is oxidised); inf when nothing oxidises it on
            this hull (a Li-free end member).
        e_above_hull: The phase's own distance above the hull, eV/atom (0 on it; > 0: placed on the hull).
        reduced_to: Reduced formulas of the equilibrium phases just below the window (besides Li).
        oxidised_to: Reduced formulas of the equilibrium phases just above the window.
    """

    reduction_v: float
    oxidation_v: float
    e_above_hull: float
    reduced_to: tuple[str, ...]
    oxidised_to: tuple[str, ...]

    @property
    def width_v(self) -> float:
        return self.oxidation_v - self.reduction_v

    def to_dict(self) -> dict[str, object]:
        return {
            "reduction_v": self.reduction_v,
            "oxidation_v": None if math.isinf(self.oxidation_v) else self.oxidation_v,
            "width_v": None if math.isinf(self.width_v) else self.width_v,
            "e_above_hull": self.e_above_hull,
            "reduced_to": list(self.reduced_to),
            "oxidised_to": list(self.oxidised_to),
        }


def stability_window(
    *,
    composition: Composition | str,
    energy_per_atom: float,
    entries: Sequence[HullEntry],
    specie: str = "Li",
) -> StabilityWindow:
    """The stability window of one phase against `specie`, on the hull of `entries`.

    Args:
        composition: The phase's composition.
        energy_per_atom: Its energy in the hull's level of theory, eV/atom.
        entries: The hull's entries (every element of the phase and `specie` needs an elemental entry); entries
            outside the phase's chemical system plus `specie` are ignored.
        specie: The ion exchanged with the reservoir.

    Raises:
        WindowError: `specie` or an elemental reference is missing.
    """
    comp = Composition(composition)
    ion = Element(specie)
    system = {el.symbol for el in comp.elements} | {ion.symbol}
    inside = [
        PDEntry(Composition(e.composition), e.energy_per_atom * Composition(e.composition).num_atoms)
        for e in entries
        if {el.symbol for el in Composition(e.composition).elements} <= system
    ]
    have = {e.composition.elements[0].symbol for e in inside if e.composition.is_element}
    missing = sorted(system - have)
    if missing:
        raise WindowError(
            f"no elemental entry for {', '.join(missing)} on the hull; the window vs {specie} needs every element"
        )
    pd = PhaseDiagram(inside)
    hull_e = float(pd.get_hull_energy_per_atom(comp))
    e_above = float(energy_per_atom) - hull_e
    placed = float(energy_per_atom) if e_above <= 0 else hull_e - _ONTO_HULL
    target = PDEntry(comp, placed * comp.num_atoms, name="target")
    pd = PhaseDiagram([*inside, target])
    mu_metal = pd.el_refs[ion].energy_per_atom
    profile = pd.get_element_profile(ion, comp)
    reduced = comp.reduced_formula

    def formulas(step: dict) -> tuple[str, ...]:
        return tuple(sorted({e.composition.reduced_formula for e in step["entries"]} - {ion.symbol}))

    for i, step in enumerate(profile):
        if formulas(step) != (reduced,):
            continue
        # `chempot` is where this equilibrium begins as μ falls; the next step's is where it ends.
        low = max(0.0, -float(step["chempot"] - mu_metal))
        high = -float(profile[i + 1]["chempot"] - mu_metal) if i + 1 < len(profile) else math.inf
        return StabilityWindow(
            reduction_v=low,
            oxidation_v=high,
            e_above_hull=max(0.0, e_above),
            reduced_to=formulas(profile[i - 1]) if i > 0 else (),
            oxidised_to=formulas(profile[i + 1]) if i + 1 < len(profile) else (),
        )
    # On the hull but degenerate with its neighbours (a window of zero width): where it first appears.
    raise WindowError(f"{reduced} is never the equilibrium phase along the {specie} profile of this hull")


__all__ = ["StabilityWindow", "WindowError", "stability_window"]
