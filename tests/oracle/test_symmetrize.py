"""Symmetrised oracle inputs: the space group is found and made exact, kept through a relaxation, and used."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from oracle import GPAWOracle, GPAWSettings
from oracle.ase_runner import niggli_reduce, symmetrize
from oracle.emt_toy import EMTOracle, EMTSettings


def b32_lial(a: float = 6.37) -> Structure:
    """NaTl-type (B32, Fd-3m) LiAl, primitive cell of 4 atoms."""
    return Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(a), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def l12_cu3au(a: float = 3.75) -> Structure:
    return Structure(
        Lattice.cubic(a), ["Au", "Cu", "Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )


def noisy(structure: Structure, *, amplitude: float, seed: int = 3) -> Structure:
    """Every site displaced by a random vector of length `amplitude`, Å (as an emulator relaxation leaves it)."""
    rng = np.random.default_rng(seed)
    out = structure.copy()
    for i in range(len(out)):
        v = rng.normal(size=3)
        out.translate_sites([i], amplitude * v / np.linalg.norm(v), frac_coords=False)
    return out


def space_group(structure: Structure, *, symprec: float = 1e-5) -> str:
    return SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_symbol()


def test_nearly_symmetric_cell_is_made_exact_in_place():
    exact = b32_lial()
    blurred = noisy(exact, amplitude=2e-4)
    assert space_group(blurred) == "P1"
    sym = symmetrize(blurred, symprec=1e-3)
    assert (sym.spacegroup, sym.number) == ("Fd-3m", 227)
    assert sym.origin_operations == 24 and np.allclose(sym.structure.frac_coords[0], 0.0)
    assert space_group(sym.structure, symprec=1e-6) == "Fd-3m"
    # Same sites in the same order, each moved by no more than the tolerance.
    assert [s.species_string for s in sym.structure] == [s.species_string for s in blurred]
    assert 0 < sym.max_shift <= 1e-3
    np.testing.assert_allclose(sym.structure.lattice.abc, exact.lattice.abc, atol=1e-3)


def test_low_symmetry_cell_is_left_alone():
    rng = np.random.default_rng(0)
    cell = Structure(
        Lattice.from_parameters(4.1, 4.7, 5.3, 81, 97, 104), ["Li", "Al", "Al"], rng.random((3, 3))
    )
    sym = symmetrize(cell, symprec=1e-3)
    assert sym.spacegroup == "P1" and sym.max_shift < 1e-9 and sym.origin_operations == 1
    np.testing.assert_allclose(sym.structure.lattice.matrix, cell.lattice.matrix, atol=1e-9)
    # Only the rigid translation that puts site 0 at the origin.
    delta = sym.structure.frac_coords - (cell.frac_coords - cell.frac_coords[0])
    np.testing.assert_allclose(delta - np.round(delta), 0.0, atol=1e-9)


def test_symprec_is_part_of_the_physics_settings():
    plain = EMTSettings()
    assert "symprec" not in plain.model_dump_json(exclude_none=True)
    assert EMTSettings(symprec=1e-3).settings_hash() != plain.settings_hash()
    assert EMTSettings(symprec=1e-3).settings_hash() != EMTSettings(symprec=1e-2).settings_hash()


def test_relaxation_keeps_the_space_group_and_reports_the_symmetric_geometry(tmp_path):
    start = noisy(l12_cu3au(3.85), amplitude=3e-4)  # 3 % too large, symmetry blurred
    oracle = EMTOracle(EMTSettings(relax_steps=40, relax_fmax=0.01, symprec=1e-2))
    result = oracle.label(start, workdir=tmp_path / "cu3au")
    assert result.ok, result.reason
    assert result.metadata["symmetry"]["spacegroup"] == "Pm-3m"
    final = result.final_structure
    assert space_group(final, symprec=1e-6) == "Pm-3m"
    assert final.volume < start.volume  # the cell relaxed, on its space group
    assert all(space_group(f.structure, symprec=1e-6) == "Pm-3m" for f in result.frames)
    np.testing.assert_allclose(result.forces, 0.0, atol=1e-8)  # symmetry alone fixes every site of L1_2


def test_single_point_numbers_belong_to_the_symmetrised_cell(tmp_path):
    start = noisy(l12_cu3au(), amplitude=3e-4)
    result = EMTOracle(EMTSettings(symprec=1e-2)).label(start, workdir=tmp_path / "sp")
    assert result.ok
    assert space_group(result.final_structure, symprec=1e-6) == "Pm-3m"
    exact = EMTOracle(EMTSettings()).label(l12_cu3au(), workdir=tmp_path / "exact")
    assert result.energy == pytest.approx(exact.energy, abs=1e-6)


@pytest.mark.slow
def test_gpaw_uses_the_space_group_of_a_blurred_candidate(tmp_path):
    """The point of symmetrising: GPAW reduces the k-mesh by the full point group (48 operations for B32)."""
    blurred = noisy(b32_lial(), amplitude=2e-4)
    common = {"cutoff": 250.0, "kpoint_density": 2.0, "smearing": "marzari-vanderbilt", "smearing_width": 0.2}
    result = GPAWOracle(GPAWSettings(**common, relax_steps=0)).label(blurred, workdir=tmp_path / "sym")
    assert result.ok, result.reason
    assert result.metadata["symmetry"]["spacegroup"] == "Fd-3m"
    # GPAW uses rotations about the cell origin only: the 24 of the -43m site symmetry once a site sits there.
    assert result.metadata["symmetry"]["origin_operations"] == 24
    text = (tmp_path / "sym" / "attempt-1" / "gpaw.txt").read_text()
    assert "Number of symmetries: 24" in text
    reference = GPAWOracle(GPAWSettings(**common, relax_steps=0, symprec=None)).label(
        b32_lial(), workdir=tmp_path / "exact"
    )
    assert reference.ok and "symmetry" not in reference.metadata
    assert result.energy_per_atom == pytest.approx(reference.energy_per_atom, abs=1e-3)


@pytest.mark.parametrize(
    "lattice", [Lattice.cubic(3.75), Lattice.tetragonal(2.9, 7.8), Lattice.orthorhombic(3, 4, 5)]
)
def test_niggli_reduction_gives_orthogonal_cells_positive_axes_in_the_same_frame(lattice):
    start = noisy(Structure(lattice, ["Au", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]]), amplitude=0.05)
    reduced = niggli_reduce(start)
    matrix = reduced.lattice.matrix
    assert np.all(np.diag(matrix) > 0)
    assert np.linalg.det(matrix) > 0
    np.testing.assert_allclose(sorted(reduced.lattice.abc), sorted(start.lattice.abc), atol=1e-9)
    # Each site is a periodic image of the same site of the input (forces need no mapping back).
    shift = start.lattice.get_fractional_coords(reduced.cart_coords - start.cart_coords)
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)
