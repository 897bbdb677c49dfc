"""EMT toy oracle on Cu/Au/Al cells, against ASE's EMT run directly; Niggli mapping; element checks."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.units import GPa
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from oracle import EMTOracle, UnsupportedStructure, label_structures, niggli_reduce


def _direct_emt(structure: Structure) -> tuple[float, np.ndarray, np.ndarray]:
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress() / GPa


def _fcc(symbol: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [symbol] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def test_emt_matches_direct_ase_on_cu_au_al(cu_rattled, tmp_path):
    au = _fcc("Au", 4.10)
    al = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.05), ["Al"], [[0, 0, 0]]
    ).get_primitive_structure()
    al.translate_sites([0], [0.02, 0.0, 0.0], frac_coords=False)
    structures = [cu_rattled, au, al]
    results = label_structures(
        EMTOracle(), structures, workdir_for=lambda s: tmp_path / s.composition.reduced_formula
    )
    for structure, result in zip(structures, results, strict=True):
        assert result.ok, result.reason
        energy, forces, stress = _direct_emt(structure)
        assert result.energy == pytest.approx(energy, abs=1e-6)
        np.testing.assert_allclose(result.forces, forces, atol=1e-6)
        np.testing.assert_allclose(result.stress, stress, atol=1e-4)
        assert result.metadata["is_dft"] is False
    assert np.abs(results[0].forces).max() > 0.05


def test_non_reduced_cell_gives_forces_in_input_order(cu_rattled, tmp_path):
    # Same crystal described by a skewed (non-Niggli) cell: lattice rows mixed by a unimodular matrix.
    skew = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 1]])
    lattice = Lattice(skew @ cu_rattled.lattice.matrix)
    skewed = Structure(lattice, cu_rattled.species, cu_rattled.cart_coords, coords_are_cartesian=True)
    reduced = niggli_reduce(skewed)
    assert not np.allclose(reduced.lattice.matrix, skewed.lattice.matrix)
    assert reduced.lattice.volume == pytest.approx(skewed.lattice.volume)
    result = EMTOracle().label(skewed, workdir=tmp_path / "skewed")
    assert result.ok, result.reason
    assert "reduced_lattice" in result.metadata
    energy, forces, stress = _direct_emt(cu_rattled)
    assert result.energy == pytest.approx(energy, abs=1e-6)
    np.testing.assert_allclose(result.forces, forces, atol=1e-6)
    np.testing.assert_allclose(result.stress, stress, atol=1e-4)


def test_emt_rejects_silicon(si, tmp_path):
    with pytest.raises(UnsupportedStructure, match="Si"):
        EMTOracle().check(si)
    result = EMTOracle().label(si, workdir=tmp_path / "si")
    assert result.status == "failed" and "Si" in result.reason


def test_emt_relaxation_reduces_forces(cu_rattled, tmp_path):
    from oracle import EMTSettings

    result = EMTOracle(EMTSettings(relax_steps=20)).label(cu_rattled, workdir=tmp_path / "relax")
    assert result.ok, result.reason
    assert np.abs(result.forces).max() < np.abs(result.frames[0].forces).max()
    relaxed = result.final_structure
    assert len(relaxed) == 4
    # Energy, forces and stress of the result are those of the final structure, not of the input.
    energy, forces, stress = _direct_emt(relaxed)
    assert result.energy == pytest.approx(energy, abs=1e-5)
    np.testing.assert_allclose(result.forces, forces, atol=1e-5)
    np.testing.assert_allclose(result.stress, stress, atol=1e-3)
    e0, f0, _ = _direct_emt(cu_rattled)
    assert result.frames[0].energy == pytest.approx(e0, abs=1e-5)
    np.testing.assert_allclose(result.frames[0].forces, f0, atol=1e-5)


def test_single_point_final_structure_is_the_input(cu_rattled, tmp_path):
    result = EMTOracle().label(cu_rattled, workdir=tmp_path / "sp")
    assert result.ok and result.frames == []
    assert result.final_structure == cu_rattled


def test_a_different_structure_in_the_same_workdir_is_recomputed(cu_rattled, tmp_path):
    first = EMTOracle().label(cu_rattled, workdir=tmp_path / "shared")
    gold = _fcc("Au", 4.10)
    second = EMTOracle().label(gold, workdir=tmp_path / "shared")
    assert second.metadata.get("from_store") is None
    assert second.energy == pytest.approx(_direct_emt(gold)[0], abs=1e-6)
    assert second.metadata["structure_fingerprint"] != first.metadata["structure_fingerprint"]
