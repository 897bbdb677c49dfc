"""How well the ensemble spread predicts its own error, and the bias/scale fit that makes it honest.

A held-out pair is (prediction, raw member spread, oracle label) for a structure the model had not trained on when
it predicted it. Calibration is fitted on all such pairs gathered so far, each round's pairs weighted by a quarter
for every newer round (`RECENCY_HALF_LIFE`, the weighting that also chooses which emulator variant is deployed), and
shrunk toward the previous fit, so a round with four new labels nudges it instead of replacing it. Without the
recency weighting, the errors of a model that retraining has since corrected set σ for rounds: on Na-Al-O with every
compound withheld, round 1's oxides were predicted 0.3-0.8 eV/atom too low at a raw spread of 0.04, retraining
brought the errors below 0.04 at the same spread, and the fine-tune's σ scale stayed 14.6 and 9.3 in rounds 3 and 4
(σ 0.4-0.9 eV/atom; BENCHMARKS.md); weighted, the same pairs give 1.7 and 0.7.

Units: energies eV/atom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import minimize
from scipy.stats import spearmanr

ONE_SIGMA = 0.6827
"""Fraction of a normal distribution within ±1σ."""
MIN_STD = 1e-6
"""eV/atom; raw spreads below this count as this (a degenerate ensemble must not give infinite ratios)."""
RECENCY_HALF_LIFE = 0.5
"""Rounds: a round's held-out pairs weigh 0.5 ** (rounds since / this), a quarter per newer round."""


def recency_weights(
    rounds: np.ndarray | list[int], *, half_life: float | None = RECENCY_HALF_LIFE
) -> np.ndarray:
    """Weight of each pair by its round: 1 for the newest round, 0.5 ** ((newest - round) / half_life) before it
    (all ones when `half_life` is None)."""
    rounds = np.asarray(rounds, dtype=float)
    if half_life is None or not len(rounds):
        return np.ones(len(rounds))
    return 0.5 ** ((rounds.max() - rounds) / half_life)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The `q` quantile of weighted values, interpolated linearly between them (numpy's default rule when every
    weight is equal)."""
    order = np.argsort(values, kind="stable")
    v, w = np.asarray(values, float)[order], np.asarray(weights, float)[order]
    if len(v) == 1:
        return float(v[0])
    # Each value sits at the centre of its share of the weight, rescaled so the smallest is at 0 and the largest
    # at 1: with equal weights that is (i - 1) / (n - 1), numpy's positions.
    centre = np.cumsum(w) - w / 2
    position = (centre - centre[0]) / (centre[-1] - centre[0])
    return float(np.interp(q, position, v))


def calibration_metrics(*, predicted: np.ndarray, std: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Energy-per-atom calibration figures.

    Args:
        predicted: (n,) ensemble-mean energy, eV/atom.
        std: (n,) ensemble standard deviation, eV/atom.
        target: (n,) oracle energy, eV/atom.

    Returns:
        `n`, `mae` (eV/atom), `rmse` (eV/atom), `mean_std` (eV/atom), `spearman_std_abs_error` (NaN when either
        side is constant), `frac_within_1sigma`, `frac_within_2sigma`.
    """
    error = np.abs(np.asarray(predicted, float) - np.asarray(target, float))
    std = np.asarray(std, float)
    if len(error) > 1 and np.ptp(error) > 0 and np.ptp(std) > 0:
        rho = float(spearmanr(std, error).statistic)
    else:
        rho = float("nan")
    return {
        "n": float(len(error)),
        "mae": float(error.mean()) if len(error) else float("nan"),
        "rmse": float(np.sqrt((error**2).mean())) if len(error) else float("nan"),
        "mean_std": float(std.mean()) if len(error) else float("nan"),
        "spearman_std_abs_error": rho,
        "frac_within_1sigma": float(np.mean(error <= std)) if len(error) else float("nan"),
        "frac_within_2sigma": float(np.mean(error <= 2 * std)) if len(error) else float("nan"),
    }


