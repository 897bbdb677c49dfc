"""Calibration of ensemble designs on held-out EMT labels: does the spread say where the errors are?

Each design is taken through the same steps on the same data: build (round 0) -> per-element reference refit on
the training labels (`epochs=0`) -> fine-tune (energies, forces, stresses). After each step the energy calibration
is measured on held-out cells: MAE (eV/atom), mean std, Spearman(std, |error|), fraction of errors within 1σ / 2σ,
and k68, the std multiplier that would put 68 % of the errors within 1σ (1 = calibrated as is).
Held-out sets: `held` (same recipe as training: strained ±3 %, rattled fcc metals and L1_2/L1_0 alloys), and
`held+sq80` / `held+sq60` (those plus the same cells compressed to 80 % / 60 % volume: a moderate and a strong
shift away from the training data, relabelled with EMT).

Designs:
    distilled+boot        round-0 heads 1..K-1 re-initialised and distilled from the pretrained head on bootstrap
                          MP resamples; fine-tuning on per-member bootstrap resamples
    bootstrap_only        all heads start as the pretrained head; members differ only by their bootstrap
                          resamples during fine-tuning
    distilled_noboot      distilled round-0 heads, fine-tuned on the full data, no resampling (the default)

Run by hand (several minutes; note the load, the machine is shared):
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.emulator_calibration [--members 4] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

from benchmarks.lib.timing import load_average

DESIGNS = {
    "distilled+boot": {"design": "distilled_heads", "bootstrap": True},
    "bootstrap_only": {"design": "bootstrap_only", "bootstrap": True},
    "distilled_noboot": {"design": "distilled_heads", "bootstrap": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--held", type=int, default=32)
    parser.add_argument("--designs", nargs="*", choices=list(DESIGNS), default=list(DESIGNS))
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch

    torch.set_num_threads(1)
    from emulator import ChgnetEnsemble, ChgnetEnsembleSettings
    from tests.emulator.emt_data import compressed, emt_cells

    train = emt_cells(args.train, seed=1)
    held = emt_cells(args.held, seed=2)
    sets = {
        "held": held,
        "held+sq80": held + compressed(held, volume_factor=0.8),
        "held+sq60": held + compressed(held, volume_factor=0.6),
    }
    print(
        f"load avg at start {load_average()}; K={args.members}, {args.train} training cells, {args.epochs} epochs"
    )
    header = (
        f"{'design':<21}{'stage':<8}{'set':<15}{'MAE':>8}{'std':>8}{'rho':>7}{'1σ':>6}{'2σ':>6}{'k68':>7}"
    )
    print(header)
    for name in args.designs:
        settings = ChgnetEnsembleSettings(n_members=args.members, **DESIGNS[name])
        start = time.perf_counter()
        ens = ChgnetEnsemble(settings=settings)
        stages = {}
        ens.fine_tune(train, epochs=0)
        stages["refit"] = {k: _figures(ens, v) for k, v in sets.items()}
        metrics = ens.fine_tune(train, epochs=args.epochs, max_minutes=30)
        stages["tuned"] = {k: _figures(ens, v) for k, v in sets.items()}
        for stage, per_set in stages.items():
            for set_name, c in per_set.items():
                print(
                    f"{name:<21}{stage:<8}{set_name:<15}{c['mae']:>8.3f}{c['mean_std']:>8.3f}"
                    f"{c['spearman_std_abs_error']:>7.2f}{c['frac_within_1sigma']:>6.2f}{c['frac_within_2sigma']:>6.2f}"
                    f"{c['k68']:>7.1f}"
                )
        print(
            f"{name:<21}train {metrics['train_minutes']:.1f} min, {time.perf_counter() - start:.0f} s total, "
            f"load {load_average()[0]:.1f}"
        )


def _figures(ens: Any, data: list) -> dict[str, float]:
    """Calibration figures on held-out labels, plus k68: the std multiplier putting 68 % of errors within 1σ."""
    from emulator.calibration import Calibration, fit_calibration

    pairs = ens.held_out_pairs(data, round=0)
    k68 = fit_calibration(pairs, previous=Calibration(), prior_weight=0.0, fit_bias=False).scale
    return ens.evaluate(data) | {"k68": k68}


if __name__ == "__main__":
    main()
