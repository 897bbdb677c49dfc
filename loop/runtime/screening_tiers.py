"""Screening in tiers: a cheap estimate for every funnel survivor, relaxation for the promising share.

The cheap tier is the emulator ensemble's energy after a few steps of the screening relaxation (`steps`; 0: one
batched, energy-only prediction at the geometry as generated, `loop.runtime.tasks.estimate_chunk`), placed against the same
hull as the relaxed screening. Relaxation only lowers a candidate's energy, so its cheap E_hull is an upper estimate
of its relaxed one: generated cells sit up to eV/atom above their minimum, most of it gone after the first steps.
The cut therefore keeps a margin above the hull and the best share whatever their estimate (see `TiersConfig`). Candidates left at the cheap tier are stored with their estimate (`loop.work.screening`) but are not
offered to acquisition: a query is a relaxed structure (`loop.work.acquisition`).

Units: energies eV/atom.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymatgen.core import Structure

from loop.runtime.execution import TaskQuarantined
from loop.science.hull import OracleHull

# Structures per cheap-tier task: one model load and a few batched forward passes; large enough that the task
# overhead is small, small enough that progress is seen and a quarantined task loses little.
ESTIMATE_CHUNK = 64
SHORT_RELAX_CHUNK = 16  # with relaxation steps, each structure costs tens of forward and backward passes


class TiersConfig(BaseModel):
    """Which funnel survivors the screening relaxes (the `screening:` section).

    A round with at most `floor` new candidates relaxes all of them (the cheap tier is not run). Above that, every
    candidate gets the cheap estimate and the relaxed share is, by the optimistic bound
    `e_hull_cheap - sigma * std`: every candidate within `margin` of the hull, plus the best `keep_fraction`
    whatever their bound; then at least the best `floor` and at most the best `cap`.

    Attributes:
        enabled: Screen in tiers (False: relax every survivor, as a round of tens of candidates does anyway).
        steps: Relaxation steps of the cheap tier (0: a single point at the generated geometry).
        margin: eV/atom above the hull within which a candidate's optimistic cheap bound earns a relaxation.
        sigma: How many ensemble standard deviations the optimistic bound subtracts.
        keep_fraction: Share of the candidates (best bounds first) relaxed whatever their bound, so that one
            generator's unrelaxed cells, far above their minimum, are not all cut.
        floor: Fewest candidates relaxed (all of them when there are no more).
        cap: Most candidates relaxed in one round (None: no cap).
        per_formula: Most candidates of one generator and reduced formula that the margin and best-share rules
            relax, best bounds first (None: no limit; the floor still fills from the best bounds overall).
            Polymorphs then compete for relaxation: while the hull holds only the elements every oxide lies far
            below it, so the margin alone would relax hundreds of decorations of one formula.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Chosen on labelled pools (BENCHMARKS.md, "Screening in tiers"): at the generated geometry diffusion samples
    # sat a median 0.8 eV/atom (up to 3.5) above their relaxed energy and a single-point cut at 0.5 eV/atom
    # dropped 18 of 65 Li-Al hits; after 5 steps the gap was 0.3 (diffusion) and 0.02 (substitution) and the same
    # cut dropped 2.
    steps: int = Field(default=5, ge=0, le=100)
    margin: float = Field(default=0.5, ge=0.0)
    sigma: float = Field(default=1.0, ge=0.0)
    keep_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    # A round of the default mix (48 candidates) is never cut: relaxing it all costs about a minute.
    floor: int = Field(default=64, ge=1)
    # About an hour of relaxation on 2 cores (BENCHMARKS.md).
    cap: int | None = Field(default=2000, ge=1)
    per_formula: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _cap_above_floor(self) -> TiersConfig:
        if self.cap is not None and self.cap < self.floor:
            raise ValueError(f"cap ({self.cap}) is below floor ({self.floor}); raise cap or lower floor")
        return self


