from __future__ import annotations

from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from loop.errors import InputError
from loop.science.structures import read_structures, structure_hash, write_structures

ROOT = Path(__file__).resolve().parents[3]
NACL = ROOT / "configs" / "structures" / "NaCl_mp-22862.cif"
SI = ROOT / "configs" / "structures" / "Si_mp-149.cif"


def test_hash_is_invariant_to_translation_permutation_and_cell_choice():
    s = Structure.from_file(NACL)
    moved = s.copy()
    moved.translate_sites(list(range(len(moved))), [0.13, 0.27, 0.61])
    permuted = Structure.from_sites(list(reversed(s.sites)))
    conventional = s.copy()
    conventional.make_supercell([[1, 1, -1], [1, -1, 1], [-1, 1, 1]])  # same crystal, a 4x cell
    h = structure_hash(s)
    assert structure_hash(moved) == h
    assert structure_hash(permuted) == h
    # A supercell is a different concrete cell: the funnel's matcher, not the hash, calls it a duplicate.
    assert structure_hash(conventional) != h


def test_hash_tells_different_structures_apart():
    s = Structure.from_file(NACL)
    strained = s.copy()
    strained.apply_strain(0.02)
    swapped = s.copy()
    swapped.replace_species({"Na": "K"})
    assert len({structure_hash(s), structure_hash(strained), structure_hash(swapped)}) == 3


def test_read_structures_formats(tmp_path):
    s = Structure.from_file(SI)
    s.to(filename=str(tmp_path / "POSCAR"))
    (tmp_path / "si.json").write_text(s.to_json())
    write_structures([s, Structure.from_file(NACL)], tmp_path / "two.extxyz")
    named = read_structures([SI, tmp_path / "POSCAR", tmp_path / "si.json", tmp_path / "two.extxyz"])
    assert [n for n, _ in named] == ["Si_mp-149.cif", "POSCAR", "si.json", "two.extxyz#0", "two.extxyz#1"]
    hashes = {structure_hash(x) for _, x in named[:4]}
    assert len(hashes) == 1
    assert named[4][1].composition.reduced_formula == "NaCl"


def test_read_structures_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 3\nthis is not a cif\n")
    with pytest.raises(InputError, match="no such file") as missing:
        read_structures([tmp_path / "nope.cif"])
    with pytest.raises(InputError, match=r"bad\.cif: not a readable crystal structure") as malformed:
        read_structures([bad])
    for exc in (missing, malformed):
        assert "\n" not in str(exc.value)


def test_write_cif_folder(tmp_path):
    s = Structure(Lattice.cubic(3.6), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    write_structures([s], tmp_path / "cifs")
    files = list((tmp_path / "cifs").glob("*.cif"))
    assert len(files) == 1
    assert structure_hash(Structure.from_file(files[0])) == structure_hash(s)


def test_nan_or_infinite_numbers_are_named(tmp_path):
    poscar = tmp_path / "POSCAR"
    poscar.write_text("Cu2\n1.0\n3.6 0 0\n0 3.6 0\n0 0 3.6\nCu\n2\nDirect\n0 0 0\nnan 0.5 0.5\n")
    cif = tmp_path / "bad.cif"
    cif.write_text(
        "data_Cu\n_cell_length_a 3.6\n_cell_length_b 3.6\n_cell_length_c 3.6\n_cell_angle_alpha 90\n"
        "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n"
        "_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
        "_atom_site_occupancy\nCu1 Cu 0 0 0 1\nCu2 Cu 0.5 nan 0.5 1\n"
    )
    with pytest.raises(InputError, match="NaN or infinite") as in_poscar:
        read_structures([poscar])
    with pytest.raises(InputError, match=r"bad\.cif: _atom_site_fract_y holds 'nan'") as in_cif:
        read_structures([cif])
    for exc in (in_poscar, in_cif):
        assert "\n" not in str(exc.value)


def test_space_group_is_reported_at_one_tolerance():
    from pymatgen.core import Lattice, Structure

    from loop.science.structures import SYMPREC, space_group

    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    assert space_group(rocksalt) == "Fm-3m (225)" and space_group(rocksalt, with_number=False) == "Fm-3m"
    # a site moved by less than the tolerance keeps the group; no structure gives "?"
    rocksalt.translate_sites([0], [SYMPREC / 2 / 5.64, 0, 0], frac_coords=True)
    assert space_group(rocksalt, with_number=False) == "Fm-3m"
    assert space_group(None) == "?"
