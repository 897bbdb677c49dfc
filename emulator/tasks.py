"""Plain-data entry points for Dask workers and the CLI: structures in as dicts, results out as dicts/floats.

A worker rebuilds the ensemble from its checkpoint directory (`load_emulator`: the one per-process cache, which
reloads when the manifest changes), so nothing but paths, settings and structure dicts crosses process boundaries.

Units: eV/atom, eV/Å, GPa (Voigt xx, yy, zz, yz, xz, xy, ASE sign), Å.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from emulator.base import CommitteeMember, Emulator, EmulatorError, get_emulator_class, get_member_class
from emulator.checkpoint import MANIFEST
from emulator.chgnet_ensemble import ChgnetEnsemble, ChgnetEnsembleSettings
from emulator.validation import as_structure

# (checkpoint directory or None, settings) -> (manifest stamp or None, model)
_CACHE: dict[tuple[str | None, str], tuple[int | None, Emulator]] = {}
# settings -> committee member (frozen models: one per settings and process)
_MEMBERS: dict[str, CommitteeMember] = {}


def load_emulator(settings: Any = None, checkpoint: str | Path | None = None) -> Emulator:
    """The emulator saved in `checkpoint`, or a fresh one built from `settings`; one copy per process.

    A checkpoint is reloaded when its manifest changes, and loading another checkpoint drops the cached ones (a
    worker holds one round's model, not every round's). Its class is the manifest's `kind`.

    Args:
        settings: Emulator settings (a model or a dict with `kind`); needed when `checkpoint` is None.
        checkpoint: A directory written by `Emulator.save`.

    Raises:
        EmulatorError: No manifest in `checkpoint`, or neither argument given.
    """
    if checkpoint is None:
        if settings is None:
            raise EmulatorError("give emulator settings or a checkpoint directory to load an emulator from")
        settings_dict = settings if isinstance(settings, dict) else settings.model_dump()
        key = (None, repr(sorted(settings_dict.items())))
        if key not in _CACHE:
            cls = get_emulator_class(settings_dict["kind"])
            _CACHE[key] = (None, cls(settings=cls.Settings.model_validate(settings_dict)))
        return _CACHE[key][1]
    path = Path(checkpoint).resolve()
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise EmulatorError(
            f"no emulator checkpoint in {path}: {MANIFEST} is missing (save an ensemble there first)"
        )
    stamp = manifest.stat().st_mtime_ns
    key = (str(path), "")
    hit = _CACHE.get(key)
    if hit is None or hit[0] != stamp:
        for other in [k for k in _CACHE if k[0] is not None]:
            del _CACHE[other]
        kind = json.loads(manifest.read_text()).get("kind", ChgnetEnsemble.name)
        _CACHE[key] = (stamp, get_emulator_class(kind).load(path))
    return _CACHE[key][1]


def load_member(settings: dict[str, Any]) -> CommitteeMember:
    """The committee member described by `settings` (a dict with `kind`), built once per process."""
    key = json.dumps(settings, sort_keys=True)
    if key not in _MEMBERS:
        cls = get_member_class(settings["kind"])
        _MEMBERS[key] = cls(settings=cls.Settings.model_validate(settings))
    return _MEMBERS[key]


def clear_cache() -> None:
    """Forget every cached emulator (after a fine-tune, later loads must come from the new checkpoint)."""
    _CACHE.clear()


def _structures(items: Sequence[dict[str, Any] | Structure]) -> list[Structure]:
    if items is None or len(items) == 0:
        raise EmulatorError("no structures given: pass at least one crystal")
    return [as_structure(item, index=i) for i, item in enumerate(items)]


def summarize(structures: Sequence[Structure], ensemble: Any) -> list[dict[str, Any]]:
    """Per-structure ensemble mean ± std as plain data (what `matloop predict` prints).

    Returns:
        One dict per structure: `formula`, `n_atoms`, `energy_per_atom` and `energy_per_atom_std` (eV/atom),
        `max_force` (largest mean-force norm, eV/Å) and `max_force_std` (largest per-component force std, eV/Å),
        `stress` and `stress_std` (6 Voigt values, GPa), `pressure` (GPa, -trace/3 of the mean stress).
    """
    pred = ensemble.predict(structures, return_std=True, forces=True, stress=True, derivative_std=True)
    assert pred.stress is not None and pred.stress_std is not None
    rows = []
    for i, s in enumerate(structures):
        rows.append(
            {
                "formula": s.composition.reduced_formula,
                "n_atoms": len(s),
                "energy_per_atom": float(pred.energy_per_atom[i]),
                "energy_per_atom_std": float(pred.energy_per_atom_std[i]),
                "max_force": float(np.linalg.norm(pred.forces[i], axis=1).max()),
                "max_force_std": float(pred.forces_std[i].max()),
                "stress": [float(x) for x in pred.stress[i]],
                "stress_std": [float(x) for x in pred.stress_std[i]],
                "pressure": float(-pred.stress[i][:3].mean()),
            }
        )
    return rows


def predict_table(
    structures: Sequence[dict[str, Any] | Structure],
    *,
    checkpoint_dir: str | Path | None = None,
    settings: ChgnetEnsembleSettings | None = None,
) -> list[dict[str, Any]]:
    """`summarize` for the CLI: from a saved ensemble, or the round-0 ensemble built from `settings`."""
    structs = _structures(structures)
    ensemble = (
        load_emulator(checkpoint=checkpoint_dir)
        if checkpoint_dir is not None
        else ChgnetEnsemble(settings=settings)
    )
    return summarize(structs, ensemble)


def predict_batch(
    checkpoint_dir: str | Path,
    structures: Sequence[dict[str, Any]],
    *,
    forces: bool = False,
) -> list[dict[str, Any]]:
    """Screening on a worker: energy per atom mean and std (eV/atom) and optionally mean forces (eV/Å, lists)."""
    ensemble = load_emulator(checkpoint=checkpoint_dir)
    pred = ensemble.predict(_structures(structures), forces=forces, stress=False, derivative_std=False)
    out = []
    for i in range(len(structures)):
        row: dict[str, Any] = {
            "energy_per_atom": float(pred.energy_per_atom[i]),
            "energy_per_atom_std": float(pred.energy_per_atom_std[i]),
            "member_energy_per_atom": [float(x) for x in pred.member_energy_per_atom[:, i]],
        }
        if forces:
            row["forces"] = pred.forces[i].tolist()
        out.append(row)
    return out


def relax_batch(
    checkpoint_dir: str | Path,
    structures: Sequence[dict[str, Any]],
    *,
    fmax: float = 0.1,
    steps: int = 100,
) -> list[dict[str, Any]]:
    """Relax on a worker; returns per structure the relaxed `structure` (as_dict), `energy_per_atom` and
    `energy_per_atom_std` (eV/atom), `n_steps` and `converged`."""
    ensemble = load_emulator(checkpoint=checkpoint_dir)
    results = ensemble.relax(_structures(structures), fmax=fmax, steps=steps)
    return [
        {
            "structure": r.structure.as_dict(),
            "energy_per_atom": r.energy_per_atom,
            "energy_per_atom_std": r.energy_per_atom_std,
            "n_steps": r.n_steps,
            "converged": r.converged,
        }
        for r in results
    ]
