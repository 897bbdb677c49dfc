"""Plain-data task functions for workers (Dask or this process) and thin adapters to the leaf rooms.

Worker functions live in this importable module (not `__main__`) and take/return plain data (dicts, lists, paths),
so they pickle cheaply and can run on any worker of a cluster.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure

from emulator.base import EmulatorError, LabelledStructure
from emulator.tasks import clear_cache, load_member
from emulator.tasks import load_emulator as cached_emulator
from emulator.update import EmulatorVariants, update_emulator
from generator.diffusion import DiffusionGenerator
from generator.sanity import too_close


def _pin_threads() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def load_emulator(settings: Any, checkpoint: str | Path | None) -> Any:
    """The emulator of a checkpoint directory, or a fresh one from `settings`, from the emulator room's one
    per-process cache (`emulator.tasks.load_emulator`), with torch pinned to this process's thread budget."""
    _pin_threads()
    return cached_emulator(settings, None if checkpoint is None else Path(checkpoint))


def relax_chunk(
    structure_dicts: Sequence[dict[str, Any]],
    checkpoint: str | None,
    settings: dict[str, Any],
    fmax: float,
    steps: int,
) -> list[dict[str, Any]]:
    """Relax structures with the ensemble mean; plain dicts in, plain dicts out.

    Returns:
        Per structure: relaxed `structure` (as dict), `energy_per_atom` and `energy_per_atom_std` (eV/atom),
        `n_steps`, `converged`, `collapsed` (atoms closer than `generator.sanity.MIN_DISTANCE` after relaxation).
    """
    if not structure_dicts:
        return []
    # Worker processes do not inherit the CLI's warning filters; torch/CHGNet internals warn on every call.
    warnings.filterwarnings("ignore", category=UserWarning)
    model = load_emulator(settings, checkpoint)
    structures = [Structure.from_dict(d) for d in structure_dicts]
    out = []
    for res in model.relax(structures, fmax=fmax, steps=steps):
        s = res.structure
        out.append(
            {
                "structure": s.as_dict(),
                "energy_per_atom": float(res.energy_per_atom),
                "energy_per_atom_std": float(res.energy_per_atom_std),
                "n_steps": int(res.n_steps),
                "converged": bool(res.converged),
                "collapsed": too_close(s),
            }
        )
    return out


