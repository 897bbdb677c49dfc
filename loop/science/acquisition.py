"""Choosing which screened candidates the oracle labels this round, with modAL query strategies.

The emulator ensemble has already predicted, for every candidate, the mean and standard deviation of its energy
above the oracle hull (eV/atom). `PrecomputedEnsembleRegressor` wraps those numbers as a scikit-learn regressor so
that modAL's `ActiveLearner` and strategies can call `predict(X, return_std=True)` on them.

Candidate matrix `X`: column 0 holds the candidate's index into the mean/std arrays (as a float); the other columns
are its diversity features (see `structure_features`). Build it with `candidate_matrix`.

Strategies follow modAL's query-strategy form and return convention, because `ActiveLearner.query` unpacks exactly
that pair: `strategy(learner, X, n_instances=..., **kwargs) -> (indices, utilities)`, where `indices` are row
positions in `X` ranked best first and `utilities` their utility (higher is better, before any diversity penalty).

Batch diversity (all strategies): a greedy pick in the spirit of modAL's ranked batch mode. Utilities are scaled to
[0, 1]; each pick then loses `similarity_penalty * 1 / (1 + d)` where d is the Euclidean feature distance to the
nearest candidate already picked this round (or already labelled, if their features are given); and a formula that
already has `max_per_formula` picks goes behind every formula that has fewer. Both re-rank and never leave a call
unused: a round picks `budget` candidates whenever that many are on offer, even when all share one formula.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from modAL.acquisition import EI, PI, UCB
from modAL.disagreement import max_std_sampling
from modAL.models import ActiveLearner
from modAL.utils.selection import multi_argmax
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pymatgen.core import Structure
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.metrics import pairwise_distances

from loop.errors import InputError
from loop.science.verdicts import StabilityRule

# Floor on the ensemble spread, eV/atom: a zero std would make the Gaussian probability a step function (0/0 at the
# threshold) and tells nothing more than "very sure".
_MIN_STD = 1e-6
# 1 amu / 1 Å^3 in g/cm^3.
_AMU_G_PER_CM3_A3 = 1.66053906660
# Highest atomic number in the composition block of the feature vector.
_N_ELEMENTS = 103


class AcquisitionError(InputError, ValueError):
    """Bad input for acquisition (unknown strategy, mismatched array lengths, malformed candidate matrix)."""


class DiversityConfig(BaseModel):
    """Batch-diversity settings for one round.

    Attributes:
        max_per_formula: A formula with this many picks goes behind every formula with fewer (None: no cap);
            once every formula on offer has reached it, picks go on by score (the budget is always spent).
        similarity_penalty: Weight of the feature-space similarity penalty on the [0, 1]-scaled utility
            (0 switches it off; 1 lets an exact copy of a pick lose all its utility).
        structure_weight: Weight of the structural descriptors relative to the composition fractions in the
            feature distance.
    """

    model_config = ConfigDict(extra="forbid")

    max_per_formula: int | None = Field(default=2, ge=1)
    similarity_penalty: float = Field(default=0.5, ge=0.0)
    structure_weight: float = Field(default=0.5, ge=0.0)


class PoolConfig(BaseModel):
    """The persistent candidate pool: screened candidates that were not labelled stay on offer in later rounds.

    Attributes:
        carry_over: Keep every unlabelled screened candidate on offer, re-scored each round by the current emulator
            (False: a round offers only the candidates it generated).
        rerelax_force: eV/Å. A carried candidate is re-scored by one batched prediction at its stored
            emulator-relaxed geometry; when the current emulator's largest force there exceeds this, that
            geometry is no longer near the current model's minimum and the candidate is relaxed again from it.
        max_age: Rounds a candidate stays on offer after its first screening (None: until labelled).
    """

    model_config = ConfigDict(extra="forbid")

    carry_over: bool = True
    rerelax_force: float = Field(default=0.3, gt=0.0)
    max_age: int | None = Field(default=None, ge=1)


class StrategyParams(BaseModel):
    """A strategy's own settings, read from the `acquisition:` section; subclass one per strategy that has any.

    `arguments` turns them (and the campaign's stability rule) into the strategy's keyword arguments.
    """

    model_config = ConfigDict(extra="forbid")

    def arguments(self, *, rule: StabilityRule) -> dict[str, Any]:
        """Keyword arguments of the strategy call."""
        return self.model_dump()


class AcquisitionConfig(BaseModel):
    """How the round's oracle queries are chosen.

    Besides the keys below, the section takes the parameters of any registered strategy (for example `kappa`
    for `ucb`, `seed` for `random`; see `register_strategy`); each is validated by its strategy's model, and the
    chosen strategy is called with its own.

    Attributes:
        strategy: Registered strategy name (see `strategy_names()`).
        budget: Oracle queries per round.
        diversity: Batch-diversity settings.
        pool: The persistent candidate pool.
    """

    model_config = ConfigDict(extra="allow")

    strategy: str = "p_stable"
    budget: int = Field(default=8, ge=1)
    diversity: DiversityConfig = Field(default_factory=DiversityConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)

    @model_validator(mode="before")
    @classmethod
    def _removed_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and "stability_threshold" in data:
            raise ValueError(
                "stability_threshold was removed: acquisition now targets the campaign's hit threshold; delete it"
                " and set the top-level near_stable (eV/atom above the hull) instead"
            )
        return data

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(
                f"unknown acquisition strategy {value!r}; choose one of: {', '.join(strategy_names())}"
            )
        return value

    @model_validator(mode="after")
    def _strategy_parameters(self) -> AcquisitionConfig:
        """Validate every strategy parameter by its strategy's model and fill in the defaults of the rest."""
        given = dict(self.model_extra or {})
        owners = {key: strategy for strategy in STRATEGIES.values() for key in strategy.Params.model_fields}
        unknown = sorted(set(given) - set(owners))
        if unknown:
            raise ValueError(
                f"unknown key {unknown[0]!r} (not a setting of acquisition nor a parameter of any strategy: "
                f"{', '.join(sorted(owners))})"
            )
        extra = self.__pydantic_extra__
        assert extra is not None  # extra="allow" keeps a dict
        for strategy in STRATEGIES.values():
            own = {key: given[key] for key in strategy.Params.model_fields if key in given}
            try:
                params = strategy.Params.model_validate(own)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"{where} ({strategy.name}): {first['msg']}") from None
            for key, value in params.model_dump().items():
                extra[key] = value
        return self

    def strategy_arguments(self, *, rule: StabilityRule) -> dict[str, Any]:
        """The chosen strategy's keyword arguments: its parameters from this section, and what `rule` implies."""
        strategy = STRATEGIES[self.strategy]
        extra = self.model_extra or {}
        params = strategy.Params.model_validate(
            {k: extra[k] for k in strategy.Params.model_fields if k in extra}
        )
        return params.arguments(rule=rule)


