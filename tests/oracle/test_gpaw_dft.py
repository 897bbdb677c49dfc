"""GPAW oracle on real small cells: agreement with a bare GPAW run, storage, spin policy, input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from oracle import GPAWOracle, GPAWSettings, UnsupportedStructure, make_oracle
from oracle.ase_runner import RESULT_FILE

CHEAP = {"cutoff": 400.0, "kpoint_density": 2.0, "smearing_width": 0.05, "relax_steps": 0}


def bare_gpaw(structure: Structure, workdir: Path) -> tuple[float, np.ndarray, np.ndarray]:
    """The same calculation written directly against gpaw's API: (eV/atom, forces eV/Å, stress eV/Å³)."""
    from ase import Atoms
    from gpaw import GPAW, PW
    from threadpoolctl import threadpool_limits

    atoms = Atoms(
        [site.specie.symbol for site in structure],
        positions=structure.cart_coords,
        cell=structure.lattice.matrix,
        pbc=True,
    )
    atoms.calc = GPAW(
        mode=PW(CHEAP["cutoff"]),
        xc="PBE",
        kpts={"density": CHEAP["kpoint_density"], "gamma": True},
        occupations={"name": "fermi-dirac", "width": CHEAP["smearing_width"]},
        txt=str(workdir / "bare.txt"),
    )
    # In-process, so pin BLAS to one thread as the oracle's child process does.
    with threadpool_limits(limits=1):
        return atoms.get_potential_energy() / len(atoms), atoms.get_forces(), atoms.get_stress()


@pytest.fixture(scope="module")
def si_labelled(si, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("si") / "oracle" / "si"
    oracle = GPAWOracle(GPAWSettings(**CHEAP))
    return oracle, workdir, oracle.label(si, workdir=workdir)


def test_si_matches_bare_gpaw(si, si_labelled, tmp_path):
    _, _, result = si_labelled
    assert result.ok, result.reason
    assert len(result.forces) == 2 and all(len(f) == 3 for f in result.forces)
    assert len(result.stress) == 6
    assert result.energy == pytest.approx(2 * result.energy_per_atom)
    e_bare, _f_bare, s_bare = bare_gpaw(si, tmp_path)
    assert result.energy_per_atom == pytest.approx(e_bare, abs=0.05)
    np.testing.assert_allclose(np.sum(result.forces, axis=0), 0.0, atol=1e-3)
    # eV/Å³ -> GPa; the oracle reports GPa with ASE's sign.
    np.testing.assert_allclose(result.stress, s_bare * 160.21766208, atol=0.5)
    assert result.metadata["code_version"].startswith("gpaw ")
    assert result.metadata["n_scf"] > 0
    assert result.settings["cutoff"] == 400.0
    assert result.metadata["spin_polarized"] is False


def test_band_gap_comes_from_the_label_itself(si_labelled, tmp_path):
    """Si is a small-gap semiconductor (PBE ~0.6 eV indirect; the label's coarse Γ-centred mesh misses the
    conduction-band minimum, so it reads higher), NaCl a wide-gap insulator (PBE ~5 eV, experiment 8.5 eV)."""
    oracle, _, si_result = si_labelled
    assert "band_gap" in GPAWOracle.implemented_properties
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl_result = oracle.label(nacl.get_primitive_structure(), workdir=tmp_path / "nacl")
    assert nacl_result.ok, nacl_result.reason
    assert si_result.metadata["band_gap_functional"] == "PBE"
    assert 0.2 < si_result.metadata["band_gap"] < 2.0
    assert 3.5 < nacl_result.metadata["band_gap"] < 6.5


def test_second_label_reads_the_stored_result(si, si_labelled):
    _oracle, workdir, first = si_labelled
    stored = workdir / RESULT_FILE
    mtime = stored.stat().st_mtime_ns
    again = GPAWOracle(GPAWSettings(**CHEAP)).label(si, workdir=workdir)
    assert again.metadata.get("from_store") is True
    assert again.energy == first.energy and again.forces == first.forces
    assert stored.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in workdir.glob("attempt-*")) == ["attempt-1"]


def test_store_is_keyed_by_physics_settings(si, si_labelled):
    _, workdir, first = si_labelled
    # A different timeout or rank count does not change the physics: still served from the store.
    same = GPAWOracle(GPAWSettings(**CHEAP, timeout_s=99.0, mpi_ranks=2)).label(si, workdir=workdir)
    assert same.metadata.get("from_store") is True
    # A different cutoff does: computed again, and the store now holds the new label.
    other = GPAWOracle(GPAWSettings(**{**CHEAP, "cutoff": 450.0})).label(si, workdir=workdir)
    assert other.ok and other.metadata.get("from_store") is None
    assert other.energy != first.energy
    assert other.metadata["settings_hash"] != first.metadata["settings_hash"]


