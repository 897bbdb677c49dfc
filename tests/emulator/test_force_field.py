"""The force-field loader: a saved ensemble and the shipped CHGNet give the same potential when the heads agree."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from emulator import ChgnetEnsemble, ChgnetEnsembleSettings, EmulatorError
from emulator.force_field import load_force_field, supercell_multiples


def test_saved_checkpoint_loads_as_the_force_field(tmp_path):
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl.perturb(0.05, min_distance=0.01)
    saved = ChgnetEnsemble(settings=ChgnetEnsembleSettings(n_members=2, design="bootstrap_only"))
    saved.save(tmp_path / "model")
    shipped = load_force_field(checkpoint=None)
    loaded = load_force_field(checkpoint=tmp_path / "model")
    plain = shipped.mean_potential(nacl, stress=False)
    with_stress = loaded.mean_potential(nacl, stress=True)
    assert plain.stress is None and with_stress.stress is not None
    assert with_stress.stress.shape == (3, 3)
    assert with_stress.energy == pytest.approx(plain.energy, abs=1e-5)
    np.testing.assert_allclose(with_stress.forces, plain.forces, atol=1e-5)
    # the perturbed cell has forces, so the comparison means something
    assert np.abs(plain.forces).max() > 1e-3


def test_missing_checkpoint_is_a_typed_error(tmp_path):
    with pytest.raises(EmulatorError, match="no emulator checkpoint"):
        load_force_field(checkpoint=tmp_path)


def test_supercell_repeats_follow_face_distances():
    hexagonal = Lattice.hexagonal(3.0, 5.0)  # a-face distance 3 sin(60°) = 2.6 Å
    assert supercell_multiples(Structure(hexagonal, ["Si"], [[0, 0, 0]]), min_length=8.0) == (4, 4, 2)
