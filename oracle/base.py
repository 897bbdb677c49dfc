"""The oracle protocol: label one crystal with a first-principles (or toy) calculation.

Units everywhere: energy eV, energy per atom eV/atom, forces eV/Å, stress GPa (Voigt order xx, yy, zz, yz, xz, xy,
ASE sign convention), lengths Å, wall time s.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

FailureKind = Literal[
    "unsupported", "too_large", "unavailable", "scf", "timeout", "crashed", "internal", "lost"
]
"""Why a label failed, as stored with the result (`OracleResult.failure_kind`); "lost" is for the executor (a
worker that died with the task), the others are the `kind` of the `OracleError` subclasses below."""


class OracleError(Exception):
    """Base class of the oracle's typed faults.

    Args:
        reason: What went wrong, one line.
        fix: What the user can do about it, one line (None when nothing obvious).

    Class attributes:
        kind: The `FailureKind` a failed `OracleResult` records for this fault.
        transient: True when the fault says nothing lasting about the structure (machine set-up, internal fault),
            so a failed label of this kind is never stored and the structure is tried again later.
    """

    kind: ClassVar[FailureKind] = "internal"
    transient: ClassVar[bool] = False

    def __init__(self, reason: str, *, fix: str | None = None) -> None:
        self.reason = reason
        self.fix = fix
        super().__init__(f"{reason}; {fix}" if fix else reason)


class UnsupportedStructure(OracleError):
    """The oracle cannot treat this structure with these settings (element without a pseudopotential, disorder,
    overlapping atoms); decided before any calculation runs."""

    kind: ClassVar[FailureKind] = "unsupported"


class StructureTooLarge(UnsupportedStructure):
    """The cell has more atoms than the oracle's `max_atoms`, or its estimated memory exceeds `max_memory_gb`."""

    kind: ClassVar[FailureKind] = "too_large"


class OracleUnavailable(OracleError):
    """This machine cannot run the oracle now (code or executable missing): nothing about the structure."""

    kind: ClassVar[FailureKind] = "unavailable"
    transient: ClassVar[bool] = True


class InternalFault(OracleError):
    """A fault of matloop's own code around the calculation (a bug): nothing about the structure."""

    kind: ClassVar[FailureKind] = "internal"
    transient: ClassVar[bool] = True


class CalculationFailed(OracleError):
    """The calculator ran but produced no usable result (crash, non-zero exit, NaN)."""

    kind: ClassVar[FailureKind] = "crashed"


class SCFError(CalculationFailed):
    """The self-consistent field cycle did not converge."""

    kind: ClassVar[FailureKind] = "scf"


class OracleTimeout(CalculationFailed):
    """The calculation exceeded its wall-time allowance."""

    kind: ClassVar[FailureKind] = "timeout"


