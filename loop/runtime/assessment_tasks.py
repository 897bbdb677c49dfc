"""Worker functions of the expensive design checks (MLFF molecular dynamics and phonons), for Dask or this process.

Plain data in and out, as `loop.runtime.tasks`: a structure as a dict, the check's settings as a dict, the emulator
checkpoint as a path string. Each returns `RequirementResult.to_dict()` plus `wall_time` (s); a check that cannot
be run on a structure (the model cannot evaluate it, a bad cell) comes back as "unknown" with the reason, so one
poisonous structure never stops a campaign.

Units: conductivity mS/cm, temperatures K, durations ps, frequencies THz.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from pymatgen.core import Element, Structure

from loop.design.conductivity import ionic_conductivity
from loop.design.dynamical import dynamical_stability
from loop.design.md_runs import MDSettings
from loop.design.requirements import RequirementResult, Status, unknown
from loop.design.thermal import thermal_stability
from loop.runtime.tasks import _pin_threads


def _md_settings(settings: dict[str, Any], checkpoint: Path | None) -> MDSettings:
    """The MD settings of a check whose settings name a seed, an equilibration (ps) and a supercell width (Å)."""
    return MDSettings(
        checkpoint=checkpoint,
        seed=int(settings["seed"]),
        equilibration=float(settings["equilibration_ps"]),
        min_length=float(settings["min_length_a"]),
    )


def _conductivity(
    structure: Structure, settings: dict[str, Any], checkpoint: Path | None
) -> RequirementResult:
    specie, threshold = settings["specie"], float(settings["min_ms_cm"])
    if Element(specie) not in structure.composition:
        return RequirementResult(
            "conductivity", Status.FAIL, 0.0, "mS/cm", f"holds no {specie}: conducts no {specie} ions"
        )
    result = ionic_conductivity(
        structure=structure,
        temperatures=settings["temperatures_k"],
        duration=float(settings["duration_ps"]),
        specie=specie,
        md=_md_settings(settings, checkpoint),
    )
    data = result.to_dict()
    sigma = result.conductivity_300k
    if sigma is not None:
        interval = f"95 % interval [{result.conductivity_300k_low:.3g}, {result.conductivity_300k_high:.3g}]"
        status = Status.PASS if sigma >= threshold else Status.FAIL
        return RequirementResult(
            "conductivity",
            status,
            float(sigma),
            "mS/cm",
            f"300 K by Arrhenius, {interval}; {result.note}",
            data,
        )
    # σ rises with temperature along an Arrhenius line, so σ at the hottest run bounds σ(300 K) from above.
    hottest = result.max_temperature_conductivity
    if hottest < threshold:
        return RequirementResult(
            "conductivity",
            Status.FAIL,
            float(hottest),
            "mS/cm",
            f"already below {threshold:g} mS/cm at {result.temperatures[-1]:g} K (an upper bound on 300 K); "
            f"{result.note}",
            data,
        )
    return RequirementResult("conductivity", Status.UNKNOWN, None, "mS/cm", result.note, data)


def _phonons(structure: Structure, settings: dict[str, Any], checkpoint: Path | None) -> RequirementResult:
    result = dynamical_stability(
        structure=structure,
        tolerance=float(settings["tolerance_thz"]),
        checkpoint=checkpoint,
        min_length=float(settings["min_length_a"]),
    )
    data = {k: v for k, v in result.to_dict().items() if k != "phonons"}  # the mesh stays out of the store
    return RequirementResult(
        "phonons", Status(result.status), result.min_frequency, "THz", result.reason, data
    )


def _thermal(structure: Structure, settings: dict[str, Any], checkpoint: Path | None) -> RequirementResult:
    mobile = tuple(s for s in settings.get("mobile_species", []) if Element(s) in structure.composition)
    result = thermal_stability(
        structure=structure,
        temperature=float(settings["temperature_k"]),
        duration=float(settings["duration_ps"]),
        md=_md_settings(settings, checkpoint),
        mobile_species=mobile,
    )
    return RequirementResult(
        "thermal", Status(result.status), result.lindemann_ratio, "Lindemann", result.reason, result.to_dict()
    )


CHECKS = {"conductivity": _conductivity, "phonons": _phonons, "thermal": _thermal}


def run_check(
    requirement: str, structure_dict: dict[str, Any], settings: dict[str, Any], checkpoint: str | None
) -> dict[str, Any]:
    """Run one expensive design check on one structure; plain data in and out.

    Args:
        requirement: "conductivity", "phonons" or "thermal".
        structure_dict: The structure (`Structure.as_dict()`).
        settings: The check's settings (`DesignConfig.check_settings`).
        checkpoint: Emulator checkpoint directory of the MLFF; None: the shipped CHGNet.

    Returns:
        `RequirementResult.to_dict()` with `wall_time` (s).
    """
    warnings.filterwarnings("ignore", category=UserWarning)
    _pin_threads()
    started = time.perf_counter()
    structure = Structure.from_dict(structure_dict)
    try:
        result = CHECKS[requirement](structure, settings, None if checkpoint is None else Path(checkpoint))
    except Exception as exc:  # the model's or the cell's limit: unknown for this structure, never a crash
        line = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        result = unknown(requirement, f"could not be run: {line}")
    return {**result.to_dict(), "wall_time": round(time.perf_counter() - started, 3)}


__all__ = ["CHECKS", "run_check"]
