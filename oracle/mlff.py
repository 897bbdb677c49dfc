"""A surrogate oracle: the universal force field SevenNet-0 through ASE. Not DFT.

SevenNet-0 (a NequIP-style equivariant network trained on the MPtrj PBE(+U) relaxations) is a different model
family from the CHGNet emulator, so its labels are a fair, cheap stand-in for DFT in benchmarks with hundreds of
labels and many seeds, and a screening tier before DFT. Its weights ship inside the ``sevenn`` wheel; nothing is
downloaded. Its energies are their own level of theory: the settings hash differs from every DFT oracle's, so a
campaign's hull is rebuilt from its labels only and never mixed with DFT. `level_of_theory` is "surrogate".

It relaxes positions and cell by default (bounded steps, ``relax_fmax``), as the DFT oracles do when asked, and
expects the emulator-relaxed geometry as its starting point, so a few tens of steps suffice.

Units: energies eV and eV/atom, forces eV/Å, stress GPa, fmax eV/Å, times s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pymatgen.core import Structure

from oracle import calc_worker
from oracle.ase_runner import AseOracle, AseOracleSettings, ChildExit
from oracle.base import register
from oracle.cost import pair_potential_memory_gb


class MLFFSettings(AseOracleSettings):
    """Settings of the force-field oracle.

    Attributes:
        model: The universal potential; "7net-0" is SevenNet-0 as shipped in the ``sevenn`` wheel.
        relax_steps: Step cap of the cell + positions relaxation (0 = single point at the given geometry).
        relax_fmax: Force (and cell-filter stress) convergence of that relaxation, eV/Å.
        in_process: Run the calculator in this process with the model kept loaded (about 0.1-0.5 s per
            evaluation instead of several seconds of start-up per structure). The wall-time limit then cannot
            interrupt a calculation; set False for the child-process isolation of the DFT oracles.
    """

    kind: Literal["mlff"] = "mlff"
    model: Literal["7net-0"] = "7net-0"
    relax_steps: int = Field(200, ge=0)
    relax_fmax: float = Field(0.05, gt=0)
    in_process: bool = True
    max_attempts: int = 1
    timeout_s: float = 600.0

    non_physics_fields: ClassVar[frozenset[str]] = frozenset(
        {"max_attempts", "timeout_s", "cpu_timeout_s", "in_process"}
    )

    @property
    def potential(self) -> str:
        return f"sevennet:{self.model}"


@register
class MLFFOracle(AseOracle):
    """SevenNet-0 labels (energy, forces, stress after a bounded relaxation); a surrogate, `is_dft` is False."""

    name = "mlff"
    calculator = "sevennet"
    Settings = MLFFSettings
    implemented_properties = ("energy", "forces", "stress")
    is_dft = False
    level_of_theory = "surrogate"
    settings: MLFFSettings

    def calculator_job(self, structure: Structure, *, attempt: int, directory: Path) -> dict[str, Any]:
        return {"model": self.settings.model}

    def memory_estimate_gb(self, structure: Structure) -> float:
        """Rough peak memory, GB: the loaded model plus per-atom equivariant features and neighbour lists
        (`oracle.cost.pair_potential_memory_gb` at about 2 MB per atom)."""
        return pair_potential_memory_gb(structure, bytes_per_atom=2e6)

    def code_version(self) -> str:
        return f"sevennet {self.settings.model}"

    def run_attempt(self, job_file: Path, *, directory: Path) -> ChildExit:
        """In process (see `MLFFSettings.in_process`): the same worker code, with the model kept loaded."""
        if not self.settings.in_process:
            return super().run_attempt(job_file, directory=directory)
        job = json.loads(job_file.read_text())
        answer = calc_worker.run(job, directory)
        out = directory / job.get("output", "answer.json")
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(answer))
        os.replace(tmp, out)
        return ChildExit(0)
