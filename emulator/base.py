"""The emulator protocol: a machine-learned force-field ensemble that predicts, relaxes and says how sure it is.

Units: energy per atom eV/atom, forces eV/Å, stress GPa (Voigt xx, yy, zz, yz, xz, xy, ASE sign convention), Å.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict
from pymatgen.core import Structure

from emulator.calibration import Calibration, HeldOutPairs

_T = TypeVar("_T")


class EmulatorError(Exception):
    """Bad input for the emulator (unreadable structure, unsupported element, empty list)."""


class EmulatorSettings(BaseModel):
    """Settings common to every emulator; implementations subclass with `kind: Literal[...]`."""

    model_config = ConfigDict(extra="forbid")

    kind: str


@dataclass
class EnsemblePrediction:
    """Ensemble mean and spread for n structures.

    Attributes:
        energy_per_atom: (n,) mean, eV/atom.
        energy_per_atom_std: (n,) standard deviation across members, eV/atom.
        member_energy_per_atom: (K, n) every member's prediction, eV/atom.
        forces: n arrays (n_atoms_i, 3) of mean forces, eV/Å (empty list if not computed).
        forces_std: n arrays (n_atoms_i, 3), eV/Å.
        stress: (n, 6) mean stress, GPa (None if not computed).
        stress_std: (n, 6), GPa.
    """

    energy_per_atom: np.ndarray
    energy_per_atom_std: np.ndarray
    member_energy_per_atom: np.ndarray
    forces: list[np.ndarray] = field(default_factory=list)
    forces_std: list[np.ndarray] = field(default_factory=list)
    stress: np.ndarray | None = None
    stress_std: np.ndarray | None = None


@dataclass
class RelaxResult:
    """One relaxation with the ensemble mean.

    Attributes:
        structure: Relaxed structure (cell and positions).
        energy_per_atom: Ensemble-mean energy at the relaxed geometry, eV/atom.
        energy_per_atom_std: Ensemble spread there, eV/atom.
        n_steps: Optimiser steps taken.
        converged: Whether max force fell below `fmax` within the step budget.
    """

    structure: Structure
    energy_per_atom: float
    energy_per_atom_std: float
    n_steps: int
    converged: bool


@dataclass
class LabelledStructure:
    """A training example from the oracle: total energy eV, forces eV/Å (n_atoms, 3), stress GPa Voigt (6,)."""

    structure: Structure
    energy: float
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None

    @property
    def energy_per_atom(self) -> float:
        return self.energy / len(self.structure)


class Emulator(ABC):
    """An ensemble of force fields. Declares its capabilities as class attributes."""

    name: ClassVar[str]
    Settings: ClassVar[type[EmulatorSettings]]
    implemented_properties: ClassVar[tuple[str, ...]] = ("energy", "forces", "stress")

    @abstractmethod
    def predict(self, structures: Sequence[Structure], *, return_std: bool = True) -> EnsemblePrediction:
        """Ensemble mean (and spread) of energy per atom, forces and stress."""

    @abstractmethod
    def relax(
        self, structures: Sequence[Structure], *, fmax: float = 0.1, steps: int = 100
    ) -> list[RelaxResult]:
        """Relax cell and positions with the ensemble-mean potential; fmax in eV/Å."""

    @abstractmethod
    def fine_tune(self, data: Sequence[LabelledStructure], **kwargs: Any) -> dict[str, float]:
        """Refit reference energies and fine-tune members on oracle labels; returns metrics."""

    @abstractmethod
    def held_out_pairs(self, data: Sequence[LabelledStructure], *, round: int) -> HeldOutPairs:
        """Raw (uncalibrated) mean and spread for labels this model has not trained on, paired with the labels."""

    def loo_pairs(self, data: Sequence[LabelledStructure], *, round: int) -> HeldOutPairs:
        """Leave-one-out (raw mean, spread, label) pairs on the labels the model was fitted on, where the model can
        give honest ones cheaply; none by default. Calibration uses them beside the held-out history."""
        return HeldOutPairs()

    @property
    @abstractmethod
    def calibration(self) -> Calibration:
        """The bias (eV/atom) and std scale applied to every prediction."""

    @abstractmethod
    def calibrate(
        self,
        pairs: HeldOutPairs,
        *,
        prior_weight: float,
        previous: Calibration | None = None,
        fit_bias: bool | None = None,
    ) -> Calibration:
        """Fit bias and scale on all held-out pairs so far, shrunk toward `previous` (default: the fit in use),
        and adopt the result; `fit_bias` False keeps the bias at 0 (None: the emulator's setting)."""

    @abstractmethod
    def save(self, directory: Path) -> dict[str, Any]:
        """Write checkpoints atomically into `directory`; returns the manifest."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Emulator:
        """Load what `save` wrote."""


_REGISTRY: dict[str, type[Emulator]] = {}


def register(cls: type[Emulator]) -> type[Emulator]:
    """Class decorator: make an emulator available by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def _registered(registry: dict[str, _T], name: str, *, what: str) -> _T:
    """`registry[name]`, or a KeyError naming `what` was unknown and every registered name."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}; choose one of: {', '.join(sorted(registry))}") from None


def get_emulator_class(name: str) -> type[Emulator]:
    return _registered(_REGISTRY, name, what="emulator")


def emulator_names() -> list[str]:
    """Registered emulator names, sorted."""
    return sorted(_REGISTRY)


def settings_models() -> tuple[type[EmulatorSettings], ...]:
    return tuple(cls.Settings for cls in _REGISTRY.values())


# --- committee members: other model families screened beside the ensemble -----------------------------------------


class CommitteeMemberSettings(BaseModel):
    """Settings common to every committee member; implementations subclass with `kind: Literal[...]`."""

    model_config = ConfigDict(extra="forbid")

    kind: str

    @property
    def potential(self) -> str:
        """The potential this member evaluates ("family:model"), compared with the oracle's own."""
        return self.kind


class CommitteeMember(ABC):
    """A frozen universal potential of another model family, screened beside the emulator ensemble.

    Members differ from the ensemble in training data and architecture, so where they disagree with it the
    candidate is outside what either knows well. They are never fine-tuned: the loop corrects their systematic
    offsets by measuring a candidate against the member's own energies of the oracle hull's phases instead.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[CommitteeMemberSettings]]

    @abstractmethod
    def relax(self, structures: Sequence[Structure], *, fmax: float, steps: int) -> list[RelaxResult]:
        """Relax cell and positions on this member's potential; fmax in eV/Å. `energy_per_atom_std` is 0."""


_MEMBERS: dict[str, type[CommitteeMember]] = {}


def register_member(cls: type[CommitteeMember]) -> type[CommitteeMember]:
    """Class decorator: make a committee member available by its `name`."""
    _MEMBERS[cls.name] = cls
    return cls


def get_member_class(name: str) -> type[CommitteeMember]:
    return _registered(_MEMBERS, name, what="committee member")


def member_settings_models() -> tuple[type[CommitteeMemberSettings], ...]:
    return tuple(cls.Settings for cls in _MEMBERS.values())
