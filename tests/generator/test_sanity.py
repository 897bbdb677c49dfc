"""The one structure sanity rule, and the generator capabilities the loop reads instead of names."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from generator.base import Generator, generator_names, get_generator_class
from generator.diffusion.metrics import structurally_valid
from generator.sanity import MIN_DISTANCE, is_sane, shortest_distance, too_close


def test_rock_salt_is_sane_and_its_shortest_distance_is_half_the_cell():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert shortest_distance(nacl) == pytest.approx(2.82, abs=1e-6)
    assert is_sane(nacl) and structurally_valid(nacl) and not too_close(nacl)


def test_atoms_closer_than_the_limit_fail_everywhere():
    pair = Structure(Lattice.cubic(4.0), ["Li", "Li"], [[0, 0, 0], [0.1, 0, 0]])  # 0.4 Å apart
    assert shortest_distance(pair) == pytest.approx(0.4)
    assert too_close(pair) and not is_sane(pair) and not structurally_valid(pair)
    assert MIN_DISTANCE > 0.4


def test_an_atom_too_close_to_its_own_image_or_a_gas_like_cell_fails():
    squashed = Structure(Lattice.orthorhombic(0.45, 3.0, 3.0), ["Cu"], [[0, 0, 0]])
    assert too_close(squashed) and not is_sane(squashed)
    gas = Structure(Lattice.cubic(8.0), ["Cu"], [[0, 0, 0]])  # 512 Å³ for one atom
    assert not too_close(gas) and not is_sane(gas)


@pytest.mark.parametrize("name", ["diffusion", "substitution", "random_search"])
def test_capabilities_match_what_each_generator_implements(name):
    assert name in generator_names()
    cls = get_generator_class(name)
    assert cls.supports_fine_tune == (cls.fine_tune is not Generator.fine_tune)
    assert cls.supports_conditions == (
        name == "diffusion"
    )  # only diffusion reads GenerationContext.conditions
