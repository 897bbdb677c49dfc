"""A relaxation that would carry a structure out of the model's crystal graph stops at the last geometry it could
evaluate, unconverged, instead of failing the whole screening batch.

The potential is ASE's Lennard-Jones with a σ of 8 Å: its minimum lies beyond the emulator's 6 Å graph cutoff, so
a one-atom cubic cell of 4 Å expands until its atom has no neighbour within 6 Å (as a force field can blow up a
cell), the way a screening relaxation could leave CHGNet's graph.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.lj import LennardJones
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from emulator.calculator import PotentialEvaluation
from emulator.graphs import graph_problem
from emulator.multihead import EV_PER_A3_TO_GPA
from emulator.relaxation import relax_one


def lennard_jones(structure: Structure, *, stress: bool) -> PotentialEvaluation:
    """Energy eV, forces eV/Å and stress GPa (3x3) of a wide Lennard-Jones potential."""
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = LennardJones(sigma=8.0, epsilon=0.05, rc=24.0)
    return PotentialEvaluation(
        energy=float(atoms.get_potential_energy()),
        forces=np.asarray(atoms.get_forces()),
        stress=atoms.get_stress(voigt=False) * EV_PER_A3_TO_GPA if stress else None,
    )


def test_a_relaxation_leaving_the_graph_stops_at_the_last_graphable_geometry():
    start = Structure(Lattice.cubic(4.0), ["Ar"], [[0, 0, 0]])
    assert graph_problem(start) is None
    relaxed = relax_one(
        start, potential=lennard_jones, fmax=0.001, steps=200, optimizer="FIRE", relax_cell=True
    )
    assert not relaxed.converged and 0 < relaxed.n_steps < 200
    assert graph_problem(relaxed.structure) is None
    assert relaxed.structure.volume > start.volume  # it expanded as far as the graph allows
