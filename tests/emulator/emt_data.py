"""Real small labelled data for the emulator tests: fcc metals and ordered alloys labelled with ASE's EMT.

EMT is a toy potential, not DFT, but it is a genuine, different level of theory from CHGNet's (MP/PBE), which is
what the refit and fine-tuning have to absorb. Units: eV, eV/Å, GPa (EMT's eV/Å³ stress converted).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from pymatgen.io.ase import AseAtomsAdaptor

from emulator.base import LabelledStructure

EV_PER_A3_TO_GPA = 160.21766208
METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
# Rough fcc lattice constants, Å (EMT's own minima are close to these).
LATTICE = {"Cu": 3.61, "Ag": 4.09, "Au": 4.08, "Ni": 3.52, "Pd": 3.89, "Pt": 3.92, "Al": 4.05}


def _l12(a_el: str, b_el: str, a: float) -> Atoms:
    """Cu3Au-type cell: b_el at the corner, a_el on the face centres."""
    frac = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    return Atoms([b_el, a_el, a_el, a_el], scaled_positions=frac, cell=[a, a, a], pbc=True)


def _l10(a_el: str, b_el: str, a: float) -> Atoms:
    """CuAu-type tetragonal cell (2 atoms)."""
    c = a
    at = a / np.sqrt(2)
    return Atoms([a_el, b_el], scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[at, at, c], pbc=True)


def _label(atoms: Atoms) -> LabelledStructure:
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces())
    stress = np.array(atoms.get_stress(voigt=True)) * EV_PER_A3_TO_GPA
    atoms.calc = None
    return LabelledStructure(
        structure=AseAtomsAdaptor.get_structure(atoms), energy=energy, forces=forces, stress=stress
    )


def _perturb(atoms: Atoms, rng: np.random.Generator, *, strain: float, rattle: float) -> Atoms:
    out = atoms.copy()
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    out.set_cell(out.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    out.positions += rng.normal(0.0, rattle, size=out.positions.shape)
    return out


def emt_cells(n: int, *, seed: int, strain: float = 0.03, rattle: float = 0.05) -> list[LabelledStructure]:
    """n EMT-labelled small cells: pure fcc (1 and 4 atoms), L1_2 and L1_0 alloys, strained and rattled."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        a_el, b_el = rng.choice(METALS, size=2, replace=False)
        if kind == 0:
            atoms = bulk(a_el, "fcc", a=LATTICE[a_el])
        elif kind == 1:
            atoms = bulk(a_el, "fcc", a=LATTICE[a_el], cubic=True)
        elif kind == 2:
            atoms = _l12(a_el, b_el, 0.75 * LATTICE[a_el] + 0.25 * LATTICE[b_el])
        else:
            atoms = _l10(a_el, b_el, 0.5 * (LATTICE[a_el] + LATTICE[b_el]))
        if len(atoms) == 1:
            atoms = atoms.repeat((2, 1, 1))  # rattling a 1-atom cell does nothing
        out.append(_label(_perturb(atoms, rng, strain=strain, rattle=rattle)))
    return out


def compressed(data: list[LabelledStructure], *, volume_factor: float) -> list[LabelledStructure]:
    """The same cells isotropically compressed to `volume_factor` of their volume, relabelled with EMT."""
    out = []
    for item in data:
        atoms = AseAtomsAdaptor.get_atoms(item.structure)
        atoms.set_cell(atoms.cell.array * volume_factor ** (1 / 3), scale_atoms=True)
        out.append(_label(atoms))
    return out
