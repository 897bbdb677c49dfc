"""The size guard: every oracle states a maximum cell size and a memory estimate, checked before any calculation."""

from __future__ import annotations

import time

import pytest
from pymatgen.core import Lattice, Structure

from oracle import (
    CP2KOracle,
    EMTOracle,
    EMTSettings,
    EspressoOracle,
    GPAWOracle,
    GPAWSettings,
    StructureTooLarge,
    UnsupportedStructure,
    VaspOracle,
    oracle_names,
)
from oracle.ase_runner import RESULT_FILE
from oracle.base import get_oracle_class


def fcc_al(n: int) -> Structure:
    """An fcc Al supercell with 4 n³ atoms (a = 4.04 Å)."""
    cell = Structure(
        Lattice.cubic(4.04), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )
    return cell.make_supercell([n, n, n], in_place=False)


@pytest.fixture(scope="module")
def al_5000() -> Structure:
    big = fcc_al(11)  # 5324 atoms
    big.remove_sites(list(range(5000, len(big))))
    return big


def test_every_oracle_states_a_size_limit_and_a_memory_estimate():
    small = fcc_al(1)
    for name in oracle_names():
        cls = get_oracle_class(name)
        oracle = cls()
        assert oracle.settings.max_atoms >= 1 and oracle.settings.max_memory_gb > 0
        estimate = oracle.memory_estimate_gb(small)
        assert estimate is not None and 0 < estimate < 2, (name, estimate)
        assert oracle.memory_estimate_gb(fcc_al(3)) > estimate


def test_default_gpaw_refuses_5000_atoms_fast_and_before_any_file(al_5000, tmp_path):
    oracle = GPAWOracle()
    t0 = time.perf_counter()
    with pytest.raises(StructureTooLarge, match="5000 atoms exceed the gpaw oracle's limit of") as info:
        oracle.check(al_5000)
    assert time.perf_counter() - t0 < 5  # no O(n²) distance matrix first
    assert isinstance(info.value, UnsupportedStructure) and info.value.fix
    result = oracle.label(al_5000, workdir=tmp_path / "big")
    assert result.status == "failed" and result.failure_kind == "too_large" and not result.transient
    assert result.attempts == 0
    assert not (tmp_path / "big" / RESULT_FILE).exists() and not list((tmp_path / "big").glob("attempt-*"))


def test_memory_estimate_refuses_a_cell_within_max_atoms(al_5000):
    # 500 atoms at a dense k-mesh and high cutoff: under a raised atom limit, the memory estimate decides.
    cell = fcc_al(5)
    oracle = GPAWOracle(GPAWSettings(max_atoms=1000, kpoint_density=4.0, cutoff=700, max_memory_gb=8))
    assert oracle.memory_estimate_gb(cell) > 8
    with pytest.raises(StructureTooLarge, match="GB with these gpaw settings, over max_memory_gb 8"):
        oracle.check(cell)


def test_memory_estimate_grows_with_cutoff_kpoints_and_spin():
    cell = fcc_al(1)
    base = GPAWOracle(GPAWSettings(cutoff=400, kpoint_density=3.0)).memory_estimate_gb(cell)
    assert GPAWOracle(GPAWSettings(cutoff=700, kpoint_density=3.0)).memory_estimate_gb(cell) > base
    assert GPAWOracle(GPAWSettings(cutoff=400, kpoint_density=6.0)).memory_estimate_gb(cell) > base
    assert (
        GPAWOracle(GPAWSettings(cutoff=400, kpoint_density=3.0, spin_polarized=True)).memory_estimate_gb(cell)
        > base
    )


def test_demo_sized_cells_pass_the_default_guard():
    # The demo's candidates (<= 12 atoms, Li-Al) and typical 20-atom oxides are far from the limits.
    li_al = Structure(
        Lattice.cubic(6.37), ["Li"] * 6 + ["Al"] * 6, [[i / 12, i / 12, (i * 5 % 12) / 12] for i in range(12)]
    )
    GPAWOracle().check_size(li_al)
    for cls in (CP2KOracle, EspressoOracle, VaspOracle):
        cls().check_size(li_al)


def test_emt_states_a_larger_limit(al_5000):
    oracle = EMTOracle()
    oracle.check_size(al_5000)  # a classical potential handles this size
    with pytest.raises(StructureTooLarge, match="limit of 100"):
        EMTOracle(EMTSettings(max_atoms=100)).check_size(al_5000)
