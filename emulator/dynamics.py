"""Molecular dynamics with the emulator's force field: NVT on a supercell, frames kept for diffusion and melting checks.

The thermostat is Bussi's stochastic velocity rescaling (ASE `Bussi`): a canonical ensemble with a global
thermostat, so the atoms' own dynamics (and hence diffusion) are perturbed less than by a per-atom Langevin
friction. Equilibration couples it tightly (10 timesteps), production loosely (0.1 ps). Velocities are drawn from Maxwell-Boltzmann at the target temperature with a seeded generator, and the
thermostat's noise uses the same seed, so a run is reproducible on one machine.

Units: temperature K, time ps (timestep fs), lengths Å, energies eV.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import units
from ase.md.bussi import Bussi
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from emulator.base import EmulatorError
from emulator.calculator import PotentialCalculator
from emulator.force_field import load_force_field, smallest_supercell

# Bussi relaxation time: long enough not to disturb vibrations (~0.1 ps periods), short enough to equilibrate
# within a fraction of a picosecond.
THERMOSTAT_TIME = 0.1  # ps
EQUILIBRATION_THERMOSTAT_STEPS = 10  # Bussi relaxation time during equilibration, in timesteps


@dataclass(frozen=True, eq=False)
class MDTrajectory:
    """One NVT run on a supercell: the production part (equilibration dropped).

    Attributes:
        structure: The supercell at the first production frame (atoms wrapped into the cell), Å.
        positions: (n_frames, n_atoms, 3) unwrapped Cartesian positions, Å; frame 0 is `structure`. Unwrapped:
            an atom that crosses a cell face keeps moving continuously, so displacements are differences.
        frame_time: Time between frames, ps.
        timestep: Integration step, fs.
        frame_interval: Integration steps between frames.
        temperature: Target (thermostat) temperature, K.
        mean_temperature: Kinetic temperature averaged over the production frames, K.
        equilibration: Length of the dropped equilibration, ps.
        seed: Seed of the velocities and the thermostat.
        supercell: Repeats of the input cell along a, b, c.
    """

    structure: Structure
    positions: np.ndarray
    frame_time: float
    timestep: float
    frame_interval: int
    temperature: float
    mean_temperature: float
    equilibration: float
    seed: int
    supercell: tuple[int, int, int]

    @property
    def duration(self) -> float:
        """Production length covered by the frames, ps."""
        return self.frame_time * (len(self.positions) - 1)

    @property
    def frac_coords(self) -> np.ndarray:
        """(n_frames, n_atoms, 3) unwrapped fractional coordinates of the (fixed) supercell lattice."""
        return self.positions @ self.structure.lattice.inv_matrix

    @property
    def final(self) -> Structure:
        """The last frame as a structure (atoms wrapped into the cell)."""
        return Structure(
            self.structure.lattice,
            self.structure.species,
            self.positions[-1],
            coords_are_cartesian=True,
            to_unit_cell=True,
        )

    def displacements(self) -> np.ndarray:
        """(n_atoms, n_frames, 3) Cartesian displacement of every atom from frame 0, Å."""
        return np.transpose(self.positions - self.positions[0], (1, 0, 2))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (positions rounded to 1e-5 Å)."""
        return {
            "structure": self.structure.as_dict(),
            "positions": np.round(self.positions, 5).tolist(),
            "frame_time": self.frame_time,
            "timestep": self.timestep,
            "frame_interval": self.frame_interval,
            "temperature": self.temperature,
            "mean_temperature": self.mean_temperature,
            "equilibration": self.equilibration,
            "seed": self.seed,
            "supercell": list(self.supercell),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MDTrajectory:
        return cls(
            structure=Structure.from_dict(data["structure"]),
            positions=np.asarray(data["positions"], dtype=float),
            frame_time=float(data["frame_time"]),
            timestep=float(data["timestep"]),
            frame_interval=int(data["frame_interval"]),
            temperature=float(data["temperature"]),
            mean_temperature=float(data["mean_temperature"]),
            equilibration=float(data["equilibration"]),
            seed=int(data["seed"]),
            supercell=tuple(int(n) for n in data["supercell"]),  # type: ignore[arg-type]
        )


def run_md(
    *,
    structure: Structure,
    temperature: float,
    duration: float,
    timestep: float = 2.0,
    equilibration: float = 0.5,
    min_length: float = 8.0,
    checkpoint: Path | None = None,
    seed: int = 0,
    frame_interval: int = 10,
) -> MDTrajectory:
    """NVT molecular dynamics of `structure` with the emulator's ensemble-mean force field.

    The cell is fixed (the caller relaxes it first if it wants the model's lattice). The run is `equilibration`
    ps, whose frames are dropped, then `duration` ps of production, one frame every `frame_interval` steps.

    Args:
        structure: The crystal (its primitive, conventional or given cell is repeated, whichever is smallest).
        temperature: Thermostat temperature, K.
        duration: Production length, ps.
        timestep: Integration step, fs (2 fs suits Li at up to ~1500 K).
        equilibration: Thermalisation before production, ps.
        min_length: Smallest face-to-face width of the supercell, Å.
        checkpoint: Emulator checkpoint directory (`ChgnetEnsemble.save`); None = the shipped CHGNet 0.3.0.
        seed: Seed of the initial velocities and of the thermostat noise.
        frame_interval: Steps between stored frames.

    Raises:
        EmulatorError: A non-positive temperature, length or step, or a geometry the model cannot evaluate.
    """
    if not (temperature > 0 and duration > 0 and timestep > 0 and equilibration >= 0 and frame_interval >= 1):
        raise EmulatorError(
            "run_md needs temperature > 0 K, duration > 0 ps, timestep > 0 fs, equilibration >= 0 ps and "
            f"frame_interval >= 1 (got {temperature}, {duration}, {timestep}, {equilibration}, {frame_interval})"
        )
    n_production = max(1, round(duration * 1000.0 / timestep))
    n_frames = max(1, n_production // frame_interval)
    n_equilibration = round(equilibration * 1000.0 / timestep)
    unit, repeats = smallest_supercell(structure, min_length=min_length)
    cell = unit * repeats
    model = load_force_field(checkpoint=checkpoint)
    atoms = AseAtomsAdaptor.get_atoms(cell)
    atoms.calc = PotentialCalculator(potential=model.mean_potential)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)

    def thermostat(taut: float) -> Bussi:
        return Bussi(
            atoms,
            timestep=timestep * units.fs,
            temperature_K=temperature,
            taut=taut * 1000.0 * units.fs,
            rng=rng,
            logfile=None,
        )

    with contextlib.redirect_stdout(io.StringIO()):
        if n_equilibration:
            # Velocities drawn at T lose about half their energy to the potential within a vibration period; a
            # tightly coupled thermostat puts it back within the equilibration instead of over the production.
            thermostat(EQUILIBRATION_THERMOSTAT_STEPS * timestep / 1000.0).run(n_equilibration)
        dyn = thermostat(THERMOSTAT_TIME)
        start = atoms.get_positions()
        lattice = Lattice(atoms.get_cell().array)
        # Production positions relative to a wrapped start: ASE does not wrap during MD, so they stay continuous.
        wrapped = Structure(lattice, cell.species, start, coords_are_cartesian=True, to_unit_cell=True)
        shift = wrapped.cart_coords - start
        frames = [start + shift]
        temperatures = [atoms.get_temperature()]
        for _ in range(n_frames):
            dyn.run(frame_interval)
            frames.append(atoms.get_positions() + shift)
            temperatures.append(atoms.get_temperature())
    return MDTrajectory(
        structure=wrapped,
        positions=np.asarray(frames, dtype=float),
        frame_time=frame_interval * timestep / 1000.0,
        timestep=float(timestep),
        frame_interval=int(frame_interval),
        temperature=float(temperature),
        mean_temperature=float(np.mean(temperatures)),
        equilibration=n_equilibration * timestep / 1000.0,
        seed=int(seed),
        supercell=repeats,
    )


__all__ = ["MDTrajectory", "run_md"]
