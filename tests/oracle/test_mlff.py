"""The mlff surrogate oracle (SevenNet-0 through ASE) on tiny cells, against the SevenNet calculator run directly."""

from __future__ import annotations

import numpy as np
import pytest
from ase.units import GPa
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

pytest.importorskip("sevenn")

from oracle import GPAWSettings, MLFFOracle, MLFFSettings, get_oracle_class


def _direct(structure: Structure) -> tuple[float, np.ndarray, np.ndarray]:
    from sevenn.calculator import SevenNetCalculator

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = SevenNetCalculator(model="7net-0", device="cpu")
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress() / GPa


def test_single_point_matches_sevennet_run_directly(nacl_rattled, tmp_path):
    oracle = MLFFOracle(MLFFSettings(relax_steps=0))
    result = oracle.label(nacl_rattled, workdir=tmp_path / "nacl")
    assert result.ok, result.reason
    energy, forces, stress = _direct(nacl_rattled)
    assert result.energy == pytest.approx(energy, abs=1e-4)
    assert result.energy_per_atom == pytest.approx(energy / 2, abs=1e-4)
    np.testing.assert_allclose(result.forces, forces, atol=1e-4)
    np.testing.assert_allclose(result.stress, stress, atol=1e-3)
    assert np.abs(result.forces).max() > 0.01  # the rattle is seen
    assert result.metadata["is_dft"] is False
    assert result.metadata["level_of_theory"] == "surrogate"
    assert result.metadata["code_version"].startswith("sevenn")


def test_relaxes_cell_and_positions_and_is_not_recomputed(tmp_path):
    # fcc Al squeezed by 5 % in a and with one atom displaced: the relaxation must lower the energy,
    # expand the cell back and remove the forces.
    al = Structure(
        Lattice.cubic(4.04 * 0.95), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.53]]
    )
    oracle = MLFFOracle(MLFFSettings(relax_steps=100, relax_fmax=0.02))
    result = oracle.label(al, workdir=tmp_path / "al")
    assert result.ok, result.reason
    assert result.metadata["relax_converged"] is True
    relaxed = result.final_structure
    assert relaxed is not None and relaxed.volume > al.volume * 1.08
    assert result.frames and result.energy < result.frames[0].energy - 0.05
    assert np.abs(result.forces).max() < 0.02 * 1.01
    again = oracle.label(al, workdir=tmp_path / "al")
    assert again.metadata.get("from_store") is True and again.energy == result.energy


def test_declared_a_surrogate_with_its_own_settings_hash():
    cls = get_oracle_class("mlff")
    assert cls is MLFFOracle and cls.is_dft is False and cls.level_of_theory == "surrogate"
    assert get_oracle_class("gpaw").level_of_theory == "dft"
    default = MLFFSettings()
    assert default.relax_steps > 0  # relaxes like a DFT oracle asked to, by default
    assert default.settings_hash() != GPAWSettings().settings_hash()
    assert default.settings_hash() == MLFFSettings(in_process=False, timeout_s=5).settings_hash()
    assert default.settings_hash() != MLFFSettings(relax_fmax=0.1).settings_hash()


@pytest.mark.slow
def test_child_process_mode_gives_the_same_label(nacl_rattled, tmp_path):
    settings = {"relax_steps": 0}
    inline = MLFFOracle(MLFFSettings(**settings)).label(nacl_rattled, workdir=tmp_path / "a")
    child = MLFFOracle(MLFFSettings(in_process=False, **settings)).label(nacl_rattled, workdir=tmp_path / "b")
    assert inline.ok and child.ok, (inline.reason, child.reason)
    assert child.energy == pytest.approx(inline.energy, abs=1e-5)
    assert (tmp_path / "b" / "attempt-1" / "stdout.txt").exists()
