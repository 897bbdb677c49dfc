"""Dynamical stability: no imaginary phonon beyond a stated tolerance, with the MLFF's harmonic phonons.

`emulator.phonons.phonon_spectrum` relaxes the crystal with the model, computes force constants by finite
displacements on a supercell and the frequencies on a Γ-centred q-mesh. The verdict:
* pass: no mode below -tolerance (the three acoustic modes at Γ excluded);
* fail: at least one, on a converged relaxation;
* unknown: imaginary modes on a relaxation that did not converge (a residual force can make them), or a structure
  the model cannot evaluate.

Units: frequencies THz (imaginary as negative), lengths Å.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from emulator.base import EmulatorError
from emulator.phonons import DISPLACEMENT, PhononResult, phonon_spectrum
from loop.design.requirements import Status
from loop.errors import InputError

TOLERANCE = 0.1  # THz (3.3 cm⁻¹): above the finite-displacement noise of the MLFF on the validation crystals


@dataclass(frozen=True)
class DynamicalResult:
    """The dynamical-stability verdict on one structure.

    Attributes:
        status: pass, fail or unknown (see the module docstring).
        reason: One line saying why.
        tolerance: A frequency below -tolerance counts as imaginary, THz.
        min_frequency: Lowest frequency on the mesh (Γ acoustic excluded), THz; None if not computed.
        n_imaginary: Modes below -tolerance on the irreducible mesh; None if not computed.
        phonons: The whole phonon result; None if not computed.
    """

    status: Status
    reason: str
    tolerance: float
    min_frequency: float | None = None
    n_imaginary: int | None = None
    phonons: PhononResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "reason": self.reason,
            "tolerance": self.tolerance,
            "min_frequency": self.min_frequency,
            "n_imaginary": self.n_imaginary,
            "phonons": None if self.phonons is None else self.phonons.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicalResult:
        return cls(
            status=Status(data["status"]),
            reason=data["reason"],
            tolerance=float(data["tolerance"]),
            min_frequency=data.get("min_frequency"),
            n_imaginary=data.get("n_imaginary"),
            phonons=None if data.get("phonons") is None else PhononResult.from_dict(data["phonons"]),
        )


def dynamical_stability(
    *,
    structure: Structure,
    tolerance: float = TOLERANCE,
    checkpoint: Path | None = None,
    min_length: float = 10.0,
    displacement: float = DISPLACEMENT,
    mesh: tuple[int, int, int] = (8, 8, 8),
) -> DynamicalResult:
    """Judge `structure` dynamically stable when no phonon of the model-relaxed cell is below -`tolerance` THz.

    Args:
        structure: The crystal.
        tolerance: THz.
        checkpoint: Emulator checkpoint directory; None = the shipped CHGNet 0.3.0.
        min_length: Smallest face-to-face width of the displacement supercell, Å.
        displacement: Finite-displacement amplitude, Å.
        mesh: Γ-centred q-mesh.

    Raises:
        InputError: A negative tolerance.
    """
    if not tolerance >= 0:
        raise InputError(f"the phonon tolerance must be >= 0 THz (got {tolerance})")
    try:
        result = phonon_spectrum(
            structure=structure,
            checkpoint=checkpoint,
            min_length=min_length,
            displacement=displacement,
            mesh=mesh,
            tolerance=tolerance,
            relax=True,
        )
    except EmulatorError as err:
        return DynamicalResult(
            status=Status.UNKNOWN, reason=f"phonons could not be computed: {err}", tolerance=tolerance
        )
    found = f"{result.n_imaginary} of {result.n_modes} modes below -{tolerance:g} THz"
    if result.n_imaginary == 0:
        status = Status.PASS
        reason = f"no imaginary modes (lowest {result.min_frequency:.2f} THz, tolerance {tolerance:g} THz)"
    elif result.relax_converged is False:
        status = Status.UNKNOWN
        reason = f"{found}, but the relaxation did not converge (residual forces make spurious soft modes)"
    else:
        status = Status.FAIL
        q = ", ".join(f"{x:.2f}" for x in result.min_frequency_q)
        reason = f"{found}; lowest {result.min_frequency:.2f} THz at q = ({q})"
    return DynamicalResult(
        status=status,
        reason=reason,
        tolerance=float(tolerance),
        min_frequency=result.min_frequency,
        n_imaginary=result.n_imaginary,
        phonons=result,
    )


__all__ = ["TOLERANCE", "DynamicalResult", "dynamical_stability"]
