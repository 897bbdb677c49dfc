"""The one ASE adapter of the emulator's potentials: a function of a pymatgen structure behind an ASE calculator.

Relaxation (`emulator.relaxation`: the CHGNet ensemble's mean potential and the SevenNet committee member), molecular
dynamics (`emulator.dynamics`) and phonons (`emulator.phonons`) all evaluate their potential through
`PotentialCalculator`, so a geometry the model cannot evaluate fails the same typed way everywhere.

Units: a potential gives eV, eV/Å and GPa (3×3, ASE's sign); ASE gets eV, eV/Å and eV/Å³ (Voigt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from emulator.base import EmulatorError
from emulator.graphs import graph_problem
from emulator.multihead import EV_PER_A3_TO_GPA


@dataclass(frozen=True, eq=False)
class PotentialEvaluation:
    """A potential at one geometry.

    Attributes:
        energy: Total energy, eV.
        forces: (n_atoms, 3) forces, eV/Å.
        stress: (3, 3) stress, GPa (ASE's sign); None when not asked for.
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None


class Potential(Protocol):
    """Energy and forces of a structure, and its stress when `stress` is True."""

    def __call__(self, structure: Structure, *, stress: bool) -> PotentialEvaluation: ...


class LeftTheGraph(EmulatorError):
    """A step (of an optimiser or of MD) moved the structure to one the model cannot graph (`emulator.graphs`)."""


class PotentialCalculator(Calculator):
    """ASE calculator over a `Potential`.

    Every geometry after the first is checked against the model's crystal-graph rule (`emulator.graphs`) before it
    is evaluated, so an atom pushed out of every neighbour's reach raises `LeftTheGraph`; any other failure of the
    potential is an `EmulatorError` too.

    Args:
        potential: The potential to evaluate.
        with_stress: Evaluate the stress with every energy and forces. A cell relaxation asks for forces and then
            stress at each step, so this saves a second evaluation there; otherwise (MD, phonons at a fixed cell)
            the stress is evaluated only when asked for.
        kwargs: Passed to ASE's `Calculator`.

    Attributes:
        last_good: The last structure it evaluated (None before the first).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, *, potential: Potential, with_stress: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        self.with_stress = with_stress
        self.last_good: Structure | None = None

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        structure = AseAtomsAdaptor.get_structure(self.atoms)
        if self.last_good is not None and (problem := graph_problem(structure)) is not None:
            raise LeftTheGraph(f"a step left the model's crystal graph: {problem}")
        want_stress = self.with_stress or "stress" in (properties or [])
        try:
            result = self.potential(structure, stress=want_stress)
        except EmulatorError:
            raise
        except Exception as err:
            # CHGNet refuses a crystal with an isolated atom (e.g. one evaporated from a broken framework).
            raise EmulatorError(f"the force field cannot evaluate this geometry: {err}") from None
        self.last_good = structure
        self.results = {"energy": result.energy, "free_energy": result.energy, "forces": result.forces}
        if result.stress is not None:
            s = result.stress / EV_PER_A3_TO_GPA
            # ASE Voigt order xx, yy, zz, yz, xz, xy
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


__all__ = ["LeftTheGraph", "Potential", "PotentialCalculator", "PotentialEvaluation"]
