from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from modAL.disagreement import max_std_sampling
from modAL.models import ActiveLearner
from pydantic import ValidationError
from pymatgen.core import Structure
from scipy.stats import norm

from loop.errors import InputError
from loop.science.acquisition import (
    AcquisitionConfig,
    AcquisitionError,
    DiversityConfig,
    PrecomputedEnsembleRegressor,
    candidate_matrix,
    get_strategy,
    select_queries,
    select_structures,
    strategy_names,
    structure_features,
)
from loop.science.hull import HullEntry, OracleHull
from loop.science.verdicts import StabilityRule

MP20_VAL = Path(__file__).resolve().parents[3] / "generator" / "data" / "mp_20" / "val.csv.gz"
NO_DIVERSITY = DiversityConfig(max_per_formula=None, similarity_penalty=0.0)
RULE = StabilityRule(near_stable=0.05)


@pytest.fixture(scope="module")
def mp20() -> dict[str, Structure]:
    """A few real mp_20 crystals keyed by material id (CuAu has two polymorphs in the split)."""
    df = pd.read_csv(MP20_VAL)
    rows = df[df.pretty_formula.isin(["CuAu", "NaCl", "Si", "SnS2", "LaAu"])]
    return {r.material_id: Structure.from_str(r.cif, fmt="cif") for r in rows.itertuples()}


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(0.15, 0.12, size=200), rng.uniform(0.005, 0.15, size=200)


def cfg(strategy: str, budget: int = 10, **kw: object) -> AcquisitionConfig:
    return AcquisitionConfig(strategy=strategy, budget=budget, diversity=NO_DIVERSITY, **kw)


def test_registry_has_required_strategies() -> None:
    assert {"max_std", "p_stable", "expected_improvement", "ucb", "greedy", "random"} <= set(strategy_names())


def test_max_std_picks_highest_std_like_modal(pool: tuple[np.ndarray, np.ndarray]) -> None:
    mean, std = pool
    res = select_queries(mean=mean, std=std, config=cfg("max_std"), rule=RULE)
    np.testing.assert_array_equal(res.indices, np.argsort(-std)[:10])
    np.testing.assert_allclose(res.utilities, np.sort(std)[::-1][:10])
    # Same pick as calling modAL's strategy directly on the wrapped ensemble.
    learner = ActiveLearner(
        estimator=PrecomputedEnsembleRegressor(mean=mean, std=std), query_strategy=max_std_sampling
    )
    idx, _ = learner.query(candidate_matrix(mean.size), n_instances=10)
    assert set(idx) == set(res.indices)


def test_greedy_picks_lowest_e_hull(pool: tuple[np.ndarray, np.ndarray]) -> None:
    mean, std = pool
    res = select_queries(mean=mean, std=std, config=cfg("greedy", budget=7), rule=RULE)
    np.testing.assert_array_equal(res.indices, np.argsort(mean)[:7])


def test_p_stable_matches_analytic_gaussian(pool: tuple[np.ndarray, np.ndarray]) -> None:
    mean, std = pool
    rule = StabilityRule(near_stable=0.03)
    res = select_queries(mean=mean, std=std, config=cfg("p_stable", budget=12), rule=rule)
    # the target is the campaign's hit threshold: near_stable plus the on-hull tolerance
    analytic = norm.cdf((rule.hit_threshold - mean) / std)
    np.testing.assert_array_equal(res.indices, np.argsort(-analytic, kind="stable")[:12])
    np.testing.assert_allclose(res.utilities, analytic[res.indices], rtol=1e-10)
    assert np.all(np.diff(res.utilities) <= 0)


def test_p_stable_prefers_uncertain_candidate_when_both_above_threshold() -> None:
    # Same mean above the threshold: only the wider Gaussian has a real chance of being stable.
    res = select_queries(
        mean=[0.2, 0.2],
        std=[0.01, 0.2],
        config=cfg("p_stable", budget=1),
        rule=StabilityRule(near_stable=0.0),
    )
    assert res.indices.tolist() == [1]