@dataclass(frozen=True)
class CheapEstimate:
    """The cheap tier's result of one candidate: ensemble energy at its unrelaxed geometry and its E_hull, eV/atom
    (NaN, with `reason`, where it could not be placed)."""

    energy_per_atom: float
    energy_per_atom_std: float
    e_hull: float
    e_hull_std: float
    reason: str | None = None

    @property
    def placed(self) -> bool:
        return math.isfinite(self.e_hull)

    def bound(self, sigma: float) -> float:
        """The optimistic bound `e_hull - sigma * e_hull_std` (inf when not placed)."""
        if not self.placed:
            return math.inf
        return self.e_hull - sigma * (self.e_hull_std if math.isfinite(self.e_hull_std) else 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "energy_per_atom": self.energy_per_atom,
            "energy_per_atom_std": self.energy_per_atom_std,
            "e_hull": self.e_hull if self.placed else None,
            "e_hull_std": self.e_hull_std if self.placed else None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RelaxedShare:
    """Which candidates the relaxation tier takes, in input positions (best bound first), and why each was taken:
    "margin", "top_fraction" or "floor"."""

    indices: list[int]
    why: dict[int, str]


def _quarantined(chunk: list[dict[str, Any]], quarantine: TaskQuarantined) -> list[dict[str, Any]]:
    return [
        {"energy_per_atom": float("nan"), "energy_per_atom_std": float("nan"), "reason": quarantine.reason}
        for _ in chunk
    ]


def cheap_estimates(
    structures: Sequence[Structure],
    *,
    hull: OracleHull,
    emulator_settings: dict[str, Any],
    checkpoint: Path | None,
    executor: Any,
    progress: Callable[[int], None] | None = None,
    steps: int = 0,
    fmax: float = 0.1,
) -> list[CheapEstimate]:
    """The cheap tier of `structures` (in order), placed on `hull`: one batched energy-only ensemble prediction
    each at the given geometry, or with `steps` > 0 the ensemble energy after that many relaxation steps (the
    screening relaxation, `loop.runtime.tasks.relax_chunk`, stopped early).

    Args:
        structures: The candidates at their generated geometry.
        hull: The hull they are placed against (the one the relaxed tier uses).
        emulator_settings: The emulator's settings (`config.emulator.model_dump()`).
        checkpoint: The emulator in use (None: the pretrained one).
        executor: Where chunks run (None: in this process).
        progress: Called with the number of structures of each finished chunk.
        steps: Relaxation steps (0: the single point).
        fmax: Force threshold of those steps, eV/Å (a candidate already below it stops sooner).
    """
    if not structures:
        return []
    # torch and the emulator: not at config-parsing time
    from loop.runtime.tasks import estimate_chunk, relax_chunk

    dicts = [s.as_dict() for s in structures]
    size = ESTIMATE_CHUNK if steps == 0 else SHORT_RELAX_CHUNK
    chunks = [dicts[i : i + size] for i in range(0, len(dicts), size)]
    task: Callable[..., list[dict[str, Any]]] = estimate_chunk
    args: tuple[Any, ...] = (str(checkpoint) if checkpoint else None, emulator_settings)
    if steps > 0:
        task, args = relax_chunk, (*args, fmax, steps)
    if executor is None:
        raw = []
        for chunk in chunks:
            raw.extend(task(chunk, *args))
            if progress is not None:
                progress(len(chunk))
    else:
        raw = executor.map_chunks(task, chunks, *args, on_quarantine=_quarantined, progress=progress)
    for r in raw:
        if r.get("collapsed"):
            r.update(
                energy_per_atom=float("nan"), reason="atoms closer than 0.5 Å after the cheap tier's steps"
            )
    ev = hull.evaluate(
        [s.composition for s in structures],
        [r["energy_per_atom"] for r in raw],
        [r["energy_per_atom_std"] for r in raw],
    )
    out = []
    for i, r in enumerate(raw):
        e_hull = float(ev.e_above_hull[i])
        reason = r.get("reason") or (ev.reasons[i] if ev.reasons else None)
        out.append(
            CheapEstimate(
                energy_per_atom=float(r["energy_per_atom"]),
                energy_per_atom_std=float(r["energy_per_atom_std"]),
                e_hull=e_hull,
                e_hull_std=float(ev.e_above_hull_std[i]) if math.isfinite(e_hull) else float("nan"),
                reason=None if math.isfinite(e_hull) else reason or "not placed on the hull",
            )
        )
    return out


def relaxed_share(
    estimates: Sequence[CheapEstimate],
    *,
    settings: TiersConfig,
    groups: Sequence[Hashable] | None = None,
) -> RelaxedShare:
    """The candidates the relaxation tier takes (`TiersConfig`), best optimistic bound first.

    Unplaced estimates are never taken (the emulator could not evaluate them, so it cannot relax them either).

    Args:
        estimates: The cheap tier of each candidate.
        settings: The cut.
        groups: Each candidate's (generator, reduced formula), which `settings.per_formula` limits (needed only
            when it is set).

    Raises:
        ValueError: `settings.per_formula` is set without `groups`, or `groups` is not as long as `estimates`.
    """
    if settings.per_formula is not None and groups is None:
        raise ValueError("screening.per_formula needs each candidate's generator and formula (groups)")
    if groups is not None and len(groups) != len(estimates):
        raise ValueError(f"{len(groups)} groups for {len(estimates)} estimates")
    bounds = np.array([e.bound(settings.sigma) for e in estimates], dtype=float)
    order = [int(i) for i in np.argsort(bounds, kind="stable") if math.isfinite(bounds[i])]
    limit = settings.per_formula
    taken_of: Counter[Hashable] = Counter()
    why: dict[int, str] = {}

    def take(i: int, rule: str) -> None:
        if i in why or (limit is not None and taken_of[groups[i]] >= limit):  # type: ignore[index]
            return
        why[i] = rule
        if groups is not None:
            taken_of[groups[i]] += 1

    for i in order:
        if bounds[i] <= settings.margin:
            take(i, "margin")
    for i in order[: math.ceil(settings.keep_fraction * len(estimates))]:
        take(i, "top_fraction")
    for i in order[: settings.floor]:
        why.setdefault(i, "floor")
    taken = [i for i in order if i in why]
    if settings.cap is not None:
        taken = taken[: settings.cap]
    return RelaxedShare(indices=taken, why={i: why[i] for i in taken})


__all__ = [
    "ESTIMATE_CHUNK",
    "CheapEstimate",
    "RelaxedShare",
    "TiersConfig",
    "cheap_estimates",
    "relaxed_share",
]
