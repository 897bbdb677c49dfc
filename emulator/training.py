"""Moving the ensemble to the oracle's level of theory: reference-energy refit, then bootstrap fine-tuning.

Units: energies eV/atom, forces eV/Å, stress GPa (ASE sign, as CHGNet predicts it). The loss is computed here
directly in these units, so no VASP kBar conversion is involved (CHGNet's own `StructureData` is not used).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from chgnet.graph import CrystalGraph
from pymatgen.core import Structure
from torch import Tensor

from emulator.base import LabelledStructure
from emulator.convention_features import convention_features
from emulator.multihead import MultiHeadChgnet

N_ELEMENTS = 94


@dataclass
class TrainingExample:
    """One labelled crystal as tensors: graph, eV/atom, eV/Å (n, 3) or None, GPa (3, 3) or None."""

    graph: CrystalGraph
    energy_per_atom: float
    forces: Tensor | None
    stress: Tensor | None


def voigt_to_matrix(voigt: np.ndarray) -> np.ndarray:
    """(6,) Voigt xx, yy, zz, yz, xz, xy -> symmetric (3, 3)."""
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def matrix_to_voigt(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 6) Voigt xx, yy, zz, yz, xz, xy."""
    m = np.asarray(matrix)
    return np.stack(
        [m[..., 0, 0], m[..., 1, 1], m[..., 2, 2], m[..., 1, 2], m[..., 0, 2], m[..., 0, 1]], axis=-1
    )