@dataclass
class HeldOutPairs:
    """Predictions made before the model trained on the labels, with the raw (uncalibrated) spread.

    Attributes:
        predicted: Raw ensemble-mean energy per atom, eV/atom (no calibration bias applied).
        std: Raw member spread, eV/atom (no calibration scale applied).
        target: Oracle energy per atom, eV/atom.
        round: Campaign round in which each label arrived.
        cal_predicted: The calibrated mean the model gave when it predicted the pair, eV/atom (NaN when the
            calibration in use then is unknown: leave-one-out pairs, pairs saved before this was kept).
        cal_std: The calibrated std it gave then, eV/atom (NaN likewise).
    """

    predicted: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    target: list[float] = field(default_factory=list)
    round: list[int] = field(default_factory=list)
    cal_predicted: list[float] = field(default_factory=list)
    cal_std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.target)
        for name in ("cal_predicted", "cal_std"):
            values = getattr(self, name)
            setattr(self, name, [*values, *[float("nan")] * (n - len(values))])

    def __len__(self) -> int:
        return len(self.target)

    def extend(self, other: HeldOutPairs) -> HeldOutPairs:
        """A new set holding these pairs followed by `other`'s."""
        return HeldOutPairs(
            predicted=[*self.predicted, *other.predicted],
            std=[*self.std, *other.std],
            target=[*self.target, *other.target],
            round=[*self.round, *other.round],
            cal_predicted=[*self.cal_predicted, *other.cal_predicted],
            cal_std=[*self.cal_std, *other.cal_std],
        )

    def nll(self) -> np.ndarray:
        """Gaussian negative log-likelihood of each label under the calibrated mean and std given when it was
        predicted (dimensionless, per pair; NaN where those are unknown).

        A proper score of mean and σ together: an overconfident σ costs (error/σ)², a needlessly wide one log σ,
        so a model cannot win on error alone while its σ misleads the acquisition.
        """
        mean = np.asarray(self.cal_predicted, float)
        std = np.maximum(np.asarray(self.cal_std, float), MIN_STD)
        z = (np.asarray(self.target, float) - mean) / std
        return 0.5 * np.log(2 * np.pi) + np.log(std) + 0.5 * z**2

    def calibrated_metrics(self) -> dict[str, float]:
        """`calibration_metrics` of the calibrated mean and std given when the pairs were predicted."""
        return calibration_metrics(
            predicted=np.asarray(self.cal_predicted, float),
            std=np.maximum(np.asarray(self.cal_std, float), MIN_STD),
            target=np.asarray(self.target, float),
        )

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> HeldOutPairs:
        return cls(**{k: list(v) for k, v in data.items()})

    def errors(self) -> np.ndarray:
        """Signed errors target - predicted, eV/atom."""
        return np.asarray(self.target, float) - np.asarray(self.predicted, float)


CalibrationRule = Literal["quantile", "floor"]
"""How the std map is fitted: "quantile" (scale only: the 68.3 % quantile of |error| / raw std) or "floor" (scale
and an error floor by Gaussian maximum likelihood: std² = (scale · raw)² + floor²)."""


