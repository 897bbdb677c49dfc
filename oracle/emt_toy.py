"""A toy oracle: ASE's effective-medium theory potential. Not DFT; for fast tests and demos only.

EMT knows 11 elements (Al, Cu, Ag, Au, Ni, Pd, Pt and, crudely, H, C, N, O); its energies are not comparable
with any DFT code and must never enter a real campaign's hull. Units: eV, eV/Å, GPa (see `oracle.base`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pymatgen.core import Structure

from oracle.ase_runner import AseOracle, AseOracleSettings
from oracle.base import UnsupportedStructure, register
from oracle.cost import pair_potential_memory_gb


def emt_elements() -> frozenset[str]:
    """Elements that ASE's EMT has parameters for."""
    from ase.calculators.emt import parameters

    return frozenset(parameters)


class EMTSettings(AseOracleSettings):
    """EMT has no physics settings of its own; only the shared attempt/timeout/relaxation ones."""

    kind: Literal["emt"] = "emt"
    timeout_s: float = 300.0
    max_atoms: int = Field(100_000, ge=1)


@register
class EMTOracle(AseOracle):
    """Toy potential (ASE EMT) through the same isolated runner as the DFT oracles; `is_dft` is False."""

    name = "emt"
    calculator = "emt"
    Settings = EMTSettings
    implemented_properties = ("energy", "forces", "stress")
    is_dft = False
    level_of_theory = "toy"
    energy_convention = "toy"

    def check(self, structure: Structure) -> None:
        """Raise `UnsupportedStructure` for elements EMT has no parameters for."""
        super().check(structure)
        bad = sorted({el.symbol for el in structure.composition.elements} - emt_elements())
        if bad:
            raise UnsupportedStructure(
                f"emt (a toy potential) cannot treat {', '.join(bad)}; it knows only {', '.join(sorted(emt_elements()))}",
                fix="choose another oracle",
            )

    def memory_estimate_gb(self, structure: Structure) -> float:
        """Neighbour-list estimate (`oracle.cost.pair_potential_memory_gb`)."""
        return pair_potential_memory_gb(structure)

    def calculator_job(self, structure: Structure, *, attempt: int, directory: Path) -> dict[str, Any]:
        return {}
