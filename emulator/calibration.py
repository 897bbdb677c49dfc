"""How well the ensemble spread predicts its own error on held-out labels.

Units: energies eV/atom.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


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
        "mae": float(error.mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "mean_std": float(std.mean()),
        "spearman_std_abs_error": rho,
        "frac_within_1sigma": float(np.mean(error <= std)),
        "frac_within_2sigma": float(np.mean(error <= 2 * std)),
    }