@dataclass(frozen=True)
class Calibration:
    """Map from the raw ensemble to calibrated predictions: mean + bias, std = sqrt((scale · raw)² + floor²).

    Attributes:
        bias: Added to every predicted energy per atom, eV/atom (the median held-out error, shrunk).
        scale: Multiplies every raw std.
        floor: Error the members share and their spread cannot show (a common pretrained backbone, the level of
            theory), eV/atom; added in quadrature to the energy std. 0 under the "quantile" rule.
        n_pairs: Held-out pairs behind this fit.
    """

    bias: float = 0.0
    scale: float = 1.0
    floor: float = 0.0
    n_pairs: int = 0

    def to_dict(self) -> dict[str, float]:
        return {"bias": self.bias, "scale": self.scale, "floor": self.floor, "n_pairs": float(self.n_pairs)}

    @classmethod
    def from_dict(cls, data: dict[str, float] | None) -> Calibration:
        if not data:
            return cls()
        return cls(
            bias=float(data["bias"]),
            scale=float(data["scale"]),
            floor=float(data.get("floor", 0.0)),  # fits saved before the floor existed
            n_pairs=int(data["n_pairs"]),
        )

    def std(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated energy std, eV/atom, from the raw member spread (eV/atom)."""
        raw = np.asarray(raw, float)
        return np.sqrt((self.scale * raw) ** 2 + self.floor**2)

    def stamp(self, pairs: HeldOutPairs) -> HeldOutPairs:
        """The pairs with their calibrated mean and std under this calibration (the one in use when predicted)."""
        return HeldOutPairs(
            predicted=list(pairs.predicted),
            std=list(pairs.std),
            target=list(pairs.target),
            round=list(pairs.round),
            cal_predicted=[float(x) for x in np.asarray(pairs.predicted, float) + self.bias],
            cal_std=[float(x) for x in self.std(pairs.std)],
        )


def _floor_fit(
    residual: np.ndarray, raw: np.ndarray, *, weights: np.ndarray, scale0: float
) -> tuple[float, float]:
    """Weighted Gaussian maximum-likelihood (scale, floor) of residuals whose variance is (scale · raw)² + floor²."""
    raw = np.maximum(raw, MIN_STD)
    r2 = residual**2
    floor0 = max(weighted_quantile(np.abs(residual), weights, 0.5) / 2, 1e-4)

    def nll(theta: np.ndarray) -> float:
        var = (np.exp(theta[0]) * raw) ** 2 + np.exp(theta[1]) ** 2
        return float(np.sum(weights * (np.log(var) + r2 / var)))

    # Bounded: a scale between 1e-3 and 1e3, a floor between 0.1 meV/atom and 1 eV/atom.
    bounds = [(np.log(1e-3), np.log(1e3)), (np.log(1e-4), np.log(1.0))]
    best = minimize(nll, x0=np.log([scale0, floor0]), method="L-BFGS-B", bounds=bounds)
    return float(np.exp(best.x[0])), float(np.exp(best.x[1]))


def fit_calibration(
    pairs: HeldOutPairs,
    *,
    previous: Calibration,
    prior_weight: float,
    fit_bias: bool = True,
    rule: CalibrationRule = "quantile",
    half_life: float | None = RECENCY_HALF_LIFE,
) -> Calibration:
    """Fit bias, scale (and floor) on all held-out pairs, recency-weighted, shrunk toward `previous`.

    Each pair weighs `recency_weights` of its round. The bias is the weighted median signed error (robust to one
    wild candidate). Under "quantile" the scale is the weighted 68.3 % quantile of |error - bias| / raw std, i.e.
    the multiplier that puts 68.3 % of the (weighted) pairs within 1σ, and the floor is 0. Under "floor", scale and
    floor maximise the weighted Gaussian likelihood of the residuals with variance (scale · raw)² + floor². Each is
    shrunk toward the previous fit as if the previous fit were `prior_weight` pairs of the round before the newest
    (so weighted like them), against the pairs' total weight (scale and floor in log space, so they stay positive;
    the first fit, when `previous` rests on no pairs, is not shrunk).

    Args:
        pairs: Every held-out pair gathered so far.
        previous: The fit in use (the identity calibration at first).
        prior_weight: Pseudo-count of the previous fit, in pairs (0 = no shrinkage).
        fit_bias: Fit the bias (else keep it at 0).
        rule: "quantile" or "floor" (see `CalibrationRule`).
        half_life: Recency half-life in rounds (None: every pair weighs the same).

    Returns:
        The new calibration (the previous one when there are no pairs).
    """
    n = len(pairs)
    if n == 0:
        return previous
    errors = pairs.errors()
    raw = np.maximum(np.asarray(pairs.std, float), MIN_STD)
    weights = recency_weights(pairs.round, half_life=half_life)
    bias_fit = weighted_quantile(errors, weights, 0.5) if fit_bias else 0.0
    residual = errors - bias_fit
    scale_fit = max(weighted_quantile(np.abs(residual) / raw, weights, ONE_SIGMA), 1e-3)
    floor_fit = 0.0
    if rule == "floor":
        scale_fit, floor_fit = _floor_fit(residual, raw, weights=weights, scale0=scale_fit)
    # The previous fit rests on earlier rounds: it counts as `prior_weight` pairs one round older than the newest.
    prior = prior_weight * (1.0 if half_life is None else 0.5 ** (1 / half_life))
    w = float(weights.sum()) / (float(weights.sum()) + prior)
    bias = (1 - w) * previous.bias + w * bias_fit if fit_bias else 0.0
    # The identity is a fine prior for the bias but not for the scale (a raw spread may be off by 10x), so the
    # first fit of the scale and floor is taken as is.
    w_first = w if previous.n_pairs > 0 else 1.0

    def shrink(old: float, new: float) -> float:
        if new <= 0:
            return 0.0
        if old <= 0:  # no previous floor to shrink toward (quantile fits, or none yet)
            return new
        return float(np.exp((1 - w_first) * np.log(old) + w_first * np.log(new)))

    return Calibration(
        bias=bias, scale=shrink(previous.scale, scale_fit), floor=shrink(previous.floor, floor_fit), n_pairs=n
    )