def test_expected_improvement_matches_analytic_depth_below_threshold(
    pool: tuple[np.ndarray, np.ndarray],
) -> None:
    mean, std = pool
    rule = StabilityRule(near_stable=0.03)
    res = select_queries(mean=mean, std=std, config=cfg("expected_improvement", budget=12), rule=rule)
    z = (rule.hit_threshold - mean) / std
    analytic = (rule.hit_threshold - mean) * norm.cdf(z) + std * norm.pdf(z)
    np.testing.assert_array_equal(res.indices, np.argsort(-analytic, kind="stable")[:12])
    np.testing.assert_allclose(res.utilities, analytic[res.indices], rtol=1e-10)


def test_expected_improvement_ranks_where_p_stable_saturates() -> None:
    # Round 1 of the audited Li-Al demo: every candidate below the 50 meV/atom threshold has P(hit) ~ 1, so
    # p_stable cannot tell them apart (the diversity penalty picked); the expected depth still ranks them.
    mean = np.array([0.011, -0.039, -0.007, 0.026])
    std = np.array([0.005, 0.005, 0.005, 0.005])
    p = select_queries(mean=mean, std=std, config=cfg("p_stable", budget=4), rule=RULE)
    assert np.allclose(p.utilities, 1.0)
    ei = select_queries(mean=mean, std=std, config=cfg("expected_improvement", budget=4), rule=RULE)
    assert ei.indices.tolist() == [1, 2, 0, 3]


def test_ucb_ranks_by_optimistic_e_hull(pool: tuple[np.ndarray, np.ndarray]) -> None:
    mean, std = pool
    res = select_queries(mean=mean, std=std, config=cfg("ucb", budget=9, kappa=2.0), rule=RULE)
    expected = -(mean - 2.0 * std)
    np.testing.assert_array_equal(res.indices, np.argsort(-expected)[:9])
    np.testing.assert_allclose(res.utilities, expected[res.indices])


def test_random_is_seeded_and_without_repeats(pool: tuple[np.ndarray, np.ndarray]) -> None:
    mean, std = pool
    a = select_queries(mean=mean, std=std, config=cfg("random", budget=20, seed=1), rule=RULE)
    b = select_queries(mean=mean, std=std, config=cfg("random", budget=20, seed=1), rule=RULE)
    c = select_queries(mean=mean, std=std, config=cfg("random", budget=20, seed=2), rule=RULE)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert set(a.indices) != set(c.indices)
    assert len(set(a.indices)) == 20 and a.indices.max() < mean.size


@pytest.mark.parametrize(
    "strategy", ["max_std", "p_stable", "expected_improvement", "ucb", "greedy", "random"]
)
def test_budget_respected_and_nan_candidates_skipped(
    strategy: str, pool: tuple[np.ndarray, np.ndarray]
) -> None:
    mean, std = pool[0].copy(), pool[1].copy()
    mean[[3, 5]] = np.nan  # e.g. no elemental reference on the hull yet
    std[8] = np.inf
    res = select_queries(
        mean=mean, std=std, config=AcquisitionConfig(strategy=strategy, budget=15), rule=RULE
    )
    assert len(res.indices) == 15 and len(set(res.indices)) == 15
    assert not {3, 5, 8} & set(res.indices.tolist())
    assert res.n_skipped == 3 and res.n_pool == mean.size
    small = select_queries(
        mean=[0.1, np.nan, 0.0], std=[0.1, 0.1, 0.1], config=AcquisitionConfig(strategy=strategy), rule=RULE
    )
    assert sorted(small.indices.tolist()) == [0, 2]  # budget 8 > 2 usable candidates
    empty = select_queries(mean=[np.nan], std=[0.1], config=AcquisitionConfig(strategy=strategy), rule=RULE)
    assert empty.indices.size == 0


