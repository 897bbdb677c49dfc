"""The committee across model families on real Li-Al crystals: SevenNet-0 places candidates against its own
energies of the oracle hull's phases, and the screen combines it with the CHGNet ensemble.

The hull is set by GPAW energies of bcc Li and fcc Al at the demo's settings (eV/atom, BENCHMARKS.md); B32 LiAl
(NaTl type) is the known ground state of LiAl, with a GPAW formation energy of -0.182 eV/atom.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from loop.config import validate_config
from loop.errors import InputError
from loop.science.committee import combine_committee
from loop.science.structures import structure_hash
from loop.store import CampaignStore
from loop.views.oracle_hull import current_hull
from loop.work.screening import committee_e_hull, screen

GPAW_LI_BCC = -1.9015  # eV/atom
GPAW_AL_FCC = -3.7403  # eV/atom


def b32() -> Structure:
    """NaTl type: Li and Al each on a diamond sublattice of the conventional cubic cell (a = 6.37 Å)."""
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    li = np.vstack([fcc, fcc + 0.25])
    al = np.vstack([fcc + 0.5, fcc + 0.75]) % 1.0
    conventional = Structure(Lattice.cubic(6.37), ["Li"] * 8 + ["Al"] * 8, np.vstack([li, al]))
    return conventional.get_primitive_structure()


def b2() -> Structure:
    return Structure(Lattice.cubic(3.17), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def li_bcc() -> Structure:
    return Structure(
        Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def al_fcc() -> Structure:
    return Structure.from_spacegroup(225, Lattice.cubic(4.04), ["Al"], [[0, 0, 0]]).get_primitive_structure()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    config = validate_config(
        {
            "name": "committee",
            "chemical_systems": ["Li-Al"],
            "committee": [{"kind": "sevennet"}],
            "emulator": {"kind": "chgnet_ensemble", "n_members": 2},
            "emulator_training": {"relax_steps": 30},
        }
    )
    store = CampaignStore.in_workdir(tmp_path_factory.mktemp("committee"))
    for structure, e in ((li_bcc(), GPAW_LI_BCC), (al_fcc(), GPAW_AL_FCC)):
        h = store.add_structure(structure, source="reference", round=0)
        store.add_oracle_result(
            h,
            oracle="gpaw",
            settings_hash=config.oracle.settings_hash(),
            result={"status": "ok", "energy": e * len(structure), "energy_per_atom": e},
            round=0,
        )
    return config, store


def test_sevennet_places_b32_lial_below_b2_and_near_its_dft_formation_energy(campaign):
    config, store = campaign
    hull = current_hull(config, store)
    structures = [b32(), b2(), li_bcc(), al_fcc()]
    e_hull = committee_e_hull(config, store=store, hull=hull, structures=structures, executor=None)[
        "sevennet"
    ]
    assert e_hull.shape == (4,)
    # The hull's own phases sit on the member's own hull: its offsets from GPAW cancel exactly.
    assert abs(e_hull[2]) < 2e-3 and abs(e_hull[3]) < 2e-3
    # B32 is the LiAl ground state; against the elements alone its E_hull is its formation energy.
    assert e_hull[0] < e_hull[1] - 0.02
    assert e_hull[0] == pytest.approx(-0.182, abs=0.04)


def test_combine_committee_averages_families_and_adds_their_spread():
    mean, std = combine_committee(0.011, 0.016, [-0.026])
    assert mean == pytest.approx(-0.0075)
    assert std == pytest.approx(math.sqrt(0.016**2 + 0.0185**2))
    assert combine_committee(0.02, 0.01, [float("nan")]) == (0.02, 0.01)  # a member that could not place it


def test_screen_records_each_family_and_combines_them(campaign):
    config, store = campaign
    hashes = [store.add_structure(s, source="substitution", round=1) for s in (b32(), b2())]
    result = screen(config, store=store, hashes=hashes, checkpoint=None, executor=None)
    for p in result.predictions:
        families = p.data["committee"]
        assert set(families) == {"emulator", "emulator_std", "sevennet"}
        mean, std = combine_committee(families["emulator"], families["emulator_std"], [families["sevennet"]])
        assert p.e_hull == pytest.approx(mean) and p.e_hull_std == pytest.approx(std)
        assert p.relaxed_hash == structure_hash(result.relaxed[p.hash])
    b32_pred, b2_pred = result.predictions
    assert b32_pred.e_hull < b2_pred.e_hull  # both families rank the ground state first
    assert np.isfinite([p.e_hull_std for p in result.predictions]).all()


def test_unknown_committee_member_is_a_one_line_input_error():
    with pytest.raises(InputError) as info:
        validate_config({"name": "x", "chemical_systems": ["Li-Al"], "committee": [{"kind": "mace"}]})
    assert "\n" not in str(info.value) and "committee" in str(info.value)


def test_a_committee_of_the_oracles_own_model_is_refused_in_one_line():
    with pytest.raises(InputError) as info:
        validate_config(
            {
                "name": "x",
                "chemical_systems": ["Li-Al"],
                "oracle": {"kind": "mlff"},
                "committee": [{"kind": "sevennet"}],
            }
        )
    message = str(info.value)
    assert "\n" not in message and "oracle's own model" in message and "sevennet:7net-0" in message
    # The same member beside a DFT oracle is another model family: accepted.
    validate_config(
        {
            "name": "x",
            "chemical_systems": ["Li-Al"],
            "oracle": {"kind": "gpaw"},
            "committee": [{"kind": "sevennet"}],
        }
    )
