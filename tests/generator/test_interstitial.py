"""Ordered interstitial compounds on real hosts, matched against bundled Materials Project crystals."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from generator.base import GenerationContext, get_generator_class
from generator.interstitial import (
    InterstitialGenerator,
    InterstitialSettings,
    hermite_normal_forms,
    largest_holes,
)
from generator.seeds import reference_state, seed_table


def bundled(material_id: str) -> Structure:
    return Structure.from_str(seed_table().set_index("material_id").loc[material_id, "cif"], fmt="cif")


def test_supercells_of_each_index_are_the_distinct_sublattices():
    # the number of sublattices of index n of a 3D lattice (OEIS A001001)
    assert [sum(1 for _ in hermite_normal_forms(n)) for n in range(1, 7)] == [1, 7, 13, 35, 31, 91]
    assert all(round(np.linalg.det(h)) == 6 for h in hermite_normal_forms(6))


def test_the_largest_holes_of_hcp_titanium_are_its_two_octahedral_sites():
    host = reference_state("Ti").structure
    holes = largest_holes(host)
    assert len(holes) == 2
    for hole in holes:
        around = host.get_sites_in_sphere(host.lattice.get_cartesian_coords(hole), 2.5)
        # six metal neighbours near a/sqrt(2) = 2.09 Å (ideal close packing; c/a of Ti is 1.59)
        assert len(around) == 6
        assert [n.nn_distance for n in around] == pytest.approx([2.09] * 6, abs=0.05)


def test_titanium_suboxides_are_the_known_orderings():
    """Anti-CdI2 Ti2O (mp-1215) first; Ti6O's two known orderings (P-31c mp-554098, of which no other bundled
    crystal has the type, so substitution cannot offer it, and P-31m mp-882) among the first three."""
    gen = InterstitialGenerator(settings=InterstitialSettings(structures_per_composition=3, max_atoms=14))
    matcher = StructureMatcher()
    ti2o = gen.generate(n=1, context=GenerationContext(compositions=["Ti2O"]), seed=0)
    assert len(ti2o) == 1 and matcher.fit(ti2o[0].structure, bundled("mp-1215"))
    assert ti2o[0].source == "interstitial" and ti2o[0].parent == "ase-ref:Ti-hcp"
    ti6o = gen.generate(n=3, context=GenerationContext(compositions=["Ti6O"]), seed=0)
    assert [c.structure.composition.reduced_formula for c in ti6o] == ["Ti6O"] * 3
    for target in ("mp-554098", "mp-882"):
        assert any(matcher.fit(c.structure, bundled(target)) for c in ti6o), target
    assert all(c.info["guest"] == "O" and c.info["shortest_guest_distance"] > 4.0 for c in ti6o)


def test_compositions_that_are_not_interstitial_are_passed_over():
    gen = InterstitialGenerator()
    asked = ["TiO2", "Na2O", "TiAl", "TiB", "Ti3O"]  # too many guests, no host metal, no guest, Hägg's ratio
    made = gen.generate(n=4, context=GenerationContext(compositions=asked), seed=0)
    assert len(made) == 2 and {c.structure.composition.reduced_formula for c in made} == {"Ti3O"}


def test_settings_are_registered_and_checked():
    assert get_generator_class("interstitial") is InterstitialGenerator
    with pytest.raises(ValidationError, match="unknown element"):
        InterstitialSettings(guests=["Oxygen"])