def test_formula_cap_avoids_copies(mp20: dict[str, Structure]) -> None:
    cuau = mp20["mp-522"]
    others = [s for k, s in mp20.items() if s.composition.reduced_formula != "CuAu"]
    structures = [cuau, cuau.copy(), cuau.copy(), *others]
    mean = np.array([-0.05, -0.05, -0.05] + [-0.04] + [0.3] * (len(others) - 1))
    std = np.full(len(structures), 0.02)
    config = AcquisitionConfig(
        strategy="greedy", budget=2, diversity=DiversityConfig(max_per_formula=1, similarity_penalty=0.0)
    )
    res = select_structures(structures=structures, mean=mean, std=std, config=config, rule=RULE)
    assert res.indices[0] in (0, 1, 2) and res.indices[1] == 3
    plain = select_structures(
        structures=structures, mean=mean, std=std, config=cfg("greedy", budget=2), rule=RULE
    )
    assert set(plain.indices) <= {0, 1, 2}  # without diversity the budget goes on copies


def test_similarity_penalty_avoids_copies(mp20: dict[str, Structure]) -> None:
    cuau = mp20["mp-522"]
    others = [s for s in mp20.values() if s.composition.reduced_formula != "CuAu"]
    structures = [cuau, cuau.copy(), cuau.copy(), *others]
    mean = np.array([-0.05, -0.05, -0.05] + [-0.04] + [0.3] * (len(others) - 1))
    config = AcquisitionConfig(
        strategy="greedy", budget=2, diversity=DiversityConfig(max_per_formula=None, similarity_penalty=0.5)
    )
    res = select_structures(
        structures=structures, mean=mean, std=np.full(len(structures), 0.02), config=config, rule=RULE
    )
    assert res.indices[0] in (0, 1, 2) and res.indices[1] == 3
    # A structure labelled in an earlier round counts as already picked.
    again = select_structures(
        structures=structures,
        mean=mean,
        std=np.full(len(structures), 0.02),
        config=config,
        labelled=[cuau],
        rule=RULE,
    )
    assert again.indices[0] == 3


def test_polymorphs_over_the_cap_come_last_but_still_fill_the_budget(mp20: dict[str, Structure]) -> None:
    polymorphs = [s for s in mp20.values() if s.composition.reduced_formula == "CuAu"]
    assert len(polymorphs) == 2
    structures = [*polymorphs, polymorphs[0].copy()]
    config = AcquisitionConfig(
        strategy="greedy", budget=3, diversity=DiversityConfig(max_per_formula=2, similarity_penalty=0.0)
    )
    res = select_structures(
        structures=structures, mean=[0.0, 0.01, -0.01], std=[0.1] * 3, config=config, rule=RULE
    )
    # The cap re-ranks: the third CuAu comes after the two allowed ones, and the budget is spent.
    assert len(res.indices) == 3 and sorted(res.indices[:2].tolist()) == [0, 2]


def test_structure_features_from_real_crystals(mp20: dict[str, Structure]) -> None:
    structures = list(mp20.values())
    feats = structure_features(structures)
    assert feats.shape == (len(structures), 111)
    np.testing.assert_allclose(feats[:, :103].sum(axis=1), 1.0)
    si = next(s for s in structures if s.composition.reduced_formula == "Si")
    row = feats[structures.index(si)]
    assert row[13] == 1.0  # Z = 14
    assert row[103] == pytest.approx(si.volume / len(si) / 20.0)
    assert row[104] == pytest.approx(float(si.density) / 5.0)
    assert np.isfinite(feats).all()


