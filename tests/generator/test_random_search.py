"""AIRSS-like random search with pyxtal."""

from __future__ import annotations

from collections import defaultdict

import pytest
from pydantic import ValidationError
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generator.base import GenerationContext, GeneratorError
from generator.chemistry import enumerate_compositions, formula_unit, is_charge_balanced
from generator.random_search import RandomSearchGenerator, RandomSearchSettings
from loop.science.funnel import Funnel, FunnelConfig

FORMULAS = ["Li3PS4", "LiFePO4", "SrTiO3"]


@pytest.fixture(scope="module")
def batch():
    gen = RandomSearchGenerator(settings=RandomSearchSettings(formulas=FORMULAS, max_atoms=16))
    return gen.generate(n=30, context=GenerationContext(), seed=0)


def test_valid_structures_in_several_space_groups(batch):
    assert len(batch) == 30
    groups = defaultdict(set)
    for cand in batch:
        assert cand.source == "random_search" and cand.parent is None
        formula = cand.structure.composition.reduced_formula
        assert formula == cand.info["formula"] and formula in FORMULAS
        assert len(cand.structure) <= 16
        groups[formula].add(SpacegroupAnalyzer(cand.structure, symprec=0.1).get_space_group_number())
    assert all(len(groups[f]) >= 3 for f in FORMULAS), groups
    # structurally valid, charge balanced and mutually distinct under the funnel's own checks
    kept, report = Funnel(FunnelConfig()).run(batch)
    assert report.removed["min_distance"] == report.removed["volume"] == report.removed["charge_balance"] == 0
    assert len(kept) >= 25


def test_compositions_from_chemical_systems():
    comps = enumerate_compositions(["Li", "P", "S"], max_atoms=10)
    formulas = [c.reduced_formula for c in comps]
    assert "Li3PS4" in formulas and all(is_charge_balanced(c) for c in comps)
    gen = RandomSearchGenerator(settings=RandomSearchSettings(max_compositions=3))
    out = gen.generate(n=6, context=GenerationContext(chemical_systems=["Li-P-S"]), seed=1)
    assert len(out) == 6
    assert {c.info["formula"] for c in out} == set(formulas[:3])
    assert all({e.symbol for e in c.structure.composition.elements} == {"Li", "P", "S"} for c in out)


def test_reproducible_for_a_seed():
    gen = RandomSearchGenerator(settings=RandomSearchSettings(formulas=["SrTiO3"], max_atoms=10))
    a = gen.generate(n=3, context=GenerationContext(), seed=5)
    b = gen.generate(n=3, context=GenerationContext(), seed=5)
    assert [c.info for c in a] == [c.info for c in b]
    assert all(x.structure == y.structure for x, y in zip(a, b, strict=True))


def test_bad_input_raises():
    with pytest.raises(ValidationError, match="formula"):
        RandomSearchSettings(formulas=["LiXq3"])
    with pytest.raises(ValidationError):
        RandomSearchSettings(space_groups=[0, 231])
    with pytest.raises(GeneratorError, match=r"formulas or context\.chemical_systems"):
        RandomSearchGenerator().generate(n=2, context=GenerationContext())
    with pytest.raises(GeneratorError, match="unknown element"):
        RandomSearchGenerator().generate(n=2, context=GenerationContext(chemical_systems=["Li-Qq"]))


def test_small_cells_come_first_when_asked():
    """Asked for Ti2O (1-6 formula units fit 20 atoms) with `formula_unit_exponent: 1`, cells of z units are drawn
    with weight 1/z: one unit about 41 % of the time, against a sixth under the default (every z alike)."""
    context = GenerationContext(chemical_systems=["O-Ti"], compositions=["Ti2O"])
    units = {}
    for exponent in (0.0, 1.0):
        settings = RandomSearchSettings(structures_per_composition=36, formula_unit_exponent=exponent)
        made = RandomSearchGenerator(settings=settings).generate(n=36, context=context, seed=3)
        assert len(made) == 36 and all(c.info["formula"] == "Ti2O" for c in made)
        assert all(len(c.structure) == 3 * c.info["formula_units"] for c in made)
        units[exponent] = [c.info["formula_units"] for c in made]
    assert RandomSearchSettings().formula_unit_exponent == 0.0
    ones = {k: sum(z == 1 for z in v) / len(v) for k, v in units.items()}
    assert ones[1.0] > 0.3 > ones[0.0]
    assert sum(units[1.0]) < sum(units[0.0])


def test_a_peroxide_is_asked_for_by_its_smallest_formula_unit():
    # pymatgen's reduced composition of Na2O2 is Na2 O2; the smallest cell of the composition has 2 atoms
    assert dict(formula_unit("Na2O2").get_el_amt_dict()) == {"Na": 1.0, "O": 1.0}
    gen = RandomSearchGenerator(settings=RandomSearchSettings(max_atoms=4))
    comps = gen.compositions(GenerationContext(known=[], compositions=["Na2O2", "TiO2"]))
    assert [c.reduced_formula for c in comps] == ["Na2O2", "TiO2"] and comps[0].num_atoms == 2
