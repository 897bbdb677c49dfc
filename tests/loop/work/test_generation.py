"""Generation's composition hand-over: each generator that makes given compositions starts where the one before it
stopped, counting the compositions it passed over."""

from __future__ import annotations

from generator.base import GenerationContext
from generator.diffusion import DiffusionGenerator, DiffusionSettings
from loop.work.generation import compositions_used


def test_the_next_generator_starts_after_the_compositions_the_diffusion_model_passed_over():
    asked = ["VO2", "V11O13", "V3O", "V2O5", "V2O3", "VO"]
    gen = DiffusionGenerator(DiffusionSettings(steps=10, structures_per_composition=3))
    made = gen.generate(n=8, context=GenerationContext(chemical_systems=["V-O"], compositions=asked), seed=4)
    # V11O13 (24 atoms) is beyond the model: 8 crystals took four compositions, not ceil(8 / 3) = 3, so the next
    # generator starts at V2O3; starting at V2O5 made it repeat a composition the model had just made.
    assert {c.structure.composition.reduced_formula for c in made} == {"VO2", "V3O", "V2O5"}
    assert compositions_used(asked, made, default=3) == 4
    assert asked[compositions_used(asked, made, default=3)] == "V2O3"
    # A generator that made nothing is taken to have used its share.
    assert compositions_used(asked, [], default=3) == 3
