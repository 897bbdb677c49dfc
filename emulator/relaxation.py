"""Relaxation of cell and positions on a potential through ASE (FIRE or BFGS, FrechetCellFilter).

ASE `Atoms` live only inside this adapter; the potential is evaluated through `emulator.calculator`.
Units: eV, eV/Å, Å.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from emulator.calculator import LeftTheGraph, Potential, PotentialCalculator

OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS}


@dataclass(frozen=True)
class Relaxation:
    """One relaxation's outcome.

    Attributes:
        structure: The relaxed structure (or the last one evaluated, if it stopped at the graph's edge).
        n_steps: Optimiser steps taken.
        converged: Whether the largest force (and stress, with the cell) fell below `fmax` within the budget.
    """

    structure: Structure
    n_steps: int
    converged: bool


def relax_one(
    structure: Structure,
    *,
    potential: Potential,
    fmax: float,
    steps: int,
    optimizer: str,
    relax_cell: bool,
) -> Relaxation:
    """Relax one structure on `potential` (fmax in eV/Å; with the cell, the filter counts stress in it).

    A step that would leave a structure the model cannot graph (an atom pushed out of every neighbour's reach, a
    cell blown up) ends the relaxation at the last geometry evaluated, unconverged, instead of failing the batch.
    """
    atoms = AseAtomsAdaptor.get_atoms(structure)
    calc = PotentialCalculator(potential=potential, with_stress=relax_cell)
    atoms.calc = calc
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    # ASE optimisers print a line per step; workers should stay quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        opt = OPTIMIZERS[optimizer](target, logfile=None)
        try:
            converged = bool(opt.run(fmax=fmax, steps=steps))
        except LeftTheGraph:
            assert calc.last_good is not None
            return Relaxation(structure=calc.last_good, n_steps=int(opt.nsteps), converged=False)
    return Relaxation(
        structure=AseAtomsAdaptor.get_structure(atoms), n_steps=int(opt.nsteps), converged=converged
    )


__all__ = ["OPTIMIZERS", "Relaxation", "relax_one"]
