"""Prediction, round-0 spread, relaxation and bad input of the CHGNet ensemble (real CHGNet, real crystals)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from chgnet.model import CHGNet
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from emulator import (
    ChgnetEnsemble,
    ChgnetEnsembleSettings,
    EmulatorError,
    LabelledStructure,
    get_emulator_class,
)
from emulator.training import matrix_to_voigt


def test_registered_and_settings_forbid_unknown_keys() -> None:
    assert get_emulator_class("chgnet_ensemble") is ChgnetEnsemble
    assert ChgnetEnsembleSettings().n_members == 4
    with pytest.raises(ValueError, match="extra"):
        ChgnetEnsembleSettings(n_member=3)


def test_identical_heads_reproduce_plain_chgnet(mp20_crystals: list[Structure]) -> None:
    """With every head equal to the pretrained one, the shared-trunk path must give CHGNet's own numbers."""
    ens = ChgnetEnsemble(settings=ChgnetEnsembleSettings(n_members=2, design="bootstrap_only"))
    plain = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    crystals = mp20_crystals[:5]
    ref = plain.predict_structure(crystals, task="efs", batch_size=4)
    pred = ens.predict(crystals)
    np.testing.assert_allclose(pred.energy_per_atom, [r["e"] for r in ref], atol=1e-5)
    np.testing.assert_allclose(pred.energy_per_atom_std, 0.0, atol=1e-6)
    for i, r in enumerate(ref):
        np.testing.assert_allclose(pred.forces[i], r["f"], atol=1e-4)
        np.testing.assert_allclose(pred.forces_std[i], 0.0, atol=1e-5)
    assert pred.stress is not None
    np.testing.assert_allclose(pred.stress, matrix_to_voigt(np.array([r["s"] for r in ref])), atol=1e-3)
    assert pred.member_energy_per_atom.shape == (2, 5)


def test_round0_members_disagree_more_out_of_distribution(
    round0: ChgnetEnsemble, mp20_crystals: list[Structure]
) -> None:
    """Distilled heads agree on MP-like crystals, not on strongly compressed ones or exotic chemistry."""
    known = mp20_crystals
    squeezed = []
    for s in known:
        c = s.copy()
        c.scale_lattice(0.55 * s.volume)
        squeezed.append(c)
    exotic = [
        Structure(Lattice.cubic(3.2), ["Xe", "He"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(3.4), ["Pu", "Ne"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(3.0), ["Kr", "Fr"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]
    std_known = round0.predict(known, forces=False, stress=False).energy_per_atom_std
    std_squeezed = round0.predict(squeezed, forces=False, stress=False).energy_per_atom_std
    std_exotic = round0.predict(exotic, forces=False, stress=False).energy_per_atom_std
    assert np.all(std_known > 0), "round-0 members must not be identical"
    assert np.median(std_squeezed) > 3 * np.median(std_known)
    assert np.mean(std_squeezed > std_known) >= 0.75  # per crystal, compressed vs itself
    assert np.median(std_exotic) > np.median(std_known)


def test_predict_shapes_units_and_cheap_path(round0: ChgnetEnsemble, mp20_crystals: list[Structure]) -> None:
    crystals = mp20_crystals[:4]
    full = round0.predict(crystals)
    cheap = round0.predict(crystals, derivative_std=False)
    assert full.member_energy_per_atom.shape == (3, 4)
    np.testing.assert_allclose(full.energy_per_atom, full.member_energy_per_atom.mean(axis=0), atol=1e-6)
    # Mean forces from one back-propagation equal the mean of the members' forces.
    for a, b, s in zip(full.forces, cheap.forces, crystals, strict=True):
        assert a.shape == (len(s), 3)
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert cheap.forces_std == [] and cheap.stress_std is None
    assert full.stress is not None and full.stress.shape == (4, 6)
    # MP crystals are relaxed: stresses are a few GPa at most, not eV/Å³-scaled or kBar-scaled numbers.
    assert np.abs(full.stress).max() < 20.0


def test_relax_lowers_energy_of_rattled_cell(round0: ChgnetEnsemble) -> None:
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
    atoms.rattle(stdev=0.08, seed=4)
    start = AseAtomsAdaptor.get_structure(atoms)
    e0 = round0.predict([start], forces=False, stress=False).energy_per_atom[0]
    (result,) = round0.relax([start], fmax=0.05, steps=200)
    assert result.converged
    assert result.energy_per_atom < e0 - 1e-3
    assert result.energy_per_atom_std >= 0
    assert result.structure.volume != pytest.approx(start.volume)  # the cell relaxed too
    after = round0.predict([result.structure], stress=False, derivative_std=False)
    assert np.linalg.norm(after.forces[0], axis=1).max() < 0.05 + 1e-3


def test_bad_input_raises_typed_one_line_errors(round0: ChgnetEnsemble, tmp_path) -> None:
    cu = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
    americium = Structure(Lattice.cubic(3.5), ["Am"], [[0, 0, 0]])
    disordered = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    cases = [
        ([], "no structures"),
        (["POSCAR"], "expected a pymatgen Structure"),
        ([{"lattice": "nonsense"}], "unreadable"),
        ([cu, americium], "outside CHGNet's elements"),
        ([disordered], "partial occupancies"),
    ]
    for structures, fragment in cases:
        with pytest.raises(EmulatorError, match=fragment) as err:
            round0.predict(structures)
        assert "\n" not in str(err.value)
    with pytest.raises(EmulatorError, match="no labelled structures"):
        round0.fine_tune([])
    with pytest.raises(EmulatorError, match="forces have shape"):
        round0.evaluate([LabelledStructure(structure=cu, energy=-3.0, forces=np.zeros((2, 3)))])
    with pytest.raises(EmulatorError, match="bad fine-tuning option"):
        round0.fine_tune([LabelledStructure(structure=cu, energy=-3.0)], epochs=-1)
    with pytest.raises(EmulatorError, match="cannot change n_members"):
        round0.fine_tune([LabelledStructure(structure=cu, energy=-3.0)], n_members=8)
    with pytest.raises(EmulatorError, match="fmax"):
        round0.relax([cu], fmax=0.0)
    with pytest.raises(EmulatorError, match="missing"):
        ChgnetEnsemble.load(tmp_path)
