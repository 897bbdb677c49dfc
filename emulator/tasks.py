"""Plain-data entry points for Dask workers and the CLI: structures in as dicts, results out as dicts/floats.

A worker rebuilds the ensemble from its checkpoint directory (cached per process and invalidated when the
manifest changes), so nothing but paths and structure dicts crosses process boundaries.

Units: eV/atom, eV/Å, GPa (Voigt xx, yy, zz, yz, xz, xy, ASE sign), Å.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from emulator.base import EmulatorError
from emulator.checkpoint import MANIFEST
from emulator.chgnet_ensemble import ChgnetEnsemble, ChgnetEnsembleSettings
from emulator.validation import as_structure

_CACHE: dict[str, tuple[float, ChgnetEnsemble]] = {}


def load_cached(checkpoint_dir: str | Path) -> ChgnetEnsemble:
    """The ensemble saved in `checkpoint_dir`, loaded once per process (reloaded if the manifest changed)."""
    path = Path(checkpoint_dir).resolve()
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise EmulatorError(
            f"no emulator checkpoint in {path}: {MANIFEST} is missing (save an ensemble there first)"
        )
    stamp = manifest.stat().st_mtime_ns
    hit = _CACHE.get(str(path))
    if hit is None or hit[0] != stamp:
        _CACHE[str(path)] = (stamp, ChgnetEnsemble.load(path))
    return _CACHE[str(path)][1]


def _structures(items: Sequence[dict[str, Any] | Structure]) -> list[Structure]:
    if items is None or len(items) == 0:
        raise EmulatorError("no structures given: pass at least one crystal")
    return [as_structure(item, index=i) for i, item in enumerate(items)]


def summarize(structures: Sequence[Structure], ensemble: ChgnetEnsemble) -> list[dict[str, Any]]:
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
        load_cached(checkpoint_dir) if checkpoint_dir is not None else ChgnetEnsemble(settings=settings)
    )
    return summarize(structs, ensemble)


def predict_batch(
    checkpoint_dir: str | Path,
    structures: Sequence[dict[str, Any]],
    *,
    forces: bool = False,
) -> list[dict[str, Any]]:
    """Screening on a worker: energy per atom mean and std (eV/atom) and optionally mean forces (eV/Å, lists)."""
    ensemble = load_cached(checkpoint_dir)
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
    ensemble = load_cached(checkpoint_dir)
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
