"""SevenNet-0 as a committee member: a universal potential of another family than CHGNet.

Its weights ship inside the ``sevenn`` wheel, so nothing is fetched at run time. It is used frozen; `sevenn` and
torch are imported when a member is built, not when this module is imported.

Units: eV/atom, eV/Å, GPa (3×3 stress for the relaxation driver), Å.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from emulator.base import (
    CommitteeMember,
    CommitteeMemberSettings,
    EmulatorError,
    RelaxResult,
    register_member,
)
from emulator.calculator import PotentialEvaluation
from emulator.multihead import EV_PER_A3_TO_GPA
from emulator.relaxation import relax_one


class SevenNetMemberSettings(CommitteeMemberSettings):
    """Settings of the SevenNet committee member.

    Attributes:
        model: The pretrained potential; "7net-0" is SevenNet-0 as shipped in the ``sevenn`` wheel.
    """

    kind: Literal["sevennet"] = "sevennet"
    model: Literal["7net-0"] = "7net-0"

    @property
    def potential(self) -> str:
        return f"sevennet:{self.model}"


@register_member
class SevenNetMember(CommitteeMember):
    """SevenNet-0, relaxing with FIRE on a Fréchet cell filter like the ensemble does."""

    name: ClassVar[str] = "sevennet"
    Settings: ClassVar[type[CommitteeMemberSettings]] = SevenNetMemberSettings

    def __init__(self, *, settings: SevenNetMemberSettings | None = None) -> None:
        self.settings = settings or SevenNetMemberSettings()
        self._calculator: Any = None

    def _calc(self) -> Any:
        if self._calculator is None:
            try:
                from sevenn.calculator import SevenNetCalculator
            except ImportError as exc:
                raise EmulatorError(
                    "the sevennet committee member needs the sevenn package; install it (pip install sevenn) "
                    "or remove it from committee"
                ) from exc
            # SevenNetCalculator prints its model card on load.
            with contextlib.redirect_stdout(io.StringIO()):
                self._calculator = SevenNetCalculator(model=self.settings.model, device="cpu")
        return self._calculator

    def _potential(self, structure: Structure, *, stress: bool) -> PotentialEvaluation:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = self._calc()
        return PotentialEvaluation(
            energy=float(atoms.get_potential_energy()),
            forces=np.asarray(atoms.get_forces()),
            stress=np.asarray(atoms.get_stress(voigt=False)) * EV_PER_A3_TO_GPA if stress else None,
        )

    def relax(self, structures: Sequence[Structure], *, fmax: float, steps: int) -> list[RelaxResult]:
        out = []
        for structure in structures:
            relaxed = relax_one(
                structure,
                potential=self._potential,
                fmax=fmax,
                steps=steps,
                optimizer="FIRE",
                relax_cell=True,
            )
            energy = self._potential(relaxed.structure, stress=False).energy
            out.append(
                RelaxResult(
                    structure=relaxed.structure,
                    energy_per_atom=energy / len(relaxed.structure),
                    energy_per_atom_std=0.0,
                    n_steps=relaxed.n_steps,
                    converged=relaxed.converged,
                )
            )
        return out