class PrecomputedEnsembleRegressor(RegressorMixin, BaseEstimator):
    """A scikit-learn regressor whose predictions are the ensemble's precomputed E_hull mean and std.

    Column 0 of `X` selects the candidate (its index into `mean`/`std`); other columns are ignored.

    Args:
        mean: (n,) ensemble-mean energy above hull, eV/atom.
        std: (n,) ensemble standard deviation of the energy above hull (equal to the energy std), eV/atom.
    """

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> None:
        self.mean = mean
        self.std = std

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> PrecomputedEnsembleRegressor:
        """Nothing to learn: the emulator was trained elsewhere. Checks the arrays and marks the model fitted."""
        if self.mean is None or self.std is None:
            raise AcquisitionError("PrecomputedEnsembleRegressor needs mean and std arrays; pass both")
        self.mean_ = np.asarray(self.mean, dtype=float).reshape(-1)
        self.std_ = np.asarray(self.std, dtype=float).reshape(-1)
        if self.mean_.shape != self.std_.shape:
            raise AcquisitionError(
                f"mean has {self.mean_.size} values but std has {self.std_.size}; pass equal lengths"
            )
        self.n_features_in_ = np.asarray(X).shape[1] if X is not None and np.ndim(X) == 2 else 1
        return self

    def _rows(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "mean_"):
            self.fit(np.asarray(X))
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] < 1:
            raise AcquisitionError("candidate matrix must be 2-D with the candidate index in column 0")
        rows = X[:, 0].astype(int)
        if rows.size and (rows.min() < 0 or rows.max() >= self.mean_.size):
            raise AcquisitionError(
                f"candidate index out of range 0..{self.mean_.size - 1}; build X with candidate_matrix"
            )
        return rows

    def predict(self, X: np.ndarray, return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Mean E_hull (eV/atom) of the candidates in `X`; with `return_std`, also their std (eV/atom)."""
        rows = self._rows(X)
        if return_std:
            return self.mean_[rows], self.std_[rows]
        return self.mean_[rows]


# --- features -----------------------------------------------------------------------------------------------------


def structure_features(structures: Sequence[Structure]) -> np.ndarray:
    """Cheap descriptors for batch diversity: composition fractions plus simple structural numbers.

    Columns: atomic fraction of elements Z = 1..103, then volume per atom / 20 Å^3, density / 5 g cm^-3,
    log10(number of sites), sorted lattice-length ratios (a/c, b/c) and |cos| of the three lattice angles.
    Scaled so that every column is of order 1. No symmetry analysis, so thousands of structures take well under
    a second.

    Returns:
        (n, 103 + 8) float array.
    """
    feats = np.zeros((len(structures), _N_ELEMENTS + 8))
    for i, s in enumerate(structures):
        for el, frac in s.composition.fractional_composition.items():
            z = el.Z
            if z > _N_ELEMENTS:
                raise AcquisitionError(
                    f"element {el} (Z={z}) is outside the supported range Z <= {_N_ELEMENTS}"
                )
            feats[i, z - 1] = frac
        lengths = np.sort(np.asarray(s.lattice.abc))
        angles = np.radians(np.asarray(s.lattice.angles))
        feats[i, _N_ELEMENTS:] = [
            s.volume / len(s) / 20.0,
            _density(s) / 5.0,
            np.log10(len(s)),
            lengths[0] / lengths[2],
            lengths[1] / lengths[2],
            *np.abs(np.cos(angles)),
        ]
    return feats


def _density(structure: Structure) -> float:
    """Mass density in g/cm^3 (pymatgen's `Structure.density` goes through its unit machinery, ~1 ms each)."""
    mass_amu = sum(float(el.atomic_mass) * amt for el, amt in structure.composition.items())
    return mass_amu * _AMU_G_PER_CM3_A3 / structure.volume


def candidate_matrix(n_candidates: int, features: np.ndarray | None = None) -> np.ndarray:
    """The `X` that modAL sees: candidate index in column 0, diversity features (if any) after it."""
    index = np.arange(n_candidates, dtype=float).reshape(-1, 1)
    if features is None:
        return index
    features = np.asarray(features, dtype=float)
    if features.ndim != 2 or features.shape[0] != n_candidates:
        raise AcquisitionError(
            f"features must have shape ({n_candidates}, k), got {features.shape}; one row per candidate"
        )
    return np.hstack([index, features])


def _weighted_features(X: np.ndarray, structure_weight: float) -> np.ndarray:
    feats = np.array(X[:, 1:], dtype=float)
    if feats.shape[1] == _N_ELEMENTS + 8:
        feats[:, _N_ELEMENTS:] *= structure_weight
    return feats


# --- selection ----------------------------------------------------------------------------------------------------


def _scaled(utility: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(utility)), float(np.max(utility))
    if hi - lo <= 0.0:
        return np.ones_like(utility)
    return (utility - lo) / (hi - lo)


def _select(
    utility: np.ndarray,
    X: np.ndarray,
    n_instances: int,
    *,
    groups: Sequence[Any] | None = None,
    max_per_group: int | None = None,
    similarity_penalty: float = 0.0,
    structure_weight: float = 1.0,
    labelled_features: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    n = utility.shape[0]
    n_instances = min(int(n_instances), n)
    use_features = similarity_penalty > 0.0 and X.shape[1] > 1
    if groups is None and not use_features:
        # modAL's own top-k; argpartition order is arbitrary, so rank it for a reproducible, best-first list.
        idx, _ = multi_argmax(utility, n_instances=n_instances)
        idx = idx[np.argsort(-utility[idx], kind="stable")]
        return idx, utility[idx]
    if groups is not None and len(groups) != n:
        raise AcquisitionError(f"got {len(groups)} formulas for {n} candidates; pass one per candidate")
    scaled = _scaled(utility)
    feats = _weighted_features(X, structure_weight) if use_features else None
    nearest = np.full(n, np.inf)
    if use_features and labelled_features is not None and len(labelled_features):
        lab = np.asarray(labelled_features, dtype=float)
        if lab.ndim != 2 or lab.shape[1] != X.shape[1] - 1:
            raise AcquisitionError(
                f"labelled features have shape {lab.shape} but candidates have {X.shape[1] - 1} feature columns; "
                "compute both with structure_features"
            )
        if lab.shape[1] == _N_ELEMENTS + 8:
            lab = lab.copy()
            lab[:, _N_ELEMENTS:] *= structure_weight
        nearest = pairwise_distances(feats, lab).min(axis=1)
    available = np.ones(n, dtype=bool)
    # Candidates of a formula that reached the cap: picked only when no uncapped candidate is left.
    capped = np.zeros(n, dtype=bool)
    # Integer codes so that capping a formula is one vectorised comparison.
    codes = (
        None if groups is None else np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    )
    per_group: dict[int, int] = {}
    picked: list[int] = []
    for _ in range(n_instances):
        score = scaled - similarity_penalty * (1.0 / (1.0 + nearest)) if use_features else scaled.copy()
        score[~available] = -np.inf
        if np.any(available & ~capped):
            score[capped] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        available[best] = False
        if codes is not None:
            code = int(codes[best])
            per_group[code] = per_group.get(code, 0) + 1
            if max_per_group is not None and per_group[code] >= max_per_group:
                capped |= codes == code
        if use_features:
            d = pairwise_distances(feats, feats[best : best + 1]).reshape(-1)
            nearest = np.minimum(nearest, d)
    idx = np.asarray(picked, dtype=int)
    return idx, utility[idx]


def _predict(learner: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = learner.predict(X, return_std=True)
    return np.asarray(mean, dtype=float).reshape(-1), np.maximum(
        np.asarray(std, dtype=float).reshape(-1), _MIN_STD
    )


# --- strategies (modAL form) --------------------------------------------------------------------------------------


def max_std(
    learner: Any, X: np.ndarray, n_instances: int = 1, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Committee disagreement: the candidates whose ensemble std of E_hull is largest (pure exploration)."""
    # modAL ranks the whole pool for us; scatter its answer back into one utility per row.
    idx, values = max_std_sampling(learner, X, n_instances=X.shape[0])
    utility = np.empty(X.shape[0])
    utility[np.asarray(idx)] = np.asarray(values, dtype=float).reshape(-1)
    return _select(utility, X, n_instances, **kwargs)


def p_stable(
    learner: Any, X: np.ndarray, n_instances: int = 1, *, threshold: float, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of being a hit, P(E_hull <= threshold) = Φ((threshold − μ) / σ) under the ensemble's Gaussian.

    The loop passes the campaign's hit threshold (`StabilityRule.hit_threshold`, eV/atom).

    Computed with modAL's probability-of-improvement on the negated target: PI(−μ, σ, −threshold, 0).
    """
    mean, std = _predict(learner, X)
    utility = np.asarray(PI(-mean, std, -threshold, 0.0), dtype=float)
    return _select(utility, X, n_instances, **kwargs)


def expected_improvement(
    learner: Any, X: np.ndarray, n_instances: int = 1, *, threshold: float, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Expected depth below the hit threshold, E[max(0, threshold − E_hull)] (eV/atom), under the ensemble's Gaussian.

    Targets the same threshold as `p_stable` but does not saturate: where several candidates are almost surely
    hits, P(hit) is ≈ 1 for all of them and the diversity penalty decides, while the expected depth still ranks the
    ones predicted lower (or less certain) first. Computed with modAL's expected improvement on the negated target:
    EI(−μ, σ, −threshold, 0).
    """
    mean, std = _predict(learner, X)
    utility = np.asarray(EI(-mean, std, -threshold, 0.0), dtype=float)
    return _select(utility, X, n_instances, **kwargs)


def ground_state_probability(
    mean: np.ndarray,
    std: np.ndarray,
    *,
    groups: Sequence[Any],
    threshold: float,
    n_samples: int = 4000,
    seed: int = 0,
) -> np.ndarray:
    """P(a candidate is a hit and the lowest of its formula's candidates) under independent Gaussians (Monte Carlo).

    Candidates of one reduced formula compete for one ground state: the energy of each is drawn from N(mean, std)
    jointly with the others of its formula, and a draw counts for the candidate when it is the lowest of the formula
    and within `threshold` of the hull. The probabilities of one formula's candidates sum to at most 1, so a formula
    whose candidates all lie far below the hull no longer fills a batch with near-certain, interchangeable picks.

    Args:
        mean: (n,) E_hull means, eV/atom.
        std: (n,) E_hull standard deviations, eV/atom (> 0).
        groups: n formula labels.
        threshold: Hit threshold on E_hull, eV/atom.
        n_samples: Monte Carlo draws per formula; the probabilities' standard error is at most 0.5/sqrt(n_samples).
        seed: Seed of the draws (the ranking is reproducible).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray([str(g) for g in groups])
    out = np.zeros(mean.shape[0])
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        draws = mean[idx] + std[idx] * rng.standard_normal((n_samples, idx.size))
        lowest = np.argmin(draws, axis=1)
        hit = draws[np.arange(n_samples), lowest] <= threshold
        out[idx] = np.bincount(lowest[hit], minlength=idx.size) / n_samples
    return out


def p_ground_state(
    learner: Any, X: np.ndarray, n_instances: int = 1, *, threshold: float, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of being a new ground state: a hit (E_hull <= threshold) and the lowest of the candidates of
    its formula (`ground_state_probability`). Ranks like `p_stable` where candidates do not compete, and prefers the
    likely lowest polymorph where many are surely below the hull (where `p_stable` saturates at 1).

    Without formulas (no `groups`), every candidate is its own formula and this is `p_stable`.
    """
    mean, std = _predict(learner, X)
    groups = kwargs.get("groups")
    utility = ground_state_probability(
        mean, std, groups=range(mean.size) if groups is None else groups, threshold=threshold
    )
    # Two candidates with no chance at all still rank by how close they come: P(hit) breaks the tie.
    utility = utility + 1e-9 * np.asarray(PI(-mean, std, -threshold, 0.0), dtype=float)
    return _select(utility, X, n_instances, **kwargs)


def ucb(
    learner: Any, X: np.ndarray, n_instances: int = 1, *, kappa: float = 1.0, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Optimistic stability: rank by −(μ − κσ), modAL's UCB on the negated E_hull."""
    mean, std = _predict(learner, X)
    utility = np.asarray(UCB(-mean, std, kappa), dtype=float)
    return _select(utility, X, n_instances, **kwargs)


def greedy(learner: Any, X: np.ndarray, n_instances: int = 1, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: lowest predicted E_hull first (pure exploitation)."""
    mean, _ = _predict(learner, X)
    return _select(-mean, X, n_instances, **kwargs)


def random(
    learner: Any, X: np.ndarray, n_instances: int = 1, *, seed: int = 0, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: uniformly random candidates (seeded), diversity rules still applied."""
    utility = np.random.default_rng(seed).random(X.shape[0])
    return _select(utility, X, n_instances, **kwargs)


StrategyFunction = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its modAL-form function and the model of its own parameters."""

    name: str
    function: StrategyFunction
    Params: type[StrategyParams]


class PStableParams(StrategyParams):
    """`p_stable` and `expected_improvement` have no settings of their own: their threshold is the campaign's hit
    threshold."""

    def arguments(self, *, rule: StabilityRule) -> dict[str, Any]:
        return {"threshold": rule.hit_threshold}


class UCBParams(StrategyParams):
    """Settings of `ucb`.

    Attributes:
        kappa: Exploration weight: candidates rank by -(mean - kappa * std).
    """

    kappa: float = Field(default=1.0, ge=0.0)


class RandomParams(StrategyParams):
    """Settings of the `random` baseline.

    Attributes:
        seed: Seed of the random draw.
    """

    seed: int = 0


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(
    name: str, function: StrategyFunction, *, params: type[StrategyParams] = StrategyParams
) -> None:
    """Make a modAL-form strategy available by name.

    Args:
        name: The `acquisition.strategy` value that selects it.
        function: `function(learner, X, n_instances, **arguments, **diversity) -> (indices, utilities)`; pass the
            diversity keyword arguments on to `_select` (see the built-ins).
        params: Its parameter model; the fields become valid keys of the `acquisition:` section and
            `params.arguments(rule=...)` becomes the strategy's keyword arguments.
    """
    STRATEGIES[name] = Strategy(name=name, function=function, Params=params)


register_strategy("max_std", max_std)
register_strategy("p_stable", p_stable, params=PStableParams)
register_strategy("expected_improvement", expected_improvement, params=PStableParams)
register_strategy("p_ground_state", p_ground_state, params=PStableParams)
register_strategy("ucb", ucb, params=UCBParams)
register_strategy("greedy", greedy)
register_strategy("random", random, params=RandomParams)


def strategy_names() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(STRATEGIES)


def get_strategy(name: str) -> StrategyFunction:
    """The strategy function registered as `name` (raises `AcquisitionError` with the valid names otherwise)."""
    try:
        return STRATEGIES[name].function
    except KeyError:
        raise AcquisitionError(
            f"unknown acquisition strategy {name!r}; choose one of: {', '.join(strategy_names())}"
        ) from None


# --- the call the loop makes --------------------------------------------------------------------------------------


@dataclass
class AcquisitionResult:
    """The round's picks.

    Attributes:
        indices: Candidate indices (into the arrays passed in), best first; at most `budget` of them.
        utilities: Strategy utility of each pick (before the diversity penalty; higher is better).
        strategy: Strategy name used.
        n_pool: Candidates offered.
        n_skipped: Candidates left out because their mean or std was not finite (e.g. no hull reference yet).
    """

    indices: np.ndarray
    utilities: np.ndarray
    strategy: str
    n_pool: int
    n_skipped: int


def select_queries(
    *,
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    config: AcquisitionConfig,
    rule: StabilityRule,
    features: np.ndarray | None = None,
    formulas: Sequence[str] | None = None,
    labelled_features: np.ndarray | None = None,
) -> AcquisitionResult:
    """Choose this round's oracle queries with modAL's `ActiveLearner.query` under `config.budget`.

    Args:
        mean: (n,) ensemble-mean E_hull of each candidate, eV/atom.
        std: (n,) ensemble std of E_hull (= energy std with the hull fixed), eV/atom.
        config: Strategy, budget, kappa, diversity and seed.
        rule: The campaign's stability rule; `p_stable` targets P(E_hull <= rule.hit_threshold).
        features: (n, k) diversity features (e.g. `structure_features`); None disables the similarity penalty.
        formulas: n reduced formulas for the per-formula cap; None disables the cap.
        labelled_features: (m, k) features of structures labelled in earlier rounds, so picks also avoid them.

    Returns:
        An `AcquisitionResult`; candidates with a non-finite mean or std are never picked.

    Raises:
        AcquisitionError: Lengths differ, or a negative std.
    """
    mean_arr = np.asarray(mean, dtype=float).reshape(-1)
    std_arr = np.asarray(std, dtype=float).reshape(-1)
    n = mean_arr.size
    if std_arr.size != n:
        raise AcquisitionError(f"got {n} means but {std_arr.size} stds; pass one of each per candidate")
    if formulas is not None and len(formulas) != n:
        raise AcquisitionError(f"got {len(formulas)} formulas for {n} candidates; pass one per candidate")
    finite = np.isfinite(mean_arr) & np.isfinite(std_arr)
    if np.any(std_arr[finite] < 0):
        raise AcquisitionError(
            "ensemble std must be >= 0 eV/atom; pass standard deviations, not variances or signs"
        )
    pool = np.flatnonzero(finite)
    strategy = get_strategy(config.strategy)
    empty = AcquisitionResult(
        indices=np.zeros(0, dtype=int),
        utilities=np.zeros(0),
        strategy=config.strategy,
        n_pool=n,
        n_skipped=int(n - pool.size),
    )
    if pool.size == 0:
        return empty
    X = candidate_matrix(pool.size, None if features is None else np.asarray(features, dtype=float)[pool])
    learner = ActiveLearner(
        estimator=PrecomputedEnsembleRegressor(mean=mean_arr[pool], std=std_arr[pool]),
        query_strategy=strategy,
    )
    div = config.diversity
    kwargs: dict[str, Any] = {
        "groups": None if formulas is None else [formulas[i] for i in pool],
        "max_per_group": div.max_per_formula,
        "similarity_penalty": div.similarity_penalty if features is not None else 0.0,
        "structure_weight": div.structure_weight,
        "labelled_features": labelled_features,
    }
    kwargs.update(config.strategy_arguments(rule=rule))
    rows, _, utilities = learner.query(
        X, return_metrics=True, n_instances=min(config.budget, pool.size), **kwargs
    )
    rows = np.asarray(rows, dtype=int).reshape(-1)
    return AcquisitionResult(
        indices=pool[rows],
        utilities=np.asarray(utilities, dtype=float),
        strategy=config.strategy,
        n_pool=n,
        n_skipped=empty.n_skipped,
    )


def select_structures(
    *,
    structures: Sequence[Structure],
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    config: AcquisitionConfig,
    rule: StabilityRule,
    labelled: Sequence[Structure] = (),
) -> AcquisitionResult:
    """`select_queries` with features and reduced formulas computed from the candidate structures.

    Args:
        structures: n candidates (emulator-relaxed), aligned with `mean` and `std`.
        mean: (n,) ensemble-mean E_hull, eV/atom.
        std: (n,) ensemble std of E_hull, eV/atom.
        config: Acquisition settings.
        rule: The campaign's stability rule (what a hit is).
        labelled: Structures labelled in earlier rounds (picks avoid near-copies of them too).
    """
    if len(structures) != np.asarray(mean).size:
        raise AcquisitionError(
            f"got {len(structures)} structures but {np.asarray(mean).size} means; pass one per structure"
        )
    return select_queries(
        mean=mean,
        std=std,
        config=config,
        rule=rule,
        features=structure_features(structures),
        formulas=[s.composition.reduced_formula for s in structures],
        labelled_features=structure_features(labelled) if len(labelled) else None,
    )


def one_per_crystal(
    candidates: Sequence[Structure], *, labelled: Iterable[tuple[str, Callable[[], Structure]]]
) -> list[int]:
    """Positions of the candidates to offer: each crystal once, and none already labelled.

    Candidates the funnel saw as different can relax onto one crystal: in the Li-Co-O pool 17 diffusion samples
    ended as one LiCoO2 under the oracle. A second label of a crystal is a call spent on no new information
    (`loop.runtime.labelling.mark_duplicates` flags it as a duplicate afterwards), so a candidate is dropped when its
    relaxed structure is the crystal (pymatgen `StructureMatcher` inside the funnel's formula buckets,
    `loop.science.funnel.KnownIndex`) of a labelled structure or of a candidate kept before it.

    Args:
        candidates: Relaxed structures, in order of preference (the first of a crystal is kept).
        labelled: (reduced formula, loader) of each labelled structure: inputs and oracle-relaxed final structures.
    """
    if not candidates:
        return []
    # torch (~3 s) comes with the generator room: imported only when there are candidates.
    from loop.science.funnel import KnownIndex

    index = KnownIndex()
    for formula, loader in labelled:
        index.add_lazy(id="labelled", formula=formula, loader=loader)
    kept = []
    for i, structure in enumerate(candidates):
        if index.find(structure, seed=False) is None:
            index.add(id=str(i), structure=structure)
            kept.append(i)
    return kept