def composition_fractions(atomic_numbers: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 94) atom fractions per structure, the AtomRef feature."""
    out = np.zeros((len(atomic_numbers), N_ELEMENTS))
    for row, z in enumerate(atomic_numbers):
        np.add.at(out[row], np.asarray(z) - 1, 1.0 / len(z))
    return out


def refit_design(structures: Sequence[Structure], *, convention: bool) -> np.ndarray:
    """The reference refit's design matrix: (n, 94) atom fractions, then `convention_features` when asked.

    Args:
        structures: The crystals of the rows.
        convention: Append the columns of `emulator.convention_features.FEATURES`.
    """
    fractions = composition_fractions([np.array([site.specie.Z for site in s]) for s in structures])
    if not convention:
        return fractions
    return np.hstack([fractions, convention_features(structures)])


def refit_reference_shift(*, fractions: np.ndarray, residuals: np.ndarray, alpha: float) -> np.ndarray:
    """Per-element shifts of the reference energies that best explain the residuals (ridge, eV/atom).

    Ridge keeps the fit well posed with very few labels: elements never seen get exactly zero shift (their
    pretrained reference is kept) and collinear compositions share the shift instead of diverging.

    Args:
        fractions: (n, m) atom fractions (94 columns), optionally followed by further composition features.
        residuals: (n,) oracle minus current ensemble-mean energy, eV/atom.
        alpha: Ridge penalty (in units of the squared atom fractions).

    Returns:
        (m,) shifts: the first 94 add to the AtomRef weights, eV/atom.
    """
    seen = np.flatnonzero(fractions.sum(axis=0) > 0)
    x = fractions[:, seen]
    gram = x.T @ x + alpha * np.eye(len(seen))
    shift = np.zeros(fractions.shape[1])
    shift[seen] = np.linalg.solve(gram, x.T @ residuals)
    return shift


def leave_one_out_refit(
    *, pretrained: np.ndarray, fractions: np.ndarray, residuals: np.ndarray, alpha: float
) -> np.ndarray:
    """Each label's prediction by the reference refit made without it (eV/atom): the held-out test of the refit.

    Args:
        pretrained: (n,) energies before any refit, eV/atom.
        fractions: (n, 94) atom fractions.
        residuals: (n,) oracle minus `pretrained`, eV/atom.
        alpha: Ridge penalty of `refit_reference_shift`.

    Returns:
        (n,) `pretrained[i]` plus the shifts refitted on every label but i.
    """
    out = np.empty(len(pretrained))
    for i in range(len(pretrained)):
        keep = np.arange(len(pretrained)) != i
        shift = refit_reference_shift(fractions=fractions[keep], residuals=residuals[keep], alpha=alpha)
        out[i] = pretrained[i] + fractions[i] @ shift
    return out


def bootstrap_weights(*, n_members: int, n_data: int, seed: int, bootstrap: bool) -> np.ndarray:
    """(K, n) per-example loss weights: multinomial resample counts per member (all ones if no bootstrap)."""
    if not bootstrap:
        return np.ones((n_members, n_data))
    out = np.zeros((n_members, n_data))
    for k in range(n_members):
        picks = np.random.default_rng(seed + 1000 + k).integers(0, n_data, size=n_data)
        np.add.at(out[k], picks, 1.0)
    return out


def trainable_parameters(
    model: MultiHeadChgnet, *, train_last_conv: bool, train_heads: Iterable[int] | None = None
) -> list[torch.nn.Parameter]:
    """Set requires_grad on the heads `train_heads` (default: all) and optionally the shared last block only."""
    model.requires_grad_(False)
    for k in range(model.n_heads) if train_heads is None else train_heads:
        model.heads[k].requires_grad_(True)
    if train_last_conv:
        model.base.atom_conv_layers[-1].requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def fine_tune_members(
    model: MultiHeadChgnet,
    examples: Sequence[TrainingExample],
    *,
    epochs: int,
    max_minutes: float,
    batch_size: int,
    learning_rate: float,
    weights: np.ndarray,
    energy_weight: float,
    force_weight: float,
    stress_weight: float,
    train_last_conv: bool,
    seed: int,
    train_heads: Iterable[int] | None = None,
) -> dict[str, float]:
    """Fine-tune all members together: one trunk pass per batch, member k's loss weighted by its resample.

    Args:
        model: The ensemble (trained in place, resuming from its current weights).
        examples: All labelled data (old and new, so that earlier rounds are not forgotten).
        epochs: Upper bound on passes over the data.
        max_minutes: Wall-clock bound; training stops after the batch that crosses it.
        batch_size: Graphs per step.
        learning_rate: Adam learning rate.
        weights: (K, n) per-member example weights (bootstrap counts).
        energy_weight: Loss weight of the energy MSE ((eV/atom)²).
        force_weight: Loss weight of the force MSE ((eV/Å)²).
        stress_weight: Loss weight of the stress MSE (GPa²).
        train_last_conv: Also train the shared last interaction block.
        seed: Shuffling seed.
        train_heads: Members whose heads are trained (default all); the others keep their weights.

    Returns:
        Metrics: epochs run, steps, minutes, final-epoch mean loss.
    """
    params = trainable_parameters(model, train_last_conv=train_last_conv, train_heads=train_heads)
    optimiser = torch.optim.Adam(params, lr=learning_rate)
    w = torch.as_tensor(weights, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    steps = 0
    epoch_loss = float("nan")
    epochs_run = 0
    model.train()
    try:
        for _ in range(epochs):
            order = rng.permutation(len(examples))
            losses = []
            for first in range(0, len(order), batch_size):
                idx = order[first : first + batch_size]
                batch = [examples[i] for i in idx]
                loss = _batch_loss(
                    model,
                    batch,
                    w[:, idx],
                    energy_weight=energy_weight,
                    force_weight=force_weight,
                    stress_weight=stress_weight,
                )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(float(loss))
                steps += 1
                if time.monotonic() - start > 60 * max_minutes:
                    break
            epochs_run += 1
            epoch_loss = float(np.mean(losses))
            if time.monotonic() - start > 60 * max_minutes:
                break
    finally:
        model.eval()
        model.requires_grad_(False)
    return {
        "epochs": float(epochs_run),
        "steps": float(steps),
        "train_minutes": (time.monotonic() - start) / 60,
        "train_loss": epoch_loss,
    }


def _batch_loss(
    model: MultiHeadChgnet,
    batch: Sequence[TrainingExample],
    w: Tensor,
    *,
    energy_weight: float,
    force_weight: float,
    stress_weight: float,
) -> Tensor:
    """Weighted multi-member loss of one batch; w is (K, batch) bootstrap weights."""
    use_forces = force_weight > 0 and all(ex.forces is not None for ex in batch)
    use_stress = stress_weight > 0 and all(ex.stress is not None for ex in batch)
    out = model(
        [ex.graph for ex in batch],
        compute_forces=use_forces,
        compute_stress=use_stress,
        create_graph=True,
    )
    norm = w.sum().clamp(min=1.0)
    target_e = torch.tensor([ex.energy_per_atom for ex in batch], dtype=out.energy_per_atom.dtype)
    loss = energy_weight * (w * (out.energy_per_atom - target_e) ** 2).sum() / norm
    if use_forces and out.forces is not None:
        per_graph = torch.stack(
            [
                ((f - ex.forces.unsqueeze(0)) ** 2).mean(dim=(1, 2))
                for f, ex in zip(out.forces, batch, strict=True)
            ],
            dim=1,
        )
        loss = loss + force_weight * (w * per_graph).sum() / norm
    if use_stress and out.stress is not None:
        target_s = torch.stack([ex.stress for ex in batch]).unsqueeze(0)
        per_graph = ((out.stress - target_s) ** 2).mean(dim=(2, 3))
        loss = loss + stress_weight * (w * per_graph).sum() / norm
    return loss


def to_examples(data: Sequence[LabelledStructure], graphs: Sequence[CrystalGraph]) -> list[TrainingExample]:
    """Pair labels with their graphs as float32 tensors (stress Voigt GPa -> 3x3)."""
    out = []
    for item, graph in zip(data, graphs, strict=True):
        forces = (
            None if item.forces is None else torch.as_tensor(np.asarray(item.forces), dtype=torch.float32)
        )
        stress = (
            None
            if item.stress is None
            else torch.as_tensor(voigt_to_matrix(np.asarray(item.stress, dtype=float)), dtype=torch.float32)
        )
        out.append(
            TrainingExample(graph=graph, energy_per_atom=item.energy_per_atom, forces=forces, stress=stress)
        )
    return out
