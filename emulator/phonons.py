"""Harmonic phonons with the emulator's force field (phonopy finite displacements).

A crystal is dynamically stable at 0 K when no phonon has an imaginary frequency: a mode with ω² < 0 is a
direction in which the energy goes down, so the structure is a saddle point that distorts. Phonopy reports such
a mode as a negative frequency, and so does this module.

Numerics: plus-minus displacements (so a small residual force of the relaxed cell cancels), force constants
symmetrised (translational invariance, which pins the three acoustic modes at Γ to zero), a Γ-centred q-mesh.
The three acoustic modes at Γ are left out of every count: they are zero by symmetry and only numerics move them.

Units: frequencies THz (imaginary as negative), lengths Å, forces eV/Å.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from phonopy import Phonopy
from phonopy.structure.atoms import PhonopyAtoms
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from emulator.base import EmulatorError
from emulator.calculator import PotentialCalculator
from emulator.force_field import load_force_field, relax_structure, smallest_supercell

# Relaxation before phonons: tight, since a residual stress or force shows up as spurious soft modes.
RELAX_FMAX = 0.005  # eV/Å
RELAX_STEPS = 400
SYMPREC = 1e-3  # Å, symmetry tolerance of the unit cell handed to phonopy
# CHGNet evaluates in float32: at 0.01 Å the force differences are noise-limited (NaCl's Γ TO mode came out at
# 1.8 THz with 0.01 Å and 3.5 THz with 0.03 Å, and a 54-atom NaCl supercell showed spurious -0.65 THz modes at 0.01 Å
# that vanish at 0.03 Å), so the default amplitude is 0.03 Å.
DISPLACEMENT = 0.03  # Å


@dataclass(frozen=True, eq=False)
class PhononResult:
    """Phonons of one crystal on a q-mesh.

    Attributes:
        structure: The unit cell the phonons belong to (relaxed with the same model when asked), Å.
        min_frequency: Lowest frequency on the mesh, the three Γ acoustic modes excluded, THz (imaginary < 0).
        min_frequency_q: Reduced coordinates of the q-point where it occurs.
        n_imaginary: Modes (q-point, branch) of the irreducible mesh below -`tolerance`, Γ acoustic excluded.
        n_modes: Modes counted over (irreducible q-points × branches, minus the three Γ acoustic modes).
        gamma_frequencies: All 3N frequencies at Γ, ascending, THz.
        acoustic_gamma_max: Largest |frequency| of the three Γ acoustic modes, THz (numerical noise, ~0).
        tolerance: Threshold below which a negative frequency counts as imaginary, THz.
        mesh: The Γ-centred q-mesh.
        supercell: Diagonal supercell repeats of `structure` used for the displacements.
        n_displacements: Displaced supercells computed (force evaluations).
        displacement: Displacement amplitude, Å.
        relaxed: Whether the structure was relaxed with the model first.
        relax_converged: Whether that relaxation reached its force threshold (None if not relaxed).
    """

    structure: Structure
    min_frequency: float
    min_frequency_q: tuple[float, float, float]
    n_imaginary: int
    n_modes: int
    gamma_frequencies: tuple[float, ...]
    acoustic_gamma_max: float
    tolerance: float
    mesh: tuple[int, int, int]
    supercell: tuple[int, int, int]
    n_displacements: int
    displacement: float
    relaxed: bool
    relax_converged: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "structure": self.structure.as_dict(),
            "min_frequency": self.min_frequency,
            "min_frequency_q": list(self.min_frequency_q),
            "n_imaginary": self.n_imaginary,
            "n_modes": self.n_modes,
            "gamma_frequencies": list(self.gamma_frequencies),
            "acoustic_gamma_max": self.acoustic_gamma_max,
            "tolerance": self.tolerance,
            "mesh": list(self.mesh),
            "supercell": list(self.supercell),
            "n_displacements": self.n_displacements,
            "displacement": self.displacement,
            "relaxed": self.relaxed,
            "relax_converged": self.relax_converged,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhononResult:
        return cls(
            structure=Structure.from_dict(data["structure"]),
            min_frequency=float(data["min_frequency"]),
            min_frequency_q=tuple(float(x) for x in data["min_frequency_q"]),  # type: ignore[arg-type]
            n_imaginary=int(data["n_imaginary"]),
            n_modes=int(data["n_modes"]),
            gamma_frequencies=tuple(float(x) for x in data["gamma_frequencies"]),
            acoustic_gamma_max=float(data["acoustic_gamma_max"]),
            tolerance=float(data["tolerance"]),
            mesh=tuple(int(x) for x in data["mesh"]),  # type: ignore[arg-type]
            supercell=tuple(int(x) for x in data["supercell"]),  # type: ignore[arg-type]
            n_displacements=int(data["n_displacements"]),
            displacement=float(data["displacement"]),
            relaxed=bool(data["relaxed"]),
            relax_converged=None if data["relax_converged"] is None else bool(data["relax_converged"]),
        )


def _phonopy_atoms(structure: Structure) -> PhonopyAtoms:
    return PhonopyAtoms(
        symbols=[site.specie.symbol for site in structure],
        cell=structure.lattice.matrix,
        scaled_positions=structure.frac_coords,
    )


def phonon_spectrum(
    *,
    structure: Structure,
    checkpoint: Path | None = None,
    min_length: float = 10.0,
    displacement: float = DISPLACEMENT,
    mesh: tuple[int, int, int] = (8, 8, 8),
    tolerance: float = 0.1,
    relax: bool = True,
) -> PhononResult:
    """Phonon frequencies of `structure` on a q-mesh, from finite displacements with the emulator's forces.

    Args:
        structure: The crystal.
        checkpoint: Emulator checkpoint directory (`ChgnetEnsemble.save`); None = the shipped CHGNet 0.3.0.
        min_length: Smallest face-to-face width of the displacement supercell, Å (force constants beyond half of
            it are cut off).
        displacement: Atomic displacement amplitude, Å.
        mesh: Γ-centred q-mesh along the reciprocal axes of the unit cell.
        tolerance: A frequency below -`tolerance` THz counts as imaginary.
        relax: Relax cell and positions with the same model first (an unrelaxed cell gives spurious imaginary
            modes: a residual stress or force is a curvature the model does not have at its own minimum).

    Raises:
        EmulatorError: Bad settings, or a structure the model cannot evaluate.
    """
    if not (displacement > 0 and tolerance >= 0 and len(mesh) == 3 and all(int(m) >= 1 for m in mesh)):
        raise EmulatorError(
            f"phonon_spectrum needs displacement > 0 Å, tolerance >= 0 THz and a mesh of three positive integers "
            f"(got {displacement}, {tolerance}, {mesh})"
        )
    model = load_force_field(checkpoint=checkpoint)
    relax_converged: bool | None = None
    if relax:
        result = relax_structure(structure=structure, fmax=RELAX_FMAX, steps=RELAX_STEPS, model=model)
        structure, relax_converged = result.structure, result.converged
    cell, repeats = smallest_supercell(structure, min_length=min_length, symprec=SYMPREC)
    with warnings.catch_warnings():
        # "auto" is meant: the cell may be a conventional one, and its primitive cell is what the mesh refers to
        warnings.simplefilter("ignore")
        phonon = Phonopy(
            _phonopy_atoms(cell), supercell_matrix=np.diag(repeats), primitive_matrix="auto", symprec=1e-4
        )
    phonon.generate_displacements(distance=displacement, is_plusminus=True)
    calculator = PotentialCalculator(potential=model.mean_potential)
    forces = []
    for displaced in phonon.supercells_with_displacements:
        sc = Structure(displaced.cell, displaced.symbols, displaced.scaled_positions)
        atoms = AseAtomsAdaptor.get_atoms(sc)
        atoms.calc = calculator
        f = atoms.get_forces()
        forces.append(f - f.mean(axis=0))  # the net force of a displaced periodic cell is numerical noise
    phonon.forces = np.asarray(forces)
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()
    phonon.run_mesh(list(mesh), is_gamma_center=True)
    mesh_dict = phonon.get_mesh_dict()
    qpoints = np.asarray(mesh_dict["qpoints"])
    freqs = np.asarray(mesh_dict["frequencies"])  # (n_q, 3N) ascending per q
    gamma_index = int(np.argmin(np.linalg.norm(qpoints, axis=1)))
    if np.linalg.norm(qpoints[gamma_index]) > 1e-8:
        raise EmulatorError("the Γ-centred mesh has no Γ point")  # cannot happen with is_gamma_center
    gamma = np.sort(freqs[gamma_index])
    acoustic = np.argsort(np.abs(freqs[gamma_index]))[:3]
    mask = np.ones_like(freqs, dtype=bool)
    mask[gamma_index, acoustic] = False
    counted = np.where(mask, freqs, np.inf)
    flat = int(np.argmin(counted))
    q_min, _ = np.unravel_index(flat, freqs.shape)
    n_imaginary = int(np.count_nonzero(mask & (freqs < -tolerance)))
    return PhononResult(
        structure=cell,
        min_frequency=float(counted.flat[flat]),
        min_frequency_q=tuple(float(x) for x in qpoints[q_min]),  # type: ignore[arg-type]
        n_imaginary=n_imaginary,
        n_modes=int(mask.sum()),
        gamma_frequencies=tuple(float(x) for x in gamma),
        acoustic_gamma_max=float(np.abs(freqs[gamma_index, acoustic]).max()),
        tolerance=float(tolerance),
        mesh=tuple(int(m) for m in mesh),  # type: ignore[arg-type]
        supercell=repeats,
        n_displacements=len(forces),
        displacement=float(displacement),
        relaxed=relax,
        relax_converged=relax_converged,
    )


__all__ = ["DISPLACEMENT", "PhononResult", "phonon_spectrum"]
