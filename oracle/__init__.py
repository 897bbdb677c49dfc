"""The oracle room: label crystals with first-principles calculations (or a surrogate force field, or a toy).

Importing the package registers every implementation; calculator codes (GPAW, CP2K, ...) are imported only
when a calculation runs, so ``import oracle`` is cheap and works where they are absent.

Typical use (units: eV, eV/atom, eV/Å, GPa)::

    oracle = make_oracle(GPAWSettings(cutoff=700))
    oracle.check(structure)  # raises UnsupportedStructure (StructureTooLarge: the size guard) up front
    result = oracle.label(structure, workdir=campaign / "oracle" / structure_hash)
    if result.ok:
        result.final_structure, result.energy_per_atom, result.forces, result.stress  # of the final structure
    else:
        result.failure_kind, result.transient, result.reason

A new oracle is a subclass of `Oracle` (or `AseOracle` for an ASE calculator) with a `Settings` model
(`kind: Literal["name"]`), `@register`, a `max_atoms` default and a `memory_estimate_gb` for the size guard.
"""

from __future__ import annotations

from oracle import cost, cp2k_dft, emt_toy, espresso_dft, gpaw_dft, mlff, vasp_dft
from oracle.ase_runner import (
    AseOracle,
    AseOracleSettings,
    kpoint_mesh,
    label_structures,
    niggli_reduce,
    structure_fingerprint,
)
from oracle.base import (
    CalculationFailed,
    FailureKind,
    InternalFault,
    Oracle,
    OracleError,
    OracleResult,
    OracleSettings,
    OracleTimeout,
    OracleUnavailable,
    RelaxationFrame,
    SCFError,
    StructureTooLarge,
    UnsupportedStructure,
    get_oracle_class,
    make_oracle,
    oracle_names,
    register,
    settings_models,
)
from oracle.cp2k_dft import CP2KOracle, CP2KSettings
from oracle.emt_toy import EMTOracle, EMTSettings
from oracle.espresso_dft import EspressoOracle, EspressoSettings
from oracle.gpaw_dft import GPAWOracle, GPAWSettings
from oracle.mlff import MLFFOracle, MLFFSettings
from oracle.vasp_dft import VaspOracle, VaspSettings

__all__ = [
    "AseOracle",
    "AseOracleSettings",
    "CP2KOracle",
    "CP2KSettings",
    "CalculationFailed",
    "EMTOracle",
    "EMTSettings",
    "EspressoOracle",
    "EspressoSettings",
    "FailureKind",
    "GPAWOracle",
    "GPAWSettings",
    "InternalFault",
    "MLFFOracle",
    "MLFFSettings",
    "Oracle",
    "OracleError",
    "OracleResult",
    "OracleSettings",
    "OracleTimeout",
    "OracleUnavailable",
    "RelaxationFrame",
    "SCFError",
    "StructureTooLarge",
    "UnsupportedStructure",
    "VaspOracle",
    "VaspSettings",
    "cost",
    "cp2k_dft",
    "emt_toy",
    "espresso_dft",
    "get_oracle_class",
    "gpaw_dft",
    "kpoint_mesh",
    "label_structures",
    "make_oracle",
    "mlff",
    "niggli_reduce",
    "oracle_names",
    "register",
    "settings_models",
    "structure_fingerprint",
    "vasp_dft",
]
