"""The stability window against Li on real hulls: LiF and Li2O on their binary hulls, every energy from the mlff
oracle (SevenNet-0, relaxed), the crystals from the bundled data (rock-salt LiF built at its experimental
a = 4.03 Å). Known (PBE, Materials Project) windows: LiF 0 to ~6 V (its formation energy per Li), Li2O 0 to
~2.9 V (oxidised to Li2O2), Li2O2 ~2.9 to ~3.3 V."""

from __future__ import annotations

import math

import pytest
from pymatgen.core import Lattice, Structure

from generator.seeds import load_seeds
from loop.design.electrochemistry import WindowError, stability_window
from loop.science.hull import HullEntry
from oracle.base import make_oracle
from oracle.mlff import MLFFSettings


@pytest.fixture(scope="module")
def energies(tmp_path_factory):
    """Oracle energy per atom (eV/atom) by name."""
    seeds = {
        k.id: k.structure for k in load_seeds(ids=["mp-1960", "mp-841", "mp-10173", "mp-561203", "mp-12957"])
    }
    structures = {
        "Li": seeds["mp-10173"],
        "F": seeds["mp-561203"],
        "O": seeds["mp-12957"],
        "Li2O": seeds["mp-1960"],
        "Li2O2": seeds["mp-841"],
        "LiF": Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(4.03), ["Li", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]
        ),
    }
    oracle = make_oracle(MLFFSettings())
    root = tmp_path_factory.mktemp("oracle")
    out = {}
    for name, s in structures.items():
        result = oracle.label(s, workdir=root / name)
        assert result.status == "ok", result.reason
        out[name] = (s.composition, result.energy_per_atom)
    return out


def _entries(energies, names):
    return [HullEntry(entry_id=n, composition=energies[n][0], energy_per_atom=energies[n][1]) for n in names]


def test_lif_is_wide_and_li2o_narrow(energies):
    lif = stability_window(
        composition="LiF", energy_per_atom=energies["LiF"][1], entries=_entries(energies, ["Li", "F", "LiF"])
    )
    oxide_hull = _entries(energies, ["Li", "O", "Li2O", "Li2O2"])
    li2o = stability_window(composition="Li2O", energy_per_atom=energies["Li2O"][1], entries=oxide_hull)
    li2o2 = stability_window(composition="Li2O2", energy_per_atom=energies["Li2O2"][1], entries=oxide_hull)
    # Both are stable against Li metal; LiF is oxidised only at F2 evolution, Li2O already to the peroxide.
    assert lif.reduction_v == 0.0 and li2o.reduction_v == 0.0
    assert 5.0 < lif.oxidation_v < 7.5, lif
    assert 2.0 < li2o.oxidation_v < 3.5, li2o
    assert li2o.oxidised_to == ("Li2O2",) and lif.oxidised_to == ("F2",)
    assert lif.width_v > li2o.width_v + 2.0
    # The peroxide sits on top of the oxide's window: reduced to Li2O where Li2O is oxidised to it.
    assert li2o2.reduction_v == pytest.approx(li2o.oxidation_v, abs=1e-4)
    assert li2o2.reduced_to == ("Li2O",) and li2o2.oxidation_v > li2o2.reduction_v
    assert lif.e_above_hull == 0.0


def test_a_phase_above_the_hull_is_placed_on_it_and_reported(energies):
    hull = _entries(energies, ["Li", "O", "Li2O", "Li2O2"])
    on = stability_window(composition="Li2O", energy_per_atom=energies["Li2O"][1], entries=hull)
    above = stability_window(
        composition="Li2O",
        energy_per_atom=energies["Li2O"][1] + 0.03,
        entries=hull[:2]
        + hull[3:]
        + [HullEntry(entry_id="ref", composition="Li2O", energy_per_atom=energies["Li2O"][1])],
    )
    assert above.e_above_hull == pytest.approx(0.03, abs=1e-6)
    assert above.oxidation_v == pytest.approx(on.oxidation_v, abs=1e-3)


def test_missing_li_reference_is_a_typed_error(energies):
    with pytest.raises(WindowError, match="Li"):
        stability_window(
            composition="LiF", energy_per_atom=energies["LiF"][1], entries=_entries(energies, ["F", "LiF"])
        )
    assert math.isinf(
        stability_window(
            composition="F", energy_per_atom=energies["F"][1], entries=_entries(energies, ["Li", "F", "LiF"])
        ).oxidation_v
    )
