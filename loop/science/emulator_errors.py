"""How far the emulator was from the oracle on labels it had not trained on: the one definition that the update
stage records, MLflow logs, `matloop status` prints, the science report tabulates and the parity plot titles.

The figures are `emulator.calibration.calibration_metrics` (the emulator room's definition, which its own
calibration uses) under the campaign's names; non-finite pairs are left out everywhere.

Units: eV/atom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from emulator.calibration import calibration_metrics

MIN_PAIRS_FOR_RANK = 3
"""A rank correlation of σ against |error| from fewer pairs says nothing, so it is left out."""


def finite_pairs(
    predicted: Sequence[float], std: Sequence[float] | None, oracle: Sequence[float]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The pairs where both the prediction and the oracle energy are finite (eV/atom), in order."""
    pred = np.asarray(predicted, dtype=float).reshape(-1)
    ref = np.asarray(oracle, dtype=float).reshape(-1)
    spread = None if std is None else np.asarray(std, dtype=float).reshape(-1)
    keep = np.isfinite(pred) & np.isfinite(ref)
    return pred[keep], None if spread is None else spread[keep], ref[keep]


def emulator_metrics(pairs: Sequence[tuple[float, float, float]]) -> dict[str, float]:
    """Emulator vs oracle on new labels, before retraining: (predicted, std, oracle) energies per atom, eV/atom.

    Returns:
        `emulator_mae` (eV/atom), `emulator_within_1sigma`, `emulator_within_2sigma`, `emulator_n_new_labels`
        and, from at least `MIN_PAIRS_FOR_RANK` pairs with some spread, `emulator_spearman_std_err`; empty when
        no finite pair is given.
    """
    if not pairs:
        return {}
    pred, std, true = finite_pairs(*zip(*pairs, strict=True))
    if not len(pred):
        return {}
    m = calibration_metrics(predicted=pred, std=std, target=true)
    out = {
        "emulator_mae": m["mae"],
        "emulator_within_1sigma": m["frac_within_1sigma"],
        "emulator_within_2sigma": m["frac_within_2sigma"],
        "emulator_n_new_labels": m["n"],
    }
    if len(pred) >= MIN_PAIRS_FOR_RANK and not math.isnan(m["spearman_std_abs_error"]):
        out["emulator_spearman_std_err"] = m["spearman_std_abs_error"]
    return out


__all__ = ["MIN_PAIRS_FOR_RANK", "emulator_metrics", "finite_pairs"]
