"""How the design checks run MLFF molecular dynamics: relax with the model, then NVT from the relaxed cell.

Thermal stability (`loop.design.thermal`) and ionic conductivity (`loop.design.conductivity`) both take these
settings and these two steps, so they start from the same kind of cell and run the same MD
(`emulator.dynamics.run_md`).

Units: temperature K, durations ps, timestep fs, lengths Å, force threshold eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pymatgen.core import Structure

from emulator.base import RelaxResult
from emulator.dynamics import MDTrajectory, run_md
from emulator.force_field import relax_structure, smallest_supercell

# NVT keeps the cell fixed: a cell the model still strains would hold that pressure through the whole run.
RELAX_FMAX = 0.02  # eV/Å
RELAX_STEPS = 300


@dataclass(frozen=True)
class MDSettings:
    """The MD settings of one design check, the same at every temperature it runs.

    Attributes:
        checkpoint: Emulator checkpoint directory; None = the shipped CHGNet 0.3.0.
        seed: Seed of velocities and thermostat.
        timestep: Integration step, fs.
        equilibration: Thermalisation before production, ps (dropped).
        min_length: Smallest face-to-face width of the MD supercell, Å.
        frame_interval: Steps between stored frames.
    """

    checkpoint: Path | None = None
    seed: int = 0
    timestep: float = 2.0
    equilibration: float = 0.5
    min_length: float = 8.0
    frame_interval: int = 10

    def relax(self, *, structure: Structure) -> RelaxResult:
        """`structure` relaxed (cell and positions) with the model that runs the MD, so NVT starts unstrained."""
        return relax_structure(
            structure=structure, checkpoint=self.checkpoint, fmax=RELAX_FMAX, steps=RELAX_STEPS
        )

    def supercell(self, *, structure: Structure) -> Structure:
        """The supercell `run` puts `structure` in (its smallest cell at least `min_length` Å wide, repeated)."""
        cell, repeats = smallest_supercell(structure, min_length=self.min_length)
        return cell * repeats

    def run(self, *, structure: Structure, temperature: float, duration: float) -> MDTrajectory:
        """One NVT run: a unit of work an executor can run and store alone.

        Args:
            structure: The crystal, already relaxed by `relax`.
            temperature: Thermostat temperature, K.
            duration: Production length, ps.

        Raises:
            EmulatorError: A non-positive setting, or a geometry the model cannot evaluate.
        """
        return run_md(
            structure=structure,
            temperature=temperature,
            duration=duration,
            timestep=self.timestep,
            equilibration=self.equilibration,
            min_length=self.min_length,
            checkpoint=self.checkpoint,
            seed=self.seed,
            frame_interval=self.frame_interval,
        )


# The default of the checks that take settings: the shipped CHGNet 0.3.0 with the defaults above (frozen, so shareable).
DEFAULT_MD = MDSettings()

__all__ = ["DEFAULT_MD", "RELAX_FMAX", "RELAX_STEPS", "MDSettings"]
