"""Memory estimates of one oracle calculation, checked before it is submitted (the size guard).

The estimates are deliberately simple counts (plane waves x bands x k-points, density grids, basis-matrix sizes)
with a fixed process overhead; they are meant to refuse a cell that would exhaust the machine, not to predict the
peak to a few percent. Units: GB (10^9 bytes), eV, Å, Å⁻¹.
"""

from __future__ import annotations

import math

import numpy as np
from pymatgen.core import Element, Structure

BOHR = 0.529177210903  # Å
HARTREE = 27.211386245988  # eV
PROCESS_OVERHEAD_GB = 0.3
"""Interpreter, numpy, the calculator's own code and setups."""
_NOBLE_GAS_Z = (0, 2, 10, 18, 36, 54, 86, 118)


def valence_electrons(element: Element) -> int:
    """Electrons outside the preceding noble-gas core (d and f shells included, as PAW/pseudopotentials often do)."""
    core = max(z for z in _NOBLE_GAS_Z if z < element.Z) if element.Z > 2 else 0
    return element.Z - core


def irreducible_kpoints_bound(mesh: list[int]) -> int:
    """Upper bound on irreducible k-points of a Γ-centred mesh: only time reversal is assumed."""
    return max(1, math.ceil(int(np.prod(mesh)) / 2))


def plane_wave_memory_gb(
    structure: Structure,
    *,
    cutoff: float,
    kpoint_mesh: list[int],
    spin_polarized: bool,
    density_cutoff_factor: float = 4.0,
    work_copies: float = 3.0,
) -> float:
    """Peak memory of a plane-wave DFT calculation, GB.

    Args:
        structure: The cell.
        cutoff: Wave-function cutoff, eV.
        kpoint_mesh: The Monkhorst-Pack mesh; the irreducible count is bounded by time reversal only.
        spin_polarized: Two spin channels.
        density_cutoff_factor: Density cutoff / wave-function cutoff (4 for norm-conserving and PAW in GPAW's
            plane-wave mode; 8-12 for ultrasoft pseudopotentials).
        work_copies: Wave-function-sized work arrays of the eigensolver (residuals, subspace copies).

    Returns:
        Process overhead + wave functions (complex, all bands at all k-points and spins, times `work_copies`
        + 1) + projectors + ~20 real arrays on the density grid. Checked against GPAW's own report for B32 LiAl
        (4 atoms, 500 eV): 1643 plane waves and 9 bands here, 1676 and 9 in GPAW. Only time reversal is assumed
        for the k-points, so symmetric cells are overestimated (there 1372 k-points against GPAW's 104).
    """
    volume_bohr3 = structure.volume / BOHR**3
    ecut_ha = cutoff / HARTREE
    n_pw = volume_bohr3 * (2 * ecut_ha) ** 1.5 / (6 * math.pi**2)
    n_electrons = sum(valence_electrons(site.specie) for site in structure)
    # Occupied bands plus the empty ones a smeared metal needs.
    n_bands = math.ceil(0.6 * n_electrons) + 4
    n_spin = 2 if spin_polarized else 1
    n_k = irreducible_kpoints_bound(kpoint_mesh)
    wave_functions = n_pw * n_bands * n_k * n_spin * 16 * (1 + work_copies)
    # PAW/nonlocal projectors evaluated at every plane wave and k-point (GPAW keeps them in memory); ~8 per atom
    # (s, p and d channels). For a 4-atom B32 LiAl cell GPAW reports 57 MB of projectors beside 25 MB of wave
    # functions.
    projectors = 8 * len(structure) * n_pw * n_k * 16
    # The FFT box that holds the density spans twice the wave-function sphere's radius per direction.
    n_grid = n_pw * density_cutoff_factor**1.5 * 6 / math.pi
    grids = 20 * n_grid * 8 * n_spin
    return PROCESS_OVERHEAD_GB + (wave_functions + projectors + grids) / 1e9


def local_basis_memory_gb(
    structure: Structure, *, kpoint_mesh: list[int], spin_polarized: bool, functions_per_atom: int = 25
) -> float:
    """Peak memory of a Gaussian/local-basis DFT calculation (CP2K), GB: ~30 dense basis-size matrices per k-point
    and spin (Hamiltonian, overlap, density, eigenvectors, diagonalisation work)."""
    n_basis = functions_per_atom * len(structure)
    n_spin = 2 if spin_polarized else 1
    matrices = 30 * n_basis**2 * 16 * irreducible_kpoints_bound(kpoint_mesh) * n_spin
    return PROCESS_OVERHEAD_GB + matrices / 1e9


def pair_potential_memory_gb(structure: Structure, *, bytes_per_atom: float = 20_000.0) -> float:
    """Peak memory of a short-ranged classical potential (neighbour lists), GB."""
    return PROCESS_OVERHEAD_GB + len(structure) * bytes_per_atom / 1e9