class OracleSettings(BaseModel):
    """Settings common to every oracle; each implementation subclasses this with `kind: Literal[...]`.

    Attributes:
        max_attempts: Attempts per structure; later attempts use the implementation's fallback (e.g. looser mixing).
        timeout_s: Wall-time allowance per attempt, s.
        cpu_timeout_s: CPU-time allowance per attempt, s, summed over the calculation's processes (None: wall time
            only). Unlike wall time it does not count time spent waiting for a core on a shared machine, so
            set it as the limit and `timeout_s` as a generous backstop against a hung calculation.
        max_atoms: Largest cell (atoms) the oracle accepts; larger ones fail before any calculation starts.
        max_memory_gb: Largest estimated memory of one calculation, GB (all MPI ranks together); a cell whose
            estimate is larger fails before any calculation starts.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    max_attempts: int = 2
    timeout_s: float = 3600.0
    cpu_timeout_s: float | None = Field(default=None, gt=0)
    max_atoms: int = Field(200, ge=1)
    max_memory_gb: float = Field(8.0, gt=0)

    non_physics_fields: ClassVar[frozenset[str]] = frozenset(
        {"max_attempts", "timeout_s", "cpu_timeout_s", "max_atoms", "max_memory_gb"}
    )
    """Fields that decide whether or how hard to try, not the answer: left out of `settings_hash`."""

    @property
    def potential(self) -> str | None:
        """The machine-learned potential that computes the labels ("family:model"), None for a DFT code.

        A committee member with the same potential would screen candidates with the very model that labels them.
        """
        return None

    def settings_hash(self) -> str:
        """Stable hash of every setting that changes the physics (used to key stored results)."""
        payload = json.dumps(self.model_dump(exclude=set(self.non_physics_fields)), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class RelaxationFrame:
    """One ionic step of an oracle relaxation (step 0 is the input geometry).

    Attributes:
        structure: The geometry of this step (same site order as the labelled structure).
        energy: Total energy, eV.
        forces: Per-atom forces, eV/Å.
        stress: Voigt stress, GPa (ASE sign convention).
    """

    structure: Structure
    energy: float
    forces: list[list[float]]
    stress: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "structure": self.structure.as_dict(),
            "energy": self.energy,
            "forces": self.forces,
            "stress": self.stress,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelaxationFrame:
        return cls(
            structure=Structure.from_dict(data["structure"]),
            energy=float(data["energy"]),
            forces=data["forces"],
            stress=data["stress"],
        )


@dataclass
class OracleResult:
    """Outcome of labelling one structure.

    Energy, forces and stress belong to `final_structure`: the oracle-relaxed geometry when the oracle relaxed the
    structure (in the Niggli-reduced cell), else the input structure; same site order as the input either way.

    Attributes:
        status: "ok" or "failed".
        energy: Total energy of the cell, eV (None when failed).
        energy_per_atom: Energy per atom, eV/atom.
        forces: Per-atom forces, eV/Å, shape (n_atoms, 3), in the order of the input structure's sites.
        stress: Voigt stress, GPa (ASE sign convention).
        reason: Why a failed label failed (one line).
        failure_kind: The typed cause of a failure (`FailureKind`), None when ok.
        transient: True for a failure that says nothing lasting about the structure (never stored; retried).
        final_structure: The geometry the energy, forces and stress belong to (None when failed).
        frames: The relaxation's ionic steps (empty for a single point).
        wall_time: Seconds spent, all attempts included.
        attempts: Attempts made.
        settings: The calculator settings actually used.
        metadata: Anything else (SCF iterations, code version, relaxation convergence, ...).
    """

    status: Literal["ok", "failed"]
    energy: float | None = None
    energy_per_atom: float | None = None
    forces: list[list[float]] | None = None
    stress: list[float] | None = None
    reason: str | None = None
    failure_kind: FailureKind | None = None
    transient: bool = False
    final_structure: Structure | None = None
    frames: list[RelaxationFrame] = field(default_factory=list)
    wall_time: float = 0.0
    attempts: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failure(
        cls,
        error: OracleError,
        *,
        wall_time: float,
        attempts: int,
        settings: dict[str, Any],
        metadata: dict[str, Any],
    ) -> OracleResult:
        """The failed result of a typed oracle fault."""
        return cls(
            status="failed",
            reason=str(error).splitlines()[0][:300] if str(error) else type(error).__name__,
            failure_kind=error.kind,
            transient=error.transient,
            wall_time=wall_time,
            attempts=attempts,
            settings=settings,
            metadata=metadata,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (structures as pymatgen dicts), e.g. to cross a process boundary."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["final_structure"] = None if self.final_structure is None else self.final_structure.as_dict()
        data["frames"] = [frame.to_dict() for frame in self.frames]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OracleResult:
        data = dict(data)
        final = data.pop("final_structure", None)
        frames = data.pop("frames", None) or []
        return cls(
            **data,
            final_structure=None if final is None else Structure.from_dict(final),
            frames=[RelaxationFrame.from_dict(f) for f in frames],
        )


class Oracle(ABC):
    """Labels structures. Implementations declare what they compute, as ASE calculators do.

    Subclasses set `name`, `Settings` (an `OracleSettings` subclass with `kind: Literal[name]`),
    `implemented_properties`, `is_dft`, `level_of_theory`, `energy_convention` and, where known, `supported_elements`.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[OracleSettings]]
    implemented_properties: ClassVar[tuple[str, ...]] = ("energy", "forces", "stress")
    is_dft: ClassVar[bool] = True
    level_of_theory: ClassVar[Literal["dft", "surrogate", "toy"]] = "dft"
    """What its energies are: first-principles, a machine-learned surrogate, or a toy potential."""
    energy_convention: ClassVar[Literal["uncorrected", "toy"]] = "uncorrected"
    """What its total energies carry: "uncorrected", a plain calculation's (no fitted corrections such as the
    Materials Project 2020 anion and U terms: every DFT code here, and SevenNet-0, trained on MPtrj's raw
    energies), or "toy", no relation to DFT. An emulator whose own energies carry corrections starts from them."""
    supported_elements: ClassVar[frozenset[str] | None] = None

    def __init__(self, settings: OracleSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings(kind=self.name)

    def check(self, structure: Structure) -> None:
        """Raise `UnsupportedStructure` (one line, with the fix) if this oracle cannot label `structure`.

        The size guard (`check_size`) runs first, so a huge cell is refused before anything costly is done with it.
        """
        self.check_size(structure)
        if self.supported_elements is None:
            return
        bad = sorted({el.symbol for el in structure.composition.elements} - self.supported_elements)
        if bad:
            raise UnsupportedStructure(
                f"{self.name} cannot treat element(s) {', '.join(bad)}", fix="choose another oracle"
            )

    def memory_estimate_gb(self, structure: Structure) -> float | None:
        """Estimated peak memory of labelling `structure` with these settings, GB (all processes together).

        Implementations override this with an estimate from their own cost model; None means unknown, and then
        only `max_atoms` guards the size.
        """
        return None

    def check_size(self, structure: Structure) -> None:
        """Raise `StructureTooLarge` if `structure` exceeds `max_atoms` or its memory estimate `max_memory_gb`."""
        n, limit = len(structure), self.settings.max_atoms
        if n > limit:
            raise StructureTooLarge(
                f"{n} atoms exceed the {self.name} oracle's limit of {limit}",
                fix="label a smaller cell or raise oracle.max_atoms",
            )
        memory = self.memory_estimate_gb(structure)
        if memory is not None and memory > self.settings.max_memory_gb:
            raise StructureTooLarge(
                f"{n} atoms need ~{memory:.3g} GB with these {self.name} settings, over max_memory_gb"
                f" {self.settings.max_memory_gb:g}",
                fix="label a smaller cell, loosen the settings or raise oracle.max_memory_gb",
            )

    @abstractmethod
    def label(self, structure: Structure, *, workdir: Path) -> OracleResult:
        """Label `structure`, using `workdir` (created if needed) for calculator files.

        Never raises for calculation faults: a typed `OracleError` becomes a failed `OracleResult` with its
        `failure_kind`, `transient` flag and reason (`OracleResult.failure`). A finished result stored in
        `workdir` is returned without recomputation.
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
