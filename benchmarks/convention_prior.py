"""The campaign's round-0 emulator on round 1's labels: how far off, and how honest its σ.

A campaign with every compound withheld labels only elemental references in round 0, so its round-0 emulator
predicts round 1's compounds from elements alone. This replays that update on recorded campaigns (a copy of each
store is read; the originals are not touched): the round-0 ensemble as a campaign builds it (`chgnet_ensemble`
defaults: 4 members, distilled heads), `emulator.update.update_emulator` on the round-0 labels (reference refit,
leave-one-out calibration, no fine-tuning: round 0 deploys the refit), then its calibrated predictions of the
round-1 labels (the labelled structures, as the update's held-out pairs are taken). One row per campaign and a
pooled row, with and without the MP2020 prior on the O offsets (`convention_prior`): mean signed error (oracle
minus prediction) and MAE in eV/atom, the share within 1σ and 2σ, and the mean Gaussian negative log-likelihood.

    OMP_NUM_THREADS=1 python -m benchmarks.convention_prior runs/campaigns/K-O/default/s0 [WORKDIR ...]

Run at two commits to compare what changed between them (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from emulator import ChgnetEnsemble, ChgnetEnsembleSettings, LabelledStructure
from emulator.calibration import calibration_metrics
from emulator.update import update_emulator


def round_labels(workdir: Path) -> dict[int, list[LabelledStructure]]:
    """Labels of rounds 0 and 1 of a campaign (its final structures and energies), read from a copy of its store."""
    from loop.store import CampaignStore

    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal"):  # a store in WAL mode may hold its last commits beside the file
            if (workdir / f"matloop.db{suffix}").exists():
                shutil.copy(workdir / f"matloop.db{suffix}", Path(tmp) / f"matloop.db{suffix}")
        store = CampaignStore(Path(tmp) / "matloop.db")
        out: dict[int, list[LabelledStructure]] = {0: [], 1: []}
        for r in store.oracle_results(ok_only=True):
            if r.round in out:
                s = store.get_structure(r.structure_hash)
                out[r.round].append(LabelledStructure(structure=s, energy=float(r.energy_per_atom) * len(s)))
        store.close()
    return out


def scores(base: ChgnetEnsemble, labels: dict[int, list[LabelledStructure]]) -> dict[str, np.ndarray]:
    """Round-0 update on `labels[0]` from a copy of `base`, then its calibrated predictions of `labels[1]`."""
    variants, _ = update_emulator(
        None, labels[0], fresh=lambda: copy.deepcopy(base), round=0, epochs=0, max_minutes=1.0
    )
    pred = variants.model.predict([x.structure for x in labels[1]], forces=False, stress=False)
    return {
        "target": np.array([x.energy_per_atom for x in labels[1]]),
        "predicted": pred.energy_per_atom,
        "std": pred.energy_per_atom_std,
    }


def row(name: str, s: dict[str, np.ndarray]) -> str:
    error = s["target"] - s["predicted"]
    m = calibration_metrics(predicted=s["predicted"], std=s["std"], target=s["target"])
    var = np.maximum(s["std"], 1e-6) ** 2
    nll = float(np.mean(0.5 * np.log(2 * np.pi * var) + error**2 / (2 * var)))
    return (
        f"{name} | {len(error)} | {error.mean():+.3f} | {np.abs(error).mean():.3f} | {m['frac_within_1sigma']:.2f} | "
        f"{m['frac_within_2sigma']:.2f} | {float(np.median(s['std'])):.3f} | {nll:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    labels = {w: round_labels(w) for w in args.workdirs}
    print(
        "| prior | campaign | round-1 labels | mean error | MAE | within 1σ | within 2σ | median σ | mean NLL |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for prior in (False, True):
        base = ChgnetEnsemble(settings=ChgnetEnsembleSettings(convention_prior=prior))
        pooled: dict[str, list[np.ndarray]] = {"target": [], "predicted": [], "std": []}
        for workdir, lab in labels.items():
            s = scores(base, lab)
            for k, v in s.items():
                pooled[k].append(v)
            print(f"| {prior} | {row(str(workdir), s)} |")
        print(f"| {prior} | {row('all', {k: np.concatenate(v) for k, v in pooled.items()})} |")


if __name__ == "__main__":
    main()
