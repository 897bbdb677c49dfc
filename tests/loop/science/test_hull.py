from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry

from loop.errors import InputError
from loop.science.hull import HullEntry, HullError, MissingReferenceError, OracleHull

# Made-up but physical oracle energies (eV per formula unit of the given cell), Li-O and Li-Fe-O.
LI_O = {
    "Li": ("Li", -1.90),
    "O2": ("O2", -9.80),
    "Li2O": ("Li2O", -14.30),
    "Li2O2": ("Li2O2", -19.00),
    "LiO2": ("LiO2", -12.00),
}
FE = {"Fe": ("Fe", -8.30), "Fe2O3": ("Fe2O3", -38.00), "LiFeO2": ("LiFeO2", -27.00)}


def make_entries(table: dict[str, tuple[str, float]]) -> list[HullEntry]:
    return [HullEntry.from_total_energy(entry_id=k, composition=c, energy=e) for k, (c, e) in table.items()]


@pytest.fixture(scope="module")
def li_o() -> OracleHull:
    return OracleHull.from_entries(make_entries(LI_O))


@pytest.fixture(scope="module")
def li_fe_o() -> OracleHull:
    return OracleHull.from_entries(make_entries({**LI_O, **FE}))


def per_atom(table: dict[str, tuple[str, float]], key: str) -> float:
    comp, energy = table[key]
    return energy / Composition(comp).num_atoms


def formation(table: dict[str, tuple[str, float]], key: str) -> tuple[float, float]:
    """(x_O, formation energy per atom) of a Li-O entry by hand."""
    comp = Composition(table[key][0])
    x = comp.get_atomic_fraction("O")
    ref = (1 - x) * per_atom(table, "Li") + x * per_atom(table, "O2")
    return x, per_atom(table, key) - ref


def test_binary_stable_set_and_lever_rule(li_o: OracleHull) -> None:
    assert li_o.stable_ids() == ["Li", "O2", "Li2O"]
    # Li2O2 lies between Li2O and O2 on the hull; lever rule by hand.
    x1, e1 = formation(LI_O, "Li2O")
    x, e = formation(LI_O, "Li2O2")
    hull_at_x = e1 * (1 - x) / (1 - x1)
    assert li_o.entry_e_above_hull()["Li2O2"] == pytest.approx(e - hull_at_x, abs=1e-9)
    assert li_o.entry_e_above_hull()["Li2O2"] > 0
    assert li_o.e_above_hull("Li2O2", per_atom(LI_O, "Li2O2")) == pytest.approx(e - hull_at_x, abs=1e-9)
    assert li_o.formation_energy_per_atom("Li2O", per_atom(LI_O, "Li2O")) == pytest.approx(e1)


def test_decomposition_fractions(li_o: OracleHull) -> None:
    decomp = li_o.decomposition("Li3O2")
    assert set(decomp) == {"Li2O", "O2"}
    assert sum(decomp.values()) == pytest.approx(1.0)
    # Oxygen balance: x_O(Li3O2) = 0.4 = f(Li2O) * 1/3 + f(O2) * 1.
    assert decomp["Li2O"] / 3 + decomp["O2"] == pytest.approx(0.4)
    assert li_o.decomposition("Li2O") == {"Li2O": pytest.approx(1.0)}


def test_vectorised_matches_scalar_and_pymatgen(li_fe_o: OracleHull) -> None:
    rng = np.random.default_rng(3)
    formulas = ["Li5FeO4", "LiFeO2", "Li2O", "FeO", "Fe3O4", "Li4O3", "LiFe5O8", "Fe", "O2"] * 3
    energies = rng.uniform(-8.0, -3.0, size=len(formulas))
    std = rng.uniform(0.01, 0.1, size=len(formulas))
    ev = li_fe_o.evaluate(formulas, energies, std)
    all_entries = [
        ComputedEntry(Composition(c), e) for c, e in [*LI_O.values(), *FE.values()]
    ]  # independent PhaseDiagram over everything
    pd = PhaseDiagram(all_entries)
    for f, e, value in zip(formulas, energies, ev.e_above_hull, strict=True):
        assert value == pytest.approx(li_fe_o.e_above_hull(f, e), abs=1e-9)
        comp = Composition(f)
        direct = pd.get_e_above_hull(ComputedEntry(comp, e * comp.num_atoms), allow_negative=True)
        assert value == pytest.approx(direct, abs=1e-8)
    # Hull held fixed: the E_hull spread is the energy spread.
    np.testing.assert_array_equal(ev.e_above_hull_std, std)
    assert ev.placed.all() and all(r is None for r in ev.reasons)


def test_missing_reference_nan_with_reason_and_scalar_raises(li_o: OracleHull) -> None:
    ev = li_o.evaluate(["LiFeO2", "Li2O"], [-5.0, -4.9])
    assert math.isnan(ev.e_above_hull[0]) and not ev.placed[0]
    assert "Fe" in ev.reasons[0] and ev.reasons[1] is None
    assert ev.e_above_hull[1] == pytest.approx(-4.9 - per_atom(LI_O, "Li2O"))
    assert li_o.missing_references("LiFeO2") == ["Fe"]
    with pytest.raises(MissingReferenceError, match="Fe"):
        li_o.e_above_hull("LiFeO2", -5.0)


def test_entry_without_reference_is_not_stable() -> None:
    hull = OracleHull.from_entries(make_entries({"Li": LI_O["Li"], "Li2O": LI_O["Li2O"]}))
    assert hull.stable_ids() == ["Li"]
    assert math.isnan(hull.entry_e_above_hull()["Li2O"])


def test_phase_diagram_is_built_once_per_system(li_fe_o: OracleHull) -> None:
    a = li_fe_o.phase_diagram(["O", "Li"])
    assert a is li_fe_o.phase_diagram(["Li", "O"])
    assert {e.entry_id for e in a.all_entries} == set(LI_O)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "no oracle entries"),
        ([HullEntry(entry_id="a", composition="Li", energy_per_atom=-1.9)] * 2, "duplicate"),
        ([HullEntry(entry_id="a", composition="Li", energy_per_atom=float("nan"))], "non-finite"),
        ([HullEntry(entry_id="a", composition="Xx2", energy_per_atom=-1.0)], "cannot read composition"),
    ],
)
def test_bad_input_raises_typed_error(entries: list[HullEntry], message: str) -> None:
    with pytest.raises(HullError, match=message):
        OracleHull.from_entries(entries)


def test_evaluate_length_mismatch(li_o: OracleHull) -> None:
    with pytest.raises(InputError, match="one energy per candidate"):  # the CLI's exit-code-2 family
        li_o.evaluate(["Li2O", "LiO2"], [-4.0])
