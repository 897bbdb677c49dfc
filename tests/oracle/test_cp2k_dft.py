"""CP2K oracle: a real run on rattled Si (forces against GPAW), SCF failure, bad executable, element checks."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from oracle import CP2KOracle, CP2KSettings, GPAWOracle, GPAWSettings, OracleUnavailable, UnsupportedStructure

pytestmark = pytest.mark.skipif(
    CP2KOracle().data_dir() is None, reason="cp2k and its data files are not installed"
)


@pytest.fixture(scope="module")
def si_rattled(si) -> Structure:
    s = si.copy()
    s.translate_sites([0], [0.05, 0.0, -0.03], frac_coords=False)
    return s


def test_cp2k_si_forces_agree_with_gpaw(si_rattled, tmp_path):
    result = CP2KOracle(CP2KSettings(kpoint_density=1.5)).label(si_rattled, workdir=tmp_path / "cp2k")
    assert result.ok, result.reason
    assert result.metadata["code_version"].startswith("CP2K version")
    assert result.metadata["n_scf"] > 0
    assert len(result.stress) == 6 and np.isfinite(result.energy)
    forces = np.array(result.forces)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-3)
    gpaw = GPAWOracle(GPAWSettings(cutoff=400.0, kpoint_density=1.5, relax_steps=0)).label(
        si_rattled, workdir=tmp_path / "gpaw"
    )
    assert gpaw.ok, gpaw.reason
    assert np.abs(forces).max() > 0.3
    np.testing.assert_allclose(forces, gpaw.forces, atol=0.05)
    cp2k_inp = (tmp_path / "cp2k" / "attempt-1" / "cp2k.inp").read_text()
    assert "SCHEME MACDONALD 3 3 3" in cp2k_inp and "&SMEAR" in cp2k_inp


def test_cp2k_unconverged_scf_is_a_failed_label(si_rattled, tmp_path):
    # CP2K itself only warns; the oracle must not hand back an unconverged energy.
    result = CP2KOracle(CP2KSettings(max_scf=2, max_attempts=1, kpoint_density=1.0)).label(
        si_rattled, workdir=tmp_path / "scf"
    )
    assert result.status == "failed"
    assert "SCF did not converge" in result.reason


def test_cp2k_broken_executable_is_a_failed_label(si_rattled, tmp_path):
    # `false` exits at once: the shell protocol breaks inside ASE, in the child process only.
    result = CP2KOracle(CP2KSettings(command="false", max_attempts=1, timeout_s=60)).label(
        si_rattled, workdir=tmp_path / "broken"
    )
    assert result.status == "failed"
    assert result.reason.startswith(("calculator error", "calculator crashed"))


def test_cp2k_check_reads_the_installed_data_files():
    oracle = CP2KOracle()
    lanthanum = Structure(Lattice.cubic(5.3), ["La", "N"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnsupportedStructure, match="basis set DZVP-MOLOPT-SR-GTH has no entry for La"):
        oracle.check(lanthanum)
    oracle.check(Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    with pytest.raises(OracleUnavailable, match="not found"):
        CP2KOracle(CP2KSettings(command="no-such-cp2k")).check(lanthanum)


def test_cp2k_uks_auto_and_fallback_mixing(si_rattled, tmp_path):
    oracle = CP2KOracle()
    fe = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert oracle.calculator_job(fe, attempt=1, directory=tmp_path)["uks"] is True
    first = oracle.calculator_job(si_rattled, attempt=1, directory=tmp_path)
    second = oracle.calculator_job(si_rattled, attempt=2, directory=tmp_path)
    assert first["uks"] is False
    assert second["max_scf"] == 2 * first["max_scf"]
    assert "ALPHA 0.3" in first["inp"] and "ALPHA 0.15" in second["inp"]
