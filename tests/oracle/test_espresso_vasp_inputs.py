"""Quantum ESPRESSO and VASP: input generation and clean failure (no binaries or pseudopotentials here).

The pseudopotential files below are empty placeholders: only their names and order matter to the inputs.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ase.io import read
from pymatgen.core import Lattice, Structure

from oracle import EspressoOracle, EspressoSettings, UnsupportedStructure, VaspOracle, VaspSettings
from oracle.ase_runner import RESULT_FILE, kpoint_mesh, niggli_reduce

RYDBERG_EV = 13.605693122994


@pytest.fixture
def upf_dir(tmp_path):
    folder = tmp_path / "pseudo"
    folder.mkdir()
    for name in (
        "Na.pbe-spn-kjpaw_psl.1.0.0.UPF",
        "cl_pbe_v1.4.uspp.F.UPF",
        "Fe.pbe-spn-rrkjus_psl.1.0.0.UPF",
    ):
        (folder / name).write_text("placeholder\n")
    return folder


@pytest.fixture
def potcar_dir(tmp_path):
    root = tmp_path / "vasp_pp"
    for folder in ("Na_pv", "Cl", "Fe"):
        (root / "potpaw_PBE" / folder).mkdir(parents=True)
        (root / "potpaw_PBE" / folder / "POTCAR").write_text(f" PAW_PBE {folder} placeholder\n")
    return root


def test_espresso_input_has_cutoff_kpoints_pseudos_positions(nacl_rattled, upf_dir, tmp_path):
    oracle = EspressoOracle(EspressoSettings(pseudo_dir=str(upf_dir), cutoff=600.0, kpoint_density=2.5))
    pwi = oracle.write_input(nacl_rattled, directory=tmp_path / "in")
    text = pwi.read_text()
    reduced = niggli_reduce(nacl_rattled)
    ecut = float(next(line for line in text.splitlines() if "ecutwfc" in line).split("=")[1])
    ecutrho = float(next(line for line in text.splitlines() if "ecutrho" in line).split("=")[1])
    assert ecut == pytest.approx(600.0 / RYDBERG_EV) and ecutrho == pytest.approx(8 * ecut)
    mesh = " ".join(str(n) for n in kpoint_mesh(reduced, 2.5))
    assert f"K_POINTS automatic\n{mesh}  0 0 0" in text
    assert "Na.pbe-spn-kjpaw_psl.1.0.0.UPF" in text and "cl_pbe_v1.4.uspp.F.UPF" in text
    assert f"pseudo_dir       = '{upf_dir}'" in text
    atoms = read(pwi, format="espresso-in")
    assert atoms.get_chemical_symbols() == ["Na", "Cl"]
    np.testing.assert_allclose(atoms.get_positions(), reduced.cart_coords, atol=1e-6)
    np.testing.assert_allclose(atoms.cell.array, reduced.lattice.matrix, atol=1e-6)


def test_espresso_spin_for_iron(upf_dir, tmp_path):
    fe = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    text = (
        EspressoOracle(EspressoSettings(pseudo_dir=str(upf_dir)))
        .write_input(fe, directory=tmp_path)
        .read_text()
    )
    assert "nspin            = 2" in text and "starting_magnetization" in text


def test_espresso_missing_pseudo_or_binary_fails_cleanly(nacl_rattled, si, upf_dir, tmp_path):
    oracle = EspressoOracle(EspressoSettings(pseudo_dir=str(upf_dir)))
    with pytest.raises(UnsupportedStructure, match="no pseudopotential for Si"):
        oracle.check(si)
    if shutil.which("pw.x") is None:
        result = oracle.label(nacl_rattled, workdir=tmp_path / "w")
        assert result.status == "failed" and "pw.x not found" in result.reason
        # A missing program says nothing about the structure: not stored, so it is tried again later.
        assert not (tmp_path / "w" / RESULT_FILE).exists()


def test_vasp_inputs_have_encut_kpoints_potcars_positions(nacl_rattled, potcar_dir, tmp_path):
    oracle = VaspOracle(VaspSettings(pp_path=str(potcar_dir), cutoff=520.0, kpoint_density=2.0))
    incar, kpoints, poscar, potcar = oracle.write_input(nacl_rattled, directory=tmp_path / "in")
    reduced = niggli_reduce(nacl_rattled)
    incar_text = incar.read_text()
    assert "ENCUT = 520.000000" in incar_text and "ISPIN = 1" in incar_text and "NSW = 0" in incar_text
    mesh = " ".join(str(n) for n in kpoint_mesh(reduced, 2.0))
    assert kpoints.read_text().splitlines()[2:4] == ["Gamma", mesh]
    assert potcar.read_text().split("\n")[:2] == [" PAW_PBE Na_pv placeholder", " PAW_PBE Cl placeholder"]
    atoms = read(poscar, format="vasp")
    assert atoms.get_chemical_symbols() == ["Na", "Cl"]
    np.testing.assert_allclose(atoms.get_positions(), reduced.cart_coords, atol=1e-6)


def test_vasp_spin_for_iron(potcar_dir, tmp_path):
    fe = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    incar, *_ = VaspOracle(VaspSettings(pp_path=str(potcar_dir))).write_input(fe, directory=tmp_path)
    text = incar.read_text()
    assert "ISPIN = 2" in text and "MAGMOM = 2*4.0000" in text


def test_vasp_missing_potcar_or_binary_fails_cleanly(nacl_rattled, si, potcar_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_PP_PATH", raising=False)
    with pytest.raises(UnsupportedStructure, match="set pp_path or VASP_PP_PATH"):
        VaspOracle().check(nacl_rattled)
    oracle = VaspOracle(VaspSettings(pp_path=str(potcar_dir)))
    with pytest.raises(UnsupportedStructure, match="no POTCAR for Si"):
        oracle.check(si)
    if shutil.which("vasp_std") is None:
        result = oracle.label(nacl_rattled, workdir=tmp_path / "w")
        assert result.status == "failed" and "vasp_std not found" in result.reason
