"""The emulator as a force field for MD and phonons: its model, relaxation and supercells.

One model-loading path for the design checks (`emulator.dynamics`, `emulator.phonons`, which evaluate its
ensemble-mean potential through `emulator.calculator.PotentialCalculator`): a checkpoint directory saved by
`ChgnetEnsemble.save` (the campaign's current model, fine-tuned on the oracle's labels), or, with no checkpoint, the
pretrained CHGNet 0.3.0 shipped in the chgnet wheel (all heads the pretrained head, so the mean is exactly that
model; no distillation is run).

Units: eV/atom, eV/Å, Å.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from emulator.base import EmulatorError, RelaxResult
from emulator.chgnet_ensemble import ChgnetEnsemble, ChgnetEnsembleSettings


def load_force_field(*, checkpoint: Path | None) -> ChgnetEnsemble:
    """The model whose ensemble-mean potential drives MD and phonons, with one torch thread.

    Args:
        checkpoint: A directory written by `ChgnetEnsemble.save`; None for the shipped CHGNet 0.3.0.

    Raises:
        EmulatorError: The directory holds no (or a torn, or another kind of) checkpoint.
    """
    torch.set_num_threads(1)
    if checkpoint is not None:
        model = ChgnetEnsemble.load(Path(checkpoint))
    else:
        # Two copies of the pretrained head: the smallest ensemble the settings allow, identical to CHGNet 0.3.0.
        model = ChgnetEnsemble(settings=ChgnetEnsembleSettings(n_members=2, design="bootstrap_only"))
    torch.set_num_threads(1)
    return model


def relax_structure(
    *,
    structure: Structure,
    checkpoint: Path | None = None,
    fmax: float = 0.01,
    steps: int = 500,
    model: ChgnetEnsemble | None = None,
) -> RelaxResult:
    """Relax cell and positions on the force field (the emulator's own relaxation, FIRE + FrechetCellFilter).

    Args:
        structure: The crystal.
        checkpoint: As in `load_force_field` (ignored when `model` is given).
        fmax: Force threshold, eV/Å (the cell filter counts stress in it).
        steps: Optimiser step budget.
        model: An already loaded force field, to avoid loading it twice.
    """
    model = model if model is not None else load_force_field(checkpoint=checkpoint)
    return model.relax([structure], fmax=fmax, steps=steps)[0]


def supercell_multiples(structure: Structure, *, min_length: float) -> tuple[int, int, int]:
    """Repeats along a, b, c so that each distance between opposite cell faces is at least `min_length` Å.

    The face-to-face distance (not the vector length) is what keeps an atom from meeting its own periodic image; it
    is never longer than the lattice vector, so every supercell vector is at least `min_length` too.
    """
    if not min_length > 0:
        raise EmulatorError(f"min_length must be > 0 Å (got {min_length})")
    matrix = structure.lattice.matrix
    volume = abs(float(np.linalg.det(matrix)))
    heights = [
        volume / float(np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3]))) for i in range(3)
    ]
    return tuple(max(1, math.ceil(min_length / h - 1e-9)) for h in heights)  # type: ignore[return-value]


def smallest_supercell(
    structure: Structure, *, min_length: float, symprec: float = 1e-3
) -> tuple[Structure, tuple[int, int, int]]:
    """The cell to repeat and its repeats: given, primitive or conventional cell, whichever needs fewest atoms.

    Args:
        structure: The crystal.
        min_length: Smallest face-to-face width of the supercell, Å.
        symprec: Symmetry tolerance for the primitive and conventional cells, Å.
    """
    options = [structure.get_reduced_structure()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
            options += [
                analyzer.get_primitive_standard_structure().get_reduced_structure(),
                analyzer.get_conventional_standard_structure(),
            ]
        except Exception:  # spglib finds no symmetry in a badly distorted cell: keep the given one
            pass
    best: tuple[int, Structure, tuple[int, int, int]] | None = None
    for cell in options:
        repeats = supercell_multiples(cell, min_length=min_length)
        size = len(cell) * math.prod(repeats)
        if best is None or size < best[0]:
            best = (size, cell, repeats)
    assert best is not None
    return best[1], best[2]


__all__ = [
    "load_force_field",
    "relax_structure",
    "smallest_supercell",
    "supercell_multiples",
]
