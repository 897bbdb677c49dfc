"""Charge-balance test and the completion check used by constrained type decoding, on real mp_20 data."""

from __future__ import annotations

import random

from pymatgen.core import Structure

from generator.diffusion import sample_structures
from generator.diffusion.charge import CompositionConstraint, charge_balanced_counts, counts_of
from generator.diffusion.data import read_mp20_frame
from generator.diffusion.metrics import charge_balanced


def _real_atoms(k: int) -> list[list[int]]:
    frame = read_mp20_frame("val").iloc[:k]
    return [[site.specie.Z for site in Structure.from_str(c, fmt="cif")] for c in frame["cif"]]


def test_counts_test_matches_the_metric_and_real_data_mostly_passes():
    crystals = _real_atoms(150)
    from pymatgen.core import Composition, Element

    verdicts = []
    for zs in crystals:
        comp = Composition({Element.from_Z(z): n for z, n in counts_of(zs).items()})
        verdicts.append(charge_balanced(comp))
        assert verdicts[-1] == charge_balanced_counts(counts_of(zs))
    # Most Materials Project crystals pass; this test is stricter than SMACT with all oxidation states
    # (common states only, and metalloid compounds such as Mn3Ge are not intermetallics): 68 % of these do
    assert 0.6 < sum(verdicts) / len(verdicts) < 0.8
    assert not charge_balanced_counts({11: 1, 17: 3, 8: 1})  # NaCl3O


def test_completion_check_never_rejects_a_real_composition():
    """Reveal real charge-balanced crystals atom by atom in random order: every prefix must stay feasible."""
    rng = random.Random(0)
    constraint = CompositionConstraint(allowed_z=range(1, 95))
    checked = 0
    for zs in _real_atoms(150):
        if not charge_balanced_counts(counts_of(zs)):
            continue
        order = zs[:]
        rng.shuffle(order)
        for k in range(len(order) + 1):
            assert constraint.feasible(counts_of(order[:k]), [1] * (len(order) - k)), order
        checked += 1
    assert checked > 100


def test_completion_check_rejects_dead_ends():
    li, o = 3, 8
    constraint = CompositionConstraint(allowed_z=[li, o], required=[li, o])
    assert not constraint.feasible({o: 5}, [1])  # the last atom must be Li: LiO5 cannot balance
    assert constraint.feasible({o: 1}, [1, 1])  # Li2O
    assert not constraint.feasible({o: 1}, [])  # Li missing
    free = CompositionConstraint(allowed_z=range(1, 95), charge_balance=False, required=[li])
    assert free.feasible({o: 5}, [1]) and not free.feasible({o: 5}, [])


def test_constrained_decoding_makes_charge_balanced_samples():
    out = sample_structures(n=12, seed=5, steps=20, batch_size=12, charge_balance=True)
    assert all(charge_balanced(s.composition) for s in out)
    system = sample_structures(
        n=6, seed=5, steps=20, conditions={"chemical_system": "Li-Fe-O"}, charge_balance=True
    )
    assert all(charge_balanced(s.composition) for s in system)
    assert all({e.symbol for e in s.composition.elements} == {"Li", "Fe", "O"} for s in system)


def test_impossible_charge_balanced_requests_are_rejected():
    import pytest

    from generator.base import GeneratorError

    # no Li-Fe-O composition with 6 atoms balances (Li+ Fe2+/3+ O2-)
    with pytest.raises(GeneratorError, match="no charge-balanced Li-O-Fe composition has 6 atoms"):
        sample_structures(n=2, conditions={"chemical_system": "Li-Fe-O"}, num_atoms=6)
    # without the constraint the same request samples
    out = sample_structures(
        n=2, conditions={"chemical_system": "Li-Fe-O"}, num_atoms=6, steps=10, charge_balance=False
    )
    assert all(len(s) == 6 for s in out)


def test_species_prior_brings_element_counts_near_the_data():
    def many(structures):
        return sum(len(s.composition.elements) >= 5 for s in structures) / len(structures)

    capped = sample_structures(n=60, seed=2, steps=20, batch_size=60)
    free = sample_structures(n=60, seed=2, steps=20, batch_size=60, species_prior=False)
    # mp_20 training crystals: 2.7 % have five or more elements
    assert many(capped) <= 0.1 < many(free)
    assert all(charge_balanced(s.composition) for s in capped)


def test_funnel_and_sampler_share_one_charge_rule():
    """The funnel's "common" rule and the sampler's validity test give the same verdict on real crystals."""
    from pymatgen.core import Composition, Element

    from generator.chemistry import is_charge_balanced

    verdicts = []
    for zs in _real_atoms(300):
        comp = Composition({Element.from_Z(z): n for z, n in counts_of(zs).items()})
        verdicts.append(charge_balanced_counts(counts_of(zs)))
        assert is_charge_balanced(comp, rule="common") == verdicts[-1] == charge_balanced(comp), comp
    assert 0 < sum(verdicts) < len(verdicts)  # both verdicts occur, so the agreement means something
