"""How well the ensemble spread predicts its own error, and the bias/scale fit that makes it honest.

A held-out pair is (prediction, raw member spread, oracle label) for a structure the model had not trained on when
it predicted it. Calibration is fitted on *all* such pairs gathered so far, shrunk toward the previous fit, so a
round with four new labels nudges it instead of replacing it.

Units: energies eV/atom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import spearmanr

ONE_SIGMA = 0.6827
"""Fraction of a normal distribution within ±1σ."""
MIN_STD = 1e-6
"""eV/atom; raw spreads below this count as this (a degenerate ensemble must not give infinite ratios)."""


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
    """

    predicted: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    target: list[float] = field(default_factory=list)
    round: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.target)

    def extend(self, other: HeldOutPairs) -> HeldOutPairs:
        """A new set holding these pairs followed by `other`'s."""
        return HeldOutPairs(
            predicted=[*self.predicted, *other.predicted],
            std=[*self.std, *other.std],
            target=[*self.target, *other.target],
            round=[*self.round, *other.round],
        )

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> HeldOutPairs:
        return cls(**{k: list(v) for k, v in data.items()})

    def errors(self) -> np.ndarray:
        """Signed errors target - predicted, eV/atom."""
        return np.asarray(self.target, float) - np.asarray(self.predicted, float)


@dataclass(frozen=True)
class Calibration:
    """Map from the raw ensemble to calibrated predictions: mean + bias, std × scale.

    Attributes:
        bias: Added to every predicted energy per atom, eV/atom (the mean held-out error, shrunk).
        scale: Multiplies every reported std (so ≈68 % of held-out errors fall within 1σ, shrunk).
        n_pairs: Held-out pairs behind this fit.
    """

    bias: float = 0.0
    scale: float = 1.0
    n_pairs: int = 0

    def to_dict(self) -> dict[str, float]:
        return {"bias": self.bias, "scale": self.scale, "n_pairs": float(self.n_pairs)}

    @classmethod
    def from_dict(cls, data: dict[str, float] | None) -> Calibration:
        if not data:
            return cls()
        return cls(bias=float(data["bias"]), scale=float(data["scale"]), n_pairs=int(data["n_pairs"]))

    def apply(self, pairs: HeldOutPairs) -> dict[str, float]:
        """`calibration_metrics` of these pairs under this calibration."""
        return calibration_metrics(
            predicted=np.asarray(pairs.predicted, float) + self.bias,
            std=self.scale * np.maximum(np.asarray(pairs.std, float), MIN_STD),
            target=np.asarray(pairs.target, float),
        )


def fit_calibration(
    pairs: HeldOutPairs, *, previous: Calibration, prior_weight: float, fit_bias: bool = True
) -> Calibration:
    """Fit bias and scale on all held-out pairs, shrunk toward `previous`.

    The bias is the median signed error (robust to one wild candidate); the scale is the 68.3 % quantile of
    |error - bias| / raw std, i.e. the multiplier that puts 68.3 % of the pairs within 1σ. Each is shrunk toward the
    previous fit as if the previous fit were `prior_weight` pairs (the scale in log space, so it stays positive;
    the first scale fit, when `previous` rests on no pairs, is not shrunk).

    Args:
        pairs: Every held-out pair gathered so far.
        previous: The fit in use (the identity calibration at first).
        prior_weight: Pseudo-count of the previous fit, in pairs (0 = no shrinkage).
        fit_bias: Fit the bias (else keep it at 0).

    Returns:
        The new calibration (the previous one when there are no pairs).
    """
    n = len(pairs)
    if n == 0:
        return previous
    errors = pairs.errors()
    bias_fit = float(np.median(errors)) if fit_bias else 0.0
    ratio = np.abs(errors - bias_fit) / np.maximum(np.asarray(pairs.std, float), MIN_STD)
    scale_fit = max(float(np.quantile(ratio, ONE_SIGMA)), 1e-3)
    w = n / (n + prior_weight)
    bias = (1 - w) * previous.bias + w * bias_fit if fit_bias else 0.0
    # The identity is a fine prior for the bias but not for the scale (a raw spread may be off by 10x), so the
    # first fit of the scale is taken as is.
    w_scale = w if previous.n_pairs > 0 else 1.0
    scale = float(np.exp((1 - w_scale) * np.log(previous.scale) + w_scale * np.log(scale_fit)))
    return Calibration(bias=bias, scale=scale, n_pairs=n)
