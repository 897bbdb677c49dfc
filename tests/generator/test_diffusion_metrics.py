"""Validity, uniqueness and novelty checks used by the diffusion benchmarks, on real mp_20 crystals."""

from __future__ import annotations

from pymatgen.core import Composition, Lattice, Structure

from generator.diffusion.data import read_mp20_frame
from generator.diffusion.metrics import charge_balanced, novel_mask, structurally_valid, unique_mask


def _real(k: int) -> list[Structure]:
    frame = read_mp20_frame("val").iloc[:k]
    return [Structure.from_str(c, fmt="cif") for c in frame["cif"]]


def test_real_crystals_are_valid_and_clashes_are_not():
    real = _real(10)
    assert all(structurally_valid(s) for s in real)
    clash = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]])  # 0.4 Å apart
    assert not structurally_valid(clash)
    across = Structure(
        Lattice.cubic(4.0), ["Na", "Cl"], [[0.01, 0, 0], [0.97, 0, 0]]
    )  # 0.16 Å via the boundary
    assert not structurally_valid(across)
    empty = Structure(Lattice.cubic(40.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert not structurally_valid(empty)  # 32,000 Å³/atom


def test_charge_balance():
    assert charge_balanced(Composition("NaCl"))
    assert charge_balanced(Composition("Fe2O3"))
    assert charge_balanced(Composition("LiFePO4"))
    assert charge_balanced(Composition("Cu3Au"))  # intermetallic
    assert not charge_balanced(Composition("NaCl3O"))
    assert not charge_balanced(Composition("SrO6"))


def test_uniqueness_and_novelty_use_structure_matching():
    real = _real(6)
    shifted = real[0].copy()
    shifted.translate_sites(list(range(len(shifted))), [0.13, 0.07, 0.0])
    assert unique_mask([real[0], shifted, real[1]]) == [True, False, True]
    assert novel_mask([shifted, real[2]], real[:2]) == [False, True]