def test_nacl_forces_follow_input_site_order(nacl_rattled, tmp_path):
    result = GPAWOracle(GPAWSettings(**CHEAP)).label(nacl_rattled, workdir=tmp_path / "nacl")
    assert result.ok, result.reason
    e_bare, f_bare, _ = bare_gpaw(nacl_rattled, tmp_path)
    assert result.energy_per_atom == pytest.approx(e_bare, abs=0.05)
    forces = np.array(result.forces)
    assert np.abs(forces).max() > 0.01  # the rattle makes real forces
    np.testing.assert_allclose(forces, f_bare, atol=0.02)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=2e-3)


def test_orthogonal_cell_is_labelled(tmp_path):
    # Niggli reduction used to hand GPAW every orthogonal cell as diag(-a, -b, c), on which GPAW's text log failed
    # ("negative dimensions are not allowed"): 8 of 60 cells of the Li-Al GPAW pool were lost that way.
    b2 = Structure(Lattice.cubic(3.16), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    result = GPAWOracle(GPAWSettings(**CHEAP)).label(b2, workdir=tmp_path / "b2")
    assert result.ok, result.reason
    assert -4.5 < result.energy_per_atom < -2.0  # PBE total energy of B2 LiAl is about -3.0 eV/atom
    np.testing.assert_allclose(result.forces, 0.0, atol=1e-3)  # every site is an inversion centre


def test_mpi_two_ranks_agrees_with_serial(si, si_labelled, tmp_path):
    _, _, serial = si_labelled
    result = GPAWOracle(GPAWSettings(**CHEAP, mpi_ranks=2)).label(si, workdir=tmp_path / "mpi")
    assert result.ok, result.reason
    assert result.energy_per_atom == pytest.approx(serial.energy_per_atom, abs=1e-4)


def test_short_relaxation_lowers_forces(si, tmp_path):
    rattled = si.copy()
    rattled.translate_sites([0], [0.06, 0.0, -0.04], frac_coords=False)
    result = GPAWOracle(GPAWSettings(**{**CHEAP, "relax_steps": 3})).label(
        rattled, workdir=tmp_path / "relax"
    )
    assert result.ok, result.reason
    initial = np.abs(result.frames[0].forces).max()
    final = np.abs(result.forces).max()
    assert final < initial
    assert result.energy <= result.frames[0].energy + 1e-3
    assert [s.species_string for s in result.final_structure] == ["Si", "Si"]
    assert 1 <= result.metadata["relax_steps_taken"] <= 3


@pytest.mark.parametrize(
    ("element", "build", "a_start", "a_pbe"),
    [
        # fcc Al (1 atom) started 4 % too large; PBE: a ≈ 4.04 Å. bcc Li started 4 % too small; PBE: a ≈ 3.44 Å.
        ("Al", "fcc", 4.20, 4.04),
        ("Li", "bcc", 3.30, 3.44),
    ],
)
def test_relaxation_includes_the_cell_and_the_result_belongs_to_the_final_structure(
    element, build, a_start, a_pbe, tmp_path
):
    h = a_start / 2
    vectors = [[0, h, h], [h, 0, h], [h, h, 0]] if build == "fcc" else [[-h, h, h], [h, -h, h], [h, h, -h]]
    start = Structure(Lattice(vectors), [element], [[0, 0, 0]])
    settings = GPAWSettings(
        cutoff=300.0, kpoint_density=2.5, smearing="marzari-vanderbilt", smearing_width=0.2, relax_steps=12
    )
    result = GPAWOracle(settings).label(start, workdir=tmp_path / element)
    assert result.ok, result.reason
    final = result.final_structure
    per_atom = 4 if build == "fcc" else 2
    a_final = (final.volume * per_atom) ** (1 / 3)
    # The cell moved from the start towards the PBE lattice constant (loose settings: within 2 %).
    assert abs(a_final - a_pbe) < abs(a_start - a_pbe)
    assert abs(a_final - a_pbe) / a_pbe < 0.02
    # Pressure of the final cell is small (GPa), where the start was far off.
    start_pressure = -np.mean(result.frames[0].stress[:3])
    final_pressure = -np.mean(result.stress[:3])
    assert abs(final_pressure) < 0.3 < abs(start_pressure)
    # Frames: the input geometry first, one per step, the last one is the label itself.
    assert len(result.frames) == result.metadata["relax_steps_taken"] + 1
    assert result.frames[0].structure.volume == pytest.approx(start.volume)
    assert result.frames[-1].energy == pytest.approx(result.energy)
    assert result.energy < result.frames[0].energy
    # Stored and read back as the same typed result.
    again = GPAWOracle(settings).label(start, workdir=tmp_path / element)
    assert again.metadata["from_store"] is True
    assert again.final_structure == final and len(again.frames) == len(result.frames)


def test_check_rejects_elements_without_paw_setup():
    technetium = Structure(Lattice.cubic(3.0), ["Tc"], [[0, 0, 0]])
    oracle = GPAWOracle()
    with pytest.raises(UnsupportedStructure, match="Tc"):
        oracle.check(technetium)


def test_label_turns_unsupported_element_into_failed_result(tmp_path):
    technetium = Structure(Lattice.cubic(3.0), ["Tc"], [[0, 0, 0]])
    result = GPAWOracle().label(technetium, workdir=tmp_path / "tc")
    assert result.status == "failed" and "Tc" in result.reason
    # Deterministic for these settings, so not transient; decided before any calculation, so not kept on disk.
    assert result.failure_kind == "unsupported" and result.transient is False
    assert result.attempts == 0
    assert not list((tmp_path / "tc").glob("attempt-*"))
    assert not (tmp_path / "tc" / RESULT_FILE).exists()


def test_spin_polarisation_auto_on_for_magnetic_elements():
    feo = Structure(Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    oracle = GPAWOracle()
    moments = oracle.initial_magmoms(feo)
    assert moments is not None and moments[0] > 2.0 and moments[1] == 0.0
    assert oracle.initial_magmoms(Structure(Lattice.cubic(5.4), ["Si"], [[0, 0, 0]])) is None
    forced = GPAWOracle(GPAWSettings(spin_polarized=False))
    assert forced.initial_magmoms(feo) is None


def test_defaults_and_registry():
    oracle = make_oracle(GPAWSettings())
    assert isinstance(oracle, GPAWOracle) and oracle.is_dft
    assert oracle.settings.cutoff == 700.0 and oracle.settings.mpi_ranks == 1
    with pytest.raises(ValueError):
        GPAWSettings(cutoff=500, unknown=1)


def test_iron_comes_out_magnetic(tmp_path):
    fe = Structure.from_spacegroup(
        "Im-3m", Lattice.cubic(2.83), ["Fe"], [[0, 0, 0]]
    ).get_primitive_structure()
    settings = GPAWSettings(cutoff=350.0, kpoint_density=1.5, smearing_width=0.1, relax_steps=0)
    result = GPAWOracle(settings).label(fe, workdir=tmp_path / "fe")
    assert result.ok, result.reason
    assert result.metadata["spin_polarized"] is True
    assert 1.5 < result.metadata["magnetic_moment"] < 3.0  # bcc Fe, PBE: ≈2.2-2.3 μB


def test_relaxation_on_a_coarser_mesh_then_a_single_point_on_the_label_mesh(tmp_path):
    h = 4.20 / 2  # fcc Al started 4 % too large
    start = Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Al"], [[0, 0, 0]])
    common = {"cutoff": 300.0, "smearing": "marzari-vanderbilt", "smearing_width": 0.2}
    settings = GPAWSettings(**common, kpoint_density=2.5, relax_kpoint_density=1.5, relax_steps=12)
    result = GPAWOracle(settings).label(start, workdir=tmp_path / "two-stage")
    assert result.ok, result.reason
    assert result.frames == []  # the relaxation's numbers belong to the coarse mesh
    assert result.final_structure.volume < start.volume
    attempt = result.metadata["attempt_log"][0]
    assert attempt["relax_params"]["kpts"]["size"] == [4, 4, 4]  # density 1.5 Å⁻¹
    label_mesh = attempt["params"]["kpts"]["size"]
    # The answer is the label mesh's single point at the relaxed geometry.
    check = GPAWOracle(GPAWSettings(**common, kpoint_density=2.5, relax_steps=0)).label(
        result.final_structure, workdir=tmp_path / "check"
    )
    assert result.energy == pytest.approx(check.energy, abs=2e-3)
    np.testing.assert_allclose(result.stress, check.stress, atol=0.05)
    assert label_mesh == check.metadata["attempt_log"][0]["params"]["kpts"]["size"] != [4, 4, 4]
    assert (tmp_path / "two-stage" / "attempt-1" / "relax" / "gpaw.txt").exists()
