"""The oracle protocol: label one crystal with a first-principles (or toy) calculation.

Units everywhere: energy eV, energy per atom eV/atom, forces eV/Å, stress GPa (Voigt order xx, yy, zz, yz, xz, xy,
ASE sign convention), lengths Å, wall time s.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict
from pymatgen.core import Structure


class OracleError(Exception):
    """Base class of oracle faults that the caller may want to tell apart."""


class UnsupportedStructure(OracleError):
    """The oracle cannot treat this structure at all (e.g. an element with no pseudopotential/setup)."""


class CalculationFailed(OracleError):
    """The calculator ran but produced no usable result (crash, non-zero exit, NaN)."""


class SCFError(CalculationFailed):
    """The self-consistent field cycle did not converge."""


class OracleTimeout(CalculationFailed):
    """The calculation exceeded its wall-time allowance."""


class OracleSettings(BaseModel):
    """Settings common to every oracle; each implementation subclasses this with `kind: Literal[...]`."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    max_attempts: int = 2
    """Attempts per structure; later attempts use the implementation's fallback (e.g. looser mixing)."""
    timeout_s: float = 3600.0
    """Wall-time allowance per attempt, in s."""

    def settings_hash(self) -> str:
        """Stable hash of every setting that changes the physics (used to key stored results)."""
        payload = json.dumps(self.model_dump(exclude={"max_attempts", "timeout_s"}), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class OracleResult:
    """Outcome of labelling one structure.

    Attributes:
        status: "ok" or "failed".
        energy: Total energy of the cell, eV (None when failed).
        energy_per_atom: Energy per atom, eV/atom.
        forces: Per-atom forces, eV/Å, shape (n_atoms, 3), in the order of the input structure's sites.
        stress: Voigt stress, GPa (ASE sign convention).
        reason: Why a failed label failed (one line).
        wall_time: Seconds spent, all attempts included.
        attempts: Attempts made.
        settings: The calculator settings actually used.
        metadata: Anything else (e.g. relaxed structure as a dict, SCF iterations, code version).
    """

    status: Literal["ok", "failed"]
    energy: float | None = None
    energy_per_atom: float | None = None
    forces: list[list[float]] | None = None
    stress: list[float] | None = None
    reason: str | None = None
    wall_time: float = 0.0
    attempts: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OracleResult:
        return cls(**data)


class Oracle(ABC):
    """Labels structures. Implementations declare what they compute, as ASE calculators do.

    Subclasses set `name`, `Settings` (an `OracleSettings` subclass with `kind: Literal[name]`),
    `implemented_properties`, `is_dft`, `level_of_theory` and, where known, `supported_elements`.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[OracleSettings]]
    implemented_properties: ClassVar[tuple[str, ...]] = ("energy", "forces", "stress")
    is_dft: ClassVar[bool] = True
    level_of_theory: ClassVar[Literal["dft", "surrogate", "toy"]] = "dft"
    """What its energies are: first-principles, a machine-learned surrogate, or a toy potential."""
    supported_elements: ClassVar[frozenset[str] | None] = None

    def __init__(self, settings: OracleSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings(kind=self.name)

    def check(self, structure: Structure) -> None:
        """Raise `UnsupportedStructure` (one-line message) if this oracle cannot label `structure`."""
        if self.supported_elements is None:
            return
        bad = sorted({el.symbol for el in structure.composition.elements} - self.supported_elements)
        if bad:
            raise UnsupportedStructure(f"{self.name} cannot treat element(s) {', '.join(bad)}")

    @abstractmethod
    def label(self, structure: Structure, *, workdir: Path) -> OracleResult:
        """Label `structure`, using `workdir` (created if needed) for calculator files.

        Never raises for calculation faults: they come back as a failed `OracleResult` with the reason.
        A finished result stored in `workdir` is returned without recomputation.
        """


_REGISTRY: dict[str, type[Oracle]] = {}


def register(cls: type[Oracle]) -> type[Oracle]:
    """Class decorator: make an oracle available by its `name` (e.g. in `oracle: {kind: gpaw}`)."""
    _REGISTRY[cls.name] = cls
    return cls


def oracle_names() -> list[str]:
    return sorted(_REGISTRY)


def get_oracle_class(name: str) -> type[Oracle]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown oracle {name!r}; choose one of: {', '.join(oracle_names())}") from None


def make_oracle(settings: OracleSettings) -> Oracle:
    return get_oracle_class(settings.kind)(settings)


def settings_models() -> tuple[type[OracleSettings], ...]:
    """The registered settings models, for the campaign config's discriminated union on `kind`."""
    return tuple(cls.Settings for cls in _REGISTRY.values())