def test_select_on_hull_evaluated_candidates() -> None:
    hull = OracleHull.from_entries(
        [
            HullEntry(entry_id="Cu", composition="Cu", energy_per_atom=-3.7),
            HullEntry(entry_id="Au", composition="Au", energy_per_atom=-3.2),
            HullEntry(entry_id="CuAu", composition="CuAu", energy_per_atom=-3.55),
        ]
    )
    formulas = ["Cu3Au", "CuAu3", "CuAu", "Cu3Au"]
    ev = hull.evaluate(formulas, [-3.66, -3.30, -3.50, -3.60], [0.02, 0.02, 0.02, 0.05])
    res = select_queries(
        mean=ev.e_above_hull, std=ev.e_above_hull_std, config=cfg("greedy", budget=1), rule=RULE
    )
    assert formulas[res.indices[0]] == "Cu3Au" and ev.e_above_hull[res.indices[0]] < 0


def test_old_stability_threshold_key_gets_a_clear_error() -> None:
    with pytest.raises(ValidationError, match=r"stability_threshold was removed.*near_stable"):
        AcquisitionConfig(strategy="p_stable", stability_threshold=0.1)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown acquisition strategy 'bogus'; choose one of"):
        AcquisitionConfig(strategy="bogus")
    with pytest.raises(ValidationError):
        AcquisitionConfig(strategy="greedy", budgett=3)
    with pytest.raises(ValidationError):
        AcquisitionConfig(budget=0)
    with pytest.raises(InputError, match="choose one of"):
        get_strategy("bogus")
    with pytest.raises(AcquisitionError, match="2 means but 3 stds"):
        select_queries(mean=[0.1, 0.2], std=[0.1, 0.1, 0.1], config=AcquisitionConfig(), rule=RULE)
    with pytest.raises(AcquisitionError, match="std must be >= 0"):
        select_queries(mean=[0.1, 0.2], std=[0.1, -0.1], config=AcquisitionConfig(), rule=RULE)
    with pytest.raises(AcquisitionError, match="features must have shape"):
        candidate_matrix(3, np.zeros((2, 4)))


def test_labelled_features_must_match(mp20: dict[str, Structure]) -> None:
    structures = list(mp20.values())
    with pytest.raises(AcquisitionError, match="labelled features have shape"):
        select_queries(
            mean=np.zeros(len(structures)),
            std=np.full(len(structures), 0.1),
            config=AcquisitionConfig(strategy="greedy"),
            features=structure_features(structures),
            labelled_features=np.zeros((2, 5)),
            rule=RULE,
        )


def test_regressor_is_sklearn_compatible() -> None:
    from sklearn.base import clone

    est = PrecomputedEnsembleRegressor(mean=np.array([0.1, -0.2, 0.3]), std=np.array([0.01, 0.02, 0.03]))
    copy = clone(est)
    X = candidate_matrix(3)
    mean, std = copy.predict(X[[2, 0]], return_std=True)
    np.testing.assert_allclose(mean, [0.3, 0.1])
    np.testing.assert_allclose(std, [0.03, 0.01])
    assert copy.score(X, np.array([0.1, -0.2, 0.3])) == pytest.approx(1.0)
    with pytest.raises(AcquisitionError, match="out of range"):
        copy.predict(np.array([[5.0]]))


def test_a_new_strategy_is_one_function_and_one_registration() -> None:
    from loop.science.acquisition import STRATEGIES, StrategyParams, _select, register_strategy

    class WorstFirstParams(StrategyParams):
        floor: float = 0.0

    def worst_first(learner, X, n_instances=1, *, floor: float, **kwargs):
        mean, _ = learner.predict(X, return_std=True)
        return _select(np.maximum(np.asarray(mean, dtype=float), floor), X, n_instances, **kwargs)

    register_strategy("worst_first", worst_first, params=WorstFirstParams)
    try:
        config = AcquisitionConfig(strategy="worst_first", budget=2, floor=0.25, diversity=NO_DIVERSITY)
        assert config.strategy_arguments(rule=RULE) == {"floor": 0.25}
        res = select_queries(mean=[0.1, 0.9, 0.5, 0.3], std=[0.1] * 4, config=config, rule=RULE)
        assert res.indices.tolist() == [1, 2]
        with pytest.raises(ValidationError, match=r"floor \(worst_first\): Input should be a valid number"):
            AcquisitionConfig(strategy="worst_first", floor="high")
    finally:
        del STRATEGIES["worst_first"]


