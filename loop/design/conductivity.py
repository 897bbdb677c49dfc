"""Ionic conductivity from MLFF molecular dynamics: diffusivity per temperature, Arrhenius fit, 300 K estimate.

Method:
* Each temperature is one NVT run (`loop.design.md_runs.MDSettings.run`) on the model-relaxed cell. The tracer diffusivity D
  of the mobile species comes from `pymatgen.analysis.diffusion.analyzer.DiffusionAnalyzer` (MSD against time,
  framework drift removed, smoothed "max" mode: every time origin, lags from 1 ps; runs too short for that fall
  back to the single-origin MSD), σ(T) from D by the Nernst-Einstein relation with a Haven ratio of
  1 (`get_conversion_factor`: charge from the valence shell, e.g. +1 for Li).
* A temperature counts as *resolved* when the species' mean-square displacement at the end of the run exceeds
  `min_msd` (1 Å² by default): below that, a few picoseconds show vibrations, not hops, and the fitted "D" is noise.
* With at least three resolved temperatures, ln D is fitted linearly against 1/T (`fit_arrhenius`, unweighted),
  giving the activation energy and D, hence σ, at 300 K. Its uncertainty propagates the fit's covariance
  cov = v (AᵀA)⁻¹ of (slope, intercept), where v is the larger of the residual variance (RSS / (n - 2)) and the
  mean variance of ln D from `DiffusionAnalyzer`'s own standard deviations, to ln D(300 K); the interval is
  exp(ln σ ± 1.96 sd) (normal approximation; with three temperatures the residual variance has one degree of freedom,
  so treat it as indicative).
* Fewer resolved temperatures, or a fit whose activation energy is not positive (D not rising with T: noise, or a
  framework that changed between runs): σ at the MD temperatures only; the 300 K value is unknown (`extrapolated`
  False).

Statistical limits: a few picoseconds on ≤ ~100 atoms gives D to within a factor of ~2 at best when hops happen,
and nothing below ~1e-6 cm²/s (one hop per run); the 300 K extrapolation multiplies that error by the Arrhenius
lever arm. Rank candidates with it; do not quote it as a measurement.

Units: temperatures K, durations ps, D cm²/s, σ mS/cm, activation energy eV, MSD Å².
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pymatgen.analysis.diffusion.analyzer import DiffusionAnalyzer, fit_arrhenius, get_conversion_factor
from pymatgen.core import Element, Structure
from scipy import constants

from emulator.dynamics import MDTrajectory
from loop.design.md_runs import DEFAULT_MD, MDSettings
from loop.errors import InputError

ROOM_TEMPERATURE = 300.0  # K
MIN_TEMPERATURES = 3
Z_95 = 1.959963984540054
MIN_MSD = 1.0  # Å²


@dataclass(frozen=True)
class ConductivityResult:
    """Diffusivity and conductivity of one species, per MD temperature and extrapolated to 300 K.

    Attributes:
        specie: The mobile species (element symbol).
        temperatures: Thermostat temperatures of the runs, K (ascending).
        mean_temperatures: Kinetic temperatures averaged over each production run, K.
        durations: Production length of each run, ps.
        diffusivity: Tracer diffusivity D at each temperature, cm²/s.
        diffusivity_std: Its standard deviation from the MSD fit, cm²/s.
        conductivity: σ at each temperature (Nernst-Einstein, Haven ratio 1), mS/cm.
        msd: Mean-square displacement of the species at the end of each run (drift removed), Å².
        resolved: Whether each run saw diffusion (msd ≥ `min_msd`).
        smoothing: `DiffusionAnalyzer`'s MSD mode per run: "max" (all time origins, lags ≥ 1 ps) or "none"
            (single origin; runs shorter than about 1 ps of lag).
        min_msd: The resolution threshold, Å².
        n_mobile: Atoms of the species in the MD supercell.
        n_atoms: Atoms in the MD supercell.
        activation_energy: Arrhenius activation energy, eV (None without ≥ 3 resolved temperatures; reported even
            when not positive, but then nothing is extrapolated).
        activation_energy_std: Its standard error, eV.
        conductivity_300k: σ extrapolated to 300 K, mS/cm (None: unknown).
        conductivity_300k_low: Lower end of its 95 % interval, mS/cm.
        conductivity_300k_high: Upper end, mS/cm.
        extrapolated: Whether there is a 300 K value (an Arrhenius fit over ≥ 3 resolved temperatures, Ea > 0).
        note: One line: how the 300 K value was obtained or why it is unknown.
    """

    specie: str
    temperatures: tuple[float, ...]
    mean_temperatures: tuple[float, ...]
    durations: tuple[float, ...]
    diffusivity: tuple[float, ...]
    diffusivity_std: tuple[float, ...]
    conductivity: tuple[float, ...]
    msd: tuple[float, ...]
    resolved: tuple[bool, ...]
    smoothing: tuple[str, ...]
    min_msd: float
    n_mobile: int
    n_atoms: int
    activation_energy: float | None
    activation_energy_std: float | None
    conductivity_300k: float | None
    conductivity_300k_low: float | None
    conductivity_300k_high: float | None
    extrapolated: bool
    note: str

    @property
    def max_temperature_conductivity(self) -> float:
        """σ at the highest temperature run, mS/cm."""
        return self.conductivity[-1]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConductivityResult:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class _ArrheniusFit:
    activation_energy: float  # eV
    activation_energy_std: float  # eV
    ln_d_300k: float  # ln(cm²/s)
    ln_d_300k_std: float


def _arrhenius(temperatures: np.ndarray, d: np.ndarray, d_std: np.ndarray) -> _ArrheniusFit:
    """ln D = ln c - Ea / (k T), fitted by `fit_arrhenius`; the covariance as the module docstring says."""
    ea, c, _ = fit_arrhenius(temperatures, d, mode="linear")
    design = np.column_stack([1.0 / temperatures, np.ones_like(temperatures)])
    slope, intercept = -ea * constants.e / constants.k, math.log(c)
    residual = np.log(d) - design @ np.array([slope, intercept])
    n = len(temperatures)
    residual_var = float(residual @ residual) / (n - 2)
    point_var = float(np.mean((d_std / d) ** 2))
    cov = max(residual_var, point_var) * np.linalg.inv(design.T @ design)
    grad = np.array([1.0 / ROOM_TEMPERATURE, 1.0])
    return _ArrheniusFit(
        activation_energy=float(ea),
        activation_energy_std=float(math.sqrt(cov[0, 0]) * constants.k / constants.e),
        ln_d_300k=float(slope / ROOM_TEMPERATURE + intercept),
        ln_d_300k_std=float(math.sqrt(grad @ cov @ grad)),
    )


def _diffusion(trajectory: MDTrajectory, specie: str) -> tuple[float, float, float, str]:
    """(D cm²/s, its std cm²/s, end-of-run MSD Å² with the framework's drift removed, MSD smoothing) of one run."""
    structure = trajectory.structure
    displacements = trajectory.displacements()
    mobile = np.array([site.specie.symbol == specie for site in structure])
    args = (
        structure,
        displacements,
        specie,
        trajectory.temperature,
        trajectory.timestep,
        trajectory.frame_interval,
    )
    try:
        analyzer = DiffusionAnalyzer(*args, smoothed="max")
        smoothing = "max"
    except ValueError:
        # "max" fits lags from 1 ps on (past the ballistic regime); a shorter run gets the single-origin MSD.
        analyzer = DiffusionAnalyzer(*args, smoothed=False)
        smoothing = "none"
    drift = displacements[~mobile].mean(axis=0) if (~mobile).any() else 0.0
    corrected = displacements[mobile] - drift
    msd = float(np.mean(np.sum(corrected[:, -1] ** 2, axis=-1)))
    return float(analyzer.diffusivity), float(analyzer.diffusivity_std_dev), msd, smoothing


def conductivity_from_trajectories(
    *, trajectories: Sequence[MDTrajectory], specie: str = "Li", min_msd: float = MIN_MSD
) -> ConductivityResult:
    """Diffusivity, conductivity and the 300 K extrapolation from MD runs of one structure at several temperatures.

    Args:
        trajectories: One run per temperature (any order), all of the same supercell.
        specie: The mobile species.
        min_msd: End-of-run MSD (Å²) below which a run counts as showing no diffusion.

    Raises:
        InputError: No runs, two runs at one temperature, runs of different cells, or a species not in the cell.
    """
    if not trajectories:
        raise InputError("conductivity needs at least one MD run")
    runs = sorted(trajectories, key=lambda t: t.temperature)
    temps = np.array([t.temperature for t in runs])
    if len(set(temps.tolist())) != len(temps):
        raise InputError(f"conductivity got two MD runs at one temperature ({temps.tolist()} K)")
    if len({t.structure.composition.formula for t in runs}) != 1:
        raise InputError("conductivity runs must all be of the same supercell")
    structure = runs[0].structure
    if Element(specie) not in structure.composition:
        raise InputError(
            f"the mobile species {specie} is not in {structure.composition.reduced_formula}; name one it holds"
        )
    measured = [_diffusion(t, specie) for t in runs]
    d = np.array([m[0] for m in measured])
    d_std = np.array([m[1] for m in measured])
    msd = np.array([m[2] for m in measured])
    smoothing = tuple(m[3] for m in measured)
    sigma = np.array([d[i] * get_conversion_factor(structure, specie, temps[i]) for i in range(len(runs))])
    resolved = (msd >= min_msd) & (d > 0)
    fit = None
    if resolved.sum() >= MIN_TEMPERATURES:
        fit = _arrhenius(temps[resolved], d[resolved], np.maximum(d_std[resolved], 0.0))
    sigma_300 = low = high = None
    if fit is not None and fit.activation_energy <= 0:
        note = (
            f"D does not rise with temperature over {temps[resolved].min():.0f}-{temps[resolved].max():.0f} K "
            f"(fitted Ea {fit.activation_energy:+.2f} eV): no activated process within the MD's statistics, "
            "300 K value unknown"
        )
    elif fit is not None:
        factor = get_conversion_factor(structure, specie, ROOM_TEMPERATURE)
        sigma_300 = math.exp(fit.ln_d_300k) * factor
        low = math.exp(fit.ln_d_300k - Z_95 * fit.ln_d_300k_std) * factor
        high = math.exp(fit.ln_d_300k + Z_95 * fit.ln_d_300k_std) * factor
        note = (
            f"Arrhenius fit of ln D over {int(resolved.sum())} temperatures "
            f"({temps[resolved].min():.0f}-{temps[resolved].max():.0f} K) extrapolated to 300 K; 95 % interval"
        )
    elif resolved.sum() == 0:
        note = (
            f"no {specie} diffusion resolved at any temperature (MSD < {min_msd:g} Å² at {temps.max():.0f} K): "
            "300 K value unknown, below the MD's detection limit"
        )
    else:
        note = (
            f"{int(resolved.sum())} of the {MIN_TEMPERATURES} temperatures an Arrhenius fit needs showed "
            f"{specie} diffusion: 300 K value unknown"
        )
    return ConductivityResult(
        specie=specie,
        temperatures=tuple(float(t) for t in temps),
        mean_temperatures=tuple(float(t.mean_temperature) for t in runs),
        durations=tuple(float(t.duration) for t in runs),
        diffusivity=tuple(float(x) for x in d),
        diffusivity_std=tuple(float(x) for x in d_std),
        conductivity=tuple(float(x) for x in sigma),
        msd=tuple(float(x) for x in msd),
        resolved=tuple(bool(x) for x in resolved),
        smoothing=smoothing,
        min_msd=float(min_msd),
        n_mobile=int(structure.composition[specie]),
        n_atoms=len(structure),
        activation_energy=None if fit is None else fit.activation_energy,
        activation_energy_std=None if fit is None else fit.activation_energy_std,
        conductivity_300k=sigma_300,
        conductivity_300k_low=low,
        conductivity_300k_high=high,
        extrapolated=sigma_300 is not None,
        note=note,
    )


def ionic_conductivity(
    *,
    structure: Structure,
    temperatures: Sequence[float],
    duration: float,
    specie: str = "Li",
    md: MDSettings = DEFAULT_MD,
    relax: bool = True,
    min_msd: float = MIN_MSD,
) -> ConductivityResult:
    """Ionic conductivity of `specie` in `structure` from NVT MD at each temperature (same cell, same seed).

    Args:
        structure: The crystal.
        temperatures: MD temperatures, K (≥ 3 distinct ones for an extrapolation to 300 K).
        duration: Production length per temperature, ps.
        specie: The mobile species.
        md: The MD settings (model checkpoint, seed, timestep, equilibration per temperature, supercell width,
            frame interval), the same at every temperature.
        relax: Relax the cell with the same model first.
        min_msd: Resolution threshold on the end-of-run MSD, Å².

    Raises:
        InputError: No temperature, a non-positive one, or a species the structure does not hold.
    """
    temps = sorted(float(t) for t in temperatures)
    if not temps or min(temps) <= 0:
        raise InputError(f"conductivity needs positive MD temperatures in K (got {list(temperatures)})")
    if Element(specie) not in structure.composition:
        raise InputError(
            f"the mobile species {specie} is not in {structure.composition.reduced_formula}; name one it holds"
        )
    start = md.relax(structure=structure).structure if relax else structure
    runs = [md.run(structure=start, temperature=t, duration=duration) for t in temps]
    return conductivity_from_trajectories(trajectories=runs, specie=specie, min_msd=min_msd)


__all__ = ["ConductivityResult", "conductivity_from_trajectories", "ionic_conductivity"]
