"""The diffusion sampler asked for compositions: exact type decoding to a formula, with the shipped model."""

from __future__ import annotations

import pytest

from generator.base import GenerationContext, GeneratorError
from generator.diffusion import sample_structures
from generator.diffusion.charge import CompositionConstraint
from generator.diffusion.generator import DiffusionGenerator, DiffusionSettings


def test_formula_constraint_counts_whole_formula_units():
    v2o3 = CompositionConstraint(allowed_z=[8, 23], required=[8, 23], formula={23: 2, 8: 3})
    assert v2o3.feasible({}, [1] * 10)  # two formula units
    assert not v2o3.feasible({}, [1] * 7)
    assert v2o3.feasible({23: 2}, [1, 1, 1])
    assert not v2o3.feasible({23: 3}, [1, 1])  # too much V already
    assert not v2o3.feasible({23: 2, 22: 1}, [1, 1])  # a foreign element
    # Wyckoff orbits: 4 V + 6 O out of orbits of 4, 4 and 2 works; out of two orbits of 5 it does not
    assert v2o3.feasible({}, [4, 4, 2])
    assert not v2o3.feasible({}, [5, 5])
    assert not v2o3.feasible({23: 2}, [5, 3])
    assert v2o3.allowed_for({23: 4, 8: 4}, 1, [1], [8, 23]) == [True, False]


def test_sampling_a_formula_gives_that_formula_only():
    for formula, conditions in (("V2O3", None), ("Ti2O3", {"space_group": 167})):
        structures = sample_structures(n=4, formula=formula, conditions=conditions, steps=10, seed=1)
        assert len(structures) == 4
        assert {s.composition.reduced_formula for s in structures} == {formula}
    with pytest.raises(GeneratorError, match="whole formula units"):
        sample_structures(n=1, formula="V11O13", steps=2)  # 24 atoms > the model's 20


def test_generator_works_down_the_round_compositions():
    gen = DiffusionGenerator(DiffusionSettings(steps=10, structures_per_composition=3))
    # V11O13 is beyond the model and is passed over; every other composition gets its share in turn
    context = GenerationContext(chemical_systems=["V-O"], compositions=["VO2", "V11O13", "V3O", "V2O5"])
    out = gen.generate(n=8, context=context, seed=4)
    assert [c.structure.composition.reduced_formula for c in out] == ["VO2"] * 3 + ["V3O"] * 3 + ["V2O5"] * 2
    assert out[0].info["conditions"]["formula"] == "VO2"
