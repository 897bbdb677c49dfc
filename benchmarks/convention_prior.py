"""The round-0 emulator on round 1's labels, with and without the MP2020 prior on the O offsets.

A campaign with every compound withheld labels only elemental references in round 0, so the refit cannot learn the
offsets CHGNet's corrected energies have against an uncorrected oracle in oxides (`emulator.convention_features`).
This replays that refit on the round-0 labels of recorded campaigns (a copy of each store is read; the originals
are not touched), predicts the round-1 labels (the labelled structures, as the update's held-out pairs do) with
the refit alone and with the prior, and prints one row per campaign and a pooled row: labels, mean signed error
(oracle minus prediction) and MAE, eV/atom.

    OMP_NUM_THREADS=1 python -m benchmarks.convention_prior runs/campaigns/K-O/default/s0 [WORKDIR ...]

The ensemble is the pretrained CHGNet with two identical heads (`design: bootstrap_only`): round 0 trains no
member, so its mean is the pretrained model's.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from emulator import ChgnetEnsemble, ChgnetEnsembleSettings, LabelledStructure
from loop.store import CampaignStore


def round_labels(workdir: Path) -> dict[int, list[LabelledStructure]]:
    """Labels of rounds 0 and 1 of a campaign (its final structures and energies), read from a copy of its store."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "matloop.db"
        for suffix in ("", "-wal"):  # a store in WAL mode may hold its last commits beside the file
            if (workdir / f"matloop.db{suffix}").exists():
                shutil.copy(workdir / f"matloop.db{suffix}", Path(tmp) / f"matloop.db{suffix}")
        store = CampaignStore(db)
        out: dict[int, list[LabelledStructure]] = {0: [], 1: []}
        for r in store.oracle_results(ok_only=True):
            if r.round in out:
                s = store.get_structure(r.structure_hash)
                out[r.round].append(LabelledStructure(structure=s, energy=float(r.energy_per_atom) * len(s)))
        store.close()
    return out


def errors(labels: dict[int, list[LabelledStructure]], *, prior: bool) -> np.ndarray:
    """Oracle minus predicted energy per atom of round 1's labels after the round-0 refit, eV/atom."""
    settings = ChgnetEnsembleSettings(n_members=2, design="bootstrap_only", convention_prior=prior)
    model = ChgnetEnsemble(settings=settings)
    model.refit_references(labels[0])
    pred = model.predict([x.structure for x in labels[1]], forces=False, stress=False, calibrated=False)
    return np.array([x.energy_per_atom for x in labels[1]]) - pred.energy_per_atom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| campaign | round-0 labels | round-1 labels | refit alone: mean error, MAE | with the prior: mean error, MAE |"
    )
    print("|---|---|---|---|---|")
    pooled: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for workdir in args.workdirs:
        labels = round_labels(workdir)
        row = []
        for prior in (False, True):
            e = errors(labels, prior=prior)
            pooled[prior].append(e)
            row.append(f"{e.mean():+.3f}, {np.abs(e).mean():.3f}")
        print(f"| {workdir} | {len(labels[0])} | {len(labels[1])} | {row[0]} | {row[1]} |")
    total = {k: np.concatenate(v) for k, v in pooled.items()}
    print(
        f"| all | | {len(total[True])} | {total[False].mean():+.3f}, {np.abs(total[False]).mean():.3f} | "
        f"{total[True].mean():+.3f}, {np.abs(total[True]).mean():.3f} |"
    )


if __name__ == "__main__":
    main()