def rescore_chunk(
    structure_dicts: Sequence[dict[str, Any]], checkpoint: str | None, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """One batched prediction of structures with the ensemble (no relaxation); plain dicts in, plain dicts out.

    Returns:
        Per structure: `energy_per_atom` and `energy_per_atom_std` (eV/atom) and `max_force`, the largest atomic
        force of the ensemble mean (eV/Å), which says whether the geometry is still near this model's minimum.
    """
    if not structure_dicts:
        return []
    warnings.filterwarnings("ignore", category=UserWarning)
    model = load_emulator(settings, checkpoint)
    structures = [Structure.from_dict(d) for d in structure_dicts]
    pred = model.predict(structures, return_std=True, forces=True, stress=False, derivative_std=False)
    return [
        {
            "energy_per_atom": float(e),
            "energy_per_atom_std": float(sd),
            "max_force": float(np.linalg.norm(np.asarray(f), axis=1).max()) if len(f) else 0.0,
        }
        for e, sd, f in zip(pred.energy_per_atom, pred.energy_per_atom_std, pred.forces, strict=True)
    ]


def estimate_chunk(
    structure_dicts: Sequence[dict[str, Any]], checkpoint: str | None, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """The cheap screening tier: one batched energy-only prediction with the ensemble at the given geometry (no
    forces, no relaxation); plain dicts in, plain dicts out.

    Returns:
        Per structure: `energy_per_atom` and `energy_per_atom_std` (eV/atom; NaN with a `reason` for a structure
        the emulator cannot featurise, which does not spoil the rest of its chunk).
    """
    if not structure_dicts:
        return []
    warnings.filterwarnings("ignore", category=UserWarning)
    model = load_emulator(settings, checkpoint)
    structures = [Structure.from_dict(d) for d in structure_dicts]
    try:
        return _energies(model, structures)
    except EmulatorError:
        pass  # one structure the emulator cannot take fails the batch: predict them one by one
    out: list[dict[str, Any]] = []
    for s in structures:
        try:
            out.extend(_energies(model, [s]))
        except EmulatorError as err:
            out.append(
                {"energy_per_atom": float("nan"), "energy_per_atom_std": float("nan"), "reason": str(err)}
            )
    return out


def _energies(model: Any, structures: list[Structure]) -> list[dict[str, Any]]:
    pred = model.predict(structures, return_std=True, forces=False, stress=False)
    return [
        {"energy_per_atom": float(e), "energy_per_atom_std": float(sd)}
        for e, sd in zip(pred.energy_per_atom, pred.energy_per_atom_std, strict=True)
    ]


def member_relax_chunk(
    structure_dicts: Sequence[dict[str, Any]], settings: dict[str, Any], fmax: float, steps: int
) -> list[dict[str, Any]]:
    """Relax structures with one committee member (`emulator.base.CommitteeMember`); plain dicts in and out.

    Returns:
        Per structure: `energy_per_atom` (eV/atom) at the member's relaxed geometry, `n_steps`, `converged` and
        `collapsed` (atoms closer than `generator.sanity.MIN_DISTANCE` after relaxation).
    """
    if not structure_dicts:
        return []
    warnings.filterwarnings("ignore", category=UserWarning)
    _pin_threads()
    member = load_member(settings)
    out = []
    for res in member.relax([Structure.from_dict(d) for d in structure_dicts], fmax=fmax, steps=steps):
        out.append(
            {
                "energy_per_atom": float(res.energy_per_atom),
                "n_steps": int(res.n_steps),
                "converged": bool(res.converged),
                "collapsed": too_close(res.structure),
            }
        )
    return out


def predict_energies(
    structures: Sequence[Structure], *, settings: Any, checkpoint: str | Path | None
) -> list[float]:
    """Ensemble-mean energies per atom (eV/atom) of structures."""
    if not structures:
        return []
    model = load_emulator(settings, checkpoint)
    pred = model.predict(list(structures), return_std=True)
    return [float(e) for e in pred.energy_per_atom]


def fine_tune_emulator(
    data: Sequence[dict[str, Any]],
    *,
    settings: Any,
    checkpoint_in: Path | None,
    out_dir: Path,
    epochs: int,
    max_minutes: float,
    round: int,
) -> tuple[Path, dict[str, Any]]:
    """Update the emulator on all oracle labels, keeping the variant that is best on held-out labels; save it.

    The previous checkpoint's variants first predict the labels they have not trained on (this round's): those
    held-out errors decide between the refit-only and the fine-tuned variant, and recalibrate both (see
    `emulator.update`). The deployed variant is saved at `out_dir`, the others under `out_dir/variants/`.

    Args:
        data: All labels so far: dicts with structure, energy (eV), forces (eV/Å) and stress (GPa, Voigt).
        settings: Emulator settings (used to build the round-0 ensemble when `checkpoint_in` is None).
        checkpoint_in: The previous round's checkpoint directory.
        out_dir: Where to save.
        epochs: Fine-tuning epochs of the fine-tuned variant (0: refit only).
        max_minutes: Wall-clock bound of that fine-tune.
        round: Campaign round (tags the held-out pairs).

    Returns:
        The checkpoint directory and flat metrics (`deployed`, `reason`, `heldout_<variant>_mae`, ...).
    """
    labels = [
        LabelledStructure(
            structure=d["structure"],
            energy=float(d["energy"]),
            forces=None if d.get("forces") is None else np.asarray(d["forces"], dtype=float),
            stress=None if d.get("stress") is None else np.asarray(d["stress"], dtype=float),
        )
        for d in data
    ]
    _pin_threads()
    previous = EmulatorVariants.load(Path(checkpoint_in)) if checkpoint_in is not None else None
    variants, report = update_emulator(
        previous,
        labels,
        fresh=lambda: load_emulator(settings, None),
        round=round,
        epochs=epochs,
        max_minutes=max_minutes,
    )
    variants.save(out_dir, report=report)
    clear_cache()  # later loads must come from the new checkpoint
    return out_dir, {"deployed": report.deployed, "reason": report.reason, **report.metrics()}


def fine_tune_generator(
    structures: Sequence[Structure],
    *,
    settings: Any,
    checkpoint_in: Path | None,
    out_path: Path,
    weight: float,
    steps: int,
    max_minutes: float,
    seed: int,
    exclude_ids: Sequence[str] = (),
) -> tuple[Path, dict[str, Any]]:
    """Continue training the diffusion model on discoveries mixed with its original data; save to `out_path`.

    Args:
        weight: Each discovery enters the fine-tuning set `round(weight)` times (at least once), so a handful of
            discoveries is not drowned by the original crystals mixed in against forgetting.
        exclude_ids: Material ids of original crystals never mixed in (withheld by the campaign).
    """
    if checkpoint_in is not None:
        settings = settings.model_copy(update={"checkpoint": str(checkpoint_in)})
    gen = DiffusionGenerator(settings=settings)
    copies = max(1, round(weight))
    metrics = gen.fine_tune(
        [s for s in structures for _ in range(copies)],
        checkpoint_out=out_path,
        steps=steps,
        max_minutes=max_minutes,
        seed=seed,
        exclude_ids=exclude_ids,
    )
    return out_path, dict(metrics)
