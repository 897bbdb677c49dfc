"""Calibration rules compared prospectively on recorded held-out pairs (no retraining needed).

A held-out pair is (raw ensemble mean, raw member spread, oracle label, round) for a label the model had not trained
on. The campaign refits its calibration after every round on all pairs so far (recency-weighted), shrunk toward the
previous fit, and uses it on the next round's candidates. This script replays that, for each rule, prior weight
and recency half-life (none: every pair the same), and scores each round's pairs with the calibration fitted on
earlier rounds only: the coverage a campaign would have seen. The fine-tuned variant fits no bias, as in a
campaign (`emulator.update`); the refit variant's leave-one-out pairs are not recorded, so they are not replayed.

Inputs: any number of
* `update.json` files a campaign writes beside each emulator checkpoint (`<workdir>/checkpoints/.../update.json`),
* `--json` outputs of `benchmarks.emulator_update` (their "pairs" entry),
each contributing the pairs of one variant (`--variant`, default the refit-only one) as one independent series.

Usage:
    python -m benchmarks.calibration_rules FILE [FILE ...] [--variant refit]

Units: eV/atom.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from emulator.calibration import (
    RECENCY_HALF_LIFE,
    Calibration,
    HeldOutPairs,
    calibration_metrics,
    fit_calibration,
)

RULES = [
    (rule, weight, half_life)
    for rule in ("quantile", "floor")
    for weight in (8.0, 0.0)
    for half_life in (None, RECENCY_HALF_LIFE, 1.0)
]
"""(rule, prior weight in pairs, recency half-life in rounds or None)."""


def load_series(path: Path, *, variant: str) -> list[HeldOutPairs]:
    """The held-out pair series of `variant` in a campaign's update.json or a replay's JSON (one per design)."""
    data = json.loads(path.read_text())
    if "history" in data:
        return [HeldOutPairs.from_dict(data["history"][variant])] if variant in data["history"] else []
    return [
        HeldOutPairs.from_dict(d["pairs"][variant]) for d in data.values() if variant in d.get("pairs", {})
    ]


def prospective(
    series: HeldOutPairs, *, rule: str, prior_weight: float, half_life: float | None, fit_bias: bool
) -> dict[str, np.ndarray]:
    """Calibrated (predicted, std, target) of every round scored with the fit of the rounds before it."""
    rounds = np.asarray(series.round)
    out: dict[str, list[np.ndarray]] = {"predicted": [], "std": [], "target": []}
    cal = Calibration()
    seen = HeldOutPairs()
    for r in sorted(set(rounds.tolist())):
        idx = np.flatnonzero(rounds == r)
        batch = HeldOutPairs(
            predicted=[series.predicted[i] for i in idx],
            std=[series.std[i] for i in idx],
            target=[series.target[i] for i in idx],
            round=[r] * len(idx),
        )
        if len(seen):  # the first round has no earlier fit: not scored
            out["predicted"].append(np.asarray(batch.predicted) + cal.bias)
            out["std"].append(cal.std(batch.std))
            out["target"].append(np.asarray(batch.target))
        seen = seen.extend(batch)
        cal = fit_calibration(
            seen,
            previous=cal,
            prior_weight=prior_weight,
            rule=rule,  # type: ignore[arg-type]
            half_life=half_life,
            fit_bias=fit_bias,
        )
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--variant", default="refit")
    args = parser.parse_args()
    series = [s for f in args.files for s in load_series(f, variant=args.variant)]
    print(f"{len(series)} series, {sum(len(s) for s in series)} held-out pairs ({args.variant})")
    print(
        "| rule | prior weight | half-life (rounds) | scored pairs | MAE | Spearman(σ, \\|err\\|) | within 1σ "
        "| within 2σ | median σ/\\|err\\| | mean NLL |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rule, weight, half_life in RULES:
        parts = [
            prospective(
                s, rule=rule, prior_weight=weight, half_life=half_life, fit_bias=args.variant != "fine_tuned"
            )
            for s in series
        ]
        pred, std, target = (np.concatenate([p[k] for p in parts]) for k in ("predicted", "std", "target"))
        m = calibration_metrics(predicted=pred, std=std, target=target)
        var = np.maximum(std, 1e-6) ** 2
        nll = float(np.mean(0.5 * np.log(2 * np.pi * var) + (target - pred) ** 2 / (2 * var)))
        ratio = float(np.median(std / np.maximum(np.abs(target - pred), 1e-6)))
        print(
            f"| {rule} | {weight:g} | {'none' if half_life is None else f'{half_life:g}'} | {int(m['n'])} | "
            f"{m['mae']:.4f} | {m['spearman_std_abs_error']:.2f} | {m['frac_within_1sigma']:.2f} | "
            f"{m['frac_within_2sigma']:.2f} | {ratio:.2f} | {nll:.2f} |"
        )


if __name__ == "__main__":
    main()
