"""Relaxation of cell and positions on the ensemble-mean potential through ASE (FIRE + FrechetCellFilter).

ASE `Atoms` live only inside this adapter. Units: ASE's (eV, eV/Å, eV/Å³ for stress), converted from the
ensemble's GPa at the boundary.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from emulator.graphs import graph_problem
from emulator.multihead import EV_PER_A3_TO_GPA

# (structure) -> (energy eV total, forces eV/Å (n, 3), stress GPa (3, 3)) of the ensemble mean
MeanPotential = Callable[[Structure], tuple[float, np.ndarray, np.ndarray]]

OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS}


class _LeftTheGraph(Exception):
    """An optimiser step moved the structure to one the model cannot graph (`emulator.graphs`)."""


class EnsembleMeanCalculator(Calculator):
    """ASE calculator over the ensemble-mean energy, forces and stress.

    Attributes:
        last_good: The last structure it evaluated (None before the first).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, *, potential: MeanPotential, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        self.last_good: Structure | None = None

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        structure = AseAtomsAdaptor.get_structure(self.atoms)
        if self.last_good is not None and graph_problem(structure) is not None:
            raise _LeftTheGraph
        energy, forces, stress = self.potential(structure)
        self.last_good = structure
        s = stress / EV_PER_A3_TO_GPA
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces,
            # ASE Voigt order xx, yy, zz, yz, xz, xy
            "stress": np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]),
        }


def relax_one(
    structure: Structure,
    *,
    potential: MeanPotential,
    fmax: float,
    steps: int,
    optimizer: str,
    relax_cell: bool,
) -> tuple[Structure, int, bool]:
    """Relax one structure; returns (relaxed structure, steps taken, converged).

    A step that would leave a structure the model cannot graph (an atom pushed out of every neighbour's reach, a
    cell blown up) ends the relaxation at the last geometry evaluated, unconverged, instead of failing the batch.
    """
    atoms = AseAtomsAdaptor.get_atoms(structure)
    calc = EnsembleMeanCalculator(potential=potential)
    atoms.calc = calc
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    # ASE optimisers print a line per step; workers should stay quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        opt = OPTIMIZERS[optimizer](target, logfile=None)
        try:
            converged = bool(opt.run(fmax=fmax, steps=steps))
        except _LeftTheGraph:
            assert calc.last_good is not None
            return calc.last_good, int(opt.nsteps), False
    relaxed = AseAtomsAdaptor.get_structure(atoms)
    return relaxed, int(opt.nsteps), converged