def test_strategy_parameters_are_validated_by_their_own_model() -> None:
    assert AcquisitionConfig(strategy="ucb", kappa=2.5).strategy_arguments(rule=RULE) == {"kappa": 2.5}
    assert AcquisitionConfig(strategy="random", seed=7).strategy_arguments(rule=RULE) == {"seed": 7}
    assert AcquisitionConfig(strategy="p_stable").strategy_arguments(rule=RULE) == {
        "threshold": RULE.hit_threshold
    }
    # Every strategy's defaults are dumped, so tracked parameters keep their names and values.
    assert {"kappa": 1.0, "seed": 0}.items() <= AcquisitionConfig().model_dump().items()
    with pytest.raises(ValidationError, match=r"kappa \(ucb\): Input should be greater than or equal to 0"):
        AcquisitionConfig(strategy="ucb", kappa=-1)
    with pytest.raises(ValidationError, match="unknown key 'budgett'"):
        AcquisitionConfig(strategy="greedy", budgett=3)


def test_a_round_of_one_formula_spends_its_whole_budget(mp20: dict[str, Structure]) -> None:
    """Nearly every candidate shares one formula: the per-formula cap re-ranks, it never leaves calls unused."""
    cuau = mp20["mp-522"]
    rng = np.random.default_rng(3)
    structures = [cuau.copy() for _ in range(11)] + [mp20["mp-22862"]]  # 11 CuAu and one NaCl
    for s in structures[:11]:
        s.perturb(0.05, min_distance=0.01)
    mean = rng.normal(-0.3, 0.1, size=12)
    std = np.full(12, 0.03)
    for strategy in ("p_stable", "p_ground_state", "expected_improvement", "greedy"):
        config = AcquisitionConfig(
            strategy=strategy, budget=8, diversity=DiversityConfig(max_per_formula=2, similarity_penalty=0.5)
        )
        res = select_structures(structures=structures, mean=mean, std=std, config=config, rule=RULE)
        assert res.indices.size == 8, strategy
        assert len(set(res.indices.tolist())) == 8
        # the cap still re-ranks: the one NaCl comes before the third CuAu
        formulas = [structures[i].composition.reduced_formula for i in res.indices]
        assert "NaCl" in formulas[:3], (strategy, formulas)


def test_ground_state_probability_prefers_the_likely_lowest_polymorph() -> None:
    """Where every candidate is surely below the hull, p_stable saturates at 1 and cannot tell them apart; the
    probability of being the formula's ground state ranks the deepest polymorph of each formula first."""
    # Formula A: three polymorphs far below the hull; formula B: one polymorph just below it.
    mean = np.array([-0.60, -0.45, -0.40, -0.02])
    std = np.array([0.02, 0.02, 0.02, 0.03])
    groups = ["A", "A", "A", "B"]
    from loop.science.acquisition import ground_state_probability

    p = ground_state_probability(mean, std, groups=groups, threshold=0.0)
    assert p[0] > 0.99 and p[1] < 0.01 and p[2] < 0.01  # the deepest A is its ground state
    assert abs(p[3] - norm.cdf(0.02 / 0.03)) < 0.03  # B alone: P(hit) of the Gaussian
    assert p[:3].sum() <= 1.0 + 1e-12
    stable = select_queries(
        mean=mean,
        std=std,
        config=cfg("p_stable", budget=2),
        rule=StabilityRule(near_stable=0.0),
        formulas=groups,
    )
    ground = select_queries(
        mean=mean,
        std=std,
        config=cfg("p_ground_state", budget=2),
        rule=StabilityRule(near_stable=0.0),
        formulas=groups,
    )
    assert set(ground.indices.tolist()) == {0, 3}  # one likely ground state per formula
    assert 3 not in stable.indices.tolist()  # p_stable spends both calls on formula A
