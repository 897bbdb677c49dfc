"""Screen: relax the funnel's survivors with the emulator ensemble and place them against the oracle hull.

Units: energies eV/atom, times s.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from loop.config import CampaignConfig
from loop.runtime.control import StopRequested
from loop.runtime.execution import TaskQuarantined
from loop.runtime.progress import progress, seconds
from loop.runtime.screening_cache import TierCache, in_blocks, tag
from loop.runtime.screening_tiers import CheapEstimate, cheap_estimates, relaxed_share
from loop.runtime.tasks import member_relax_chunk, relax_chunk, rescore_chunk
from loop.science.committee import combine_committee, family_e_hull
from loop.science.hull import HullEntry, OracleHull
from loop.science.structures import structure_hash
from loop.store import CampaignStore, Prediction
from loop.views.candidate_pool import first_round, left_at_cheap_tier
from loop.views.oracle_hull import current_hull, hull_phases

RELAX_CHUNK = 4  # structures per screening task


RESCORE_CHUNK = 16  # structures per pool re-scoring task (one batched prediction, no relaxation)
# How a carried candidate left at an earlier round's cheap tier was screened again (`data["pool"]["rescore"]`,
# beside `rescore_pool`'s "static" and "relaxed").
CHEAP_RESCORE = "cheap tier"


def _quarantined_relaxations(
    chunk: list[dict[str, Any]], quarantine: TaskQuarantined
) -> list[dict[str, Any]]:
    """Stand-in results for a screening chunk whose task kept killing workers: unrelaxed, unplaced (NaN energies,
    so acquisition never offers them), with the quarantine reason."""
    return [
        {
            "structure": d,
            "energy_per_atom": float("nan"),
            "energy_per_atom_std": float("nan"),
            "n_steps": 0,
            "converged": False,
            "collapsed": False,
            "quarantined": quarantine.reason,
        }
        for d in chunk
    ]


def _quarantined_member(chunk: list[dict[str, Any]], quarantine: TaskQuarantined) -> list[dict[str, Any]]:
    return [
        {"energy_per_atom": float("nan"), "n_steps": 0, "converged": False, "collapsed": False} for _ in chunk
    ]


def committee_e_hull(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    hull: OracleHull,
    structures: Sequence[Structure],
    executor: Any,
) -> dict[str, np.ndarray]:
    """Each committee member's E_hull of `structures` (eV/atom; NaN where it could not place one), by member kind.

    A member relaxes the structures (from the emulator's geometry) and the oracle hull's phases (from the oracle's
    geometry) and measures each structure against the hull of its own energies of those phases. Its per-element
    and per-composition offsets from the oracle's level of theory therefore cancel, without any fitting.
    """
    if not config.committee:
        return {}
    phases = hull_phases(config, store, hull)
    phase_ids = list(phases)
    items = [s.as_dict() for s in structures] + [phases[h].as_dict() for h in phase_ids]
    chunks = [items[i : i + RELAX_CHUNK] for i in range(0, len(items), RELAX_CHUNK)]
    train = config.emulator_training
    out: dict[str, np.ndarray] = {}
    for member in config.committee:
        args = (member.model_dump(), train.relax_fmax, train.relax_steps)
        if executor is None:
            results = [item for chunk in chunks for item in member_relax_chunk(chunk, *args)]
        else:
            results = executor.map_chunks(
                member_relax_chunk, chunks, *args, on_quarantine=_quarantined_member
            )
        n = len(structures)
        out[member.kind] = family_e_hull(
            (
                HullEntry(
                    entry_id=h, composition=phases[h].composition, energy_per_atom=res["energy_per_atom"]
                )
                for h, res in zip(phase_ids, results[n:], strict=True)
                if not res["collapsed"]
            ),
            compositions=[s.composition for s in structures],
            energies=[
                res["energy_per_atom"] if not res["collapsed"] else float("nan") for res in results[:n]
            ],
        )
    return out


def cheap_only(h: str, estimate: CheapEstimate, *, model: str, margin: float) -> Prediction:
    """The stored screening result of a candidate the relaxation tier did not take: its cheap estimate, no relaxed
    structure (so acquisition never offers it; the pool carries it to the next round's cheap tier when it is placed,
    `loop.views.candidate_pool`)."""
    reason = estimate.reason or (
        f"not relaxed: cheap-tier E_hull {estimate.e_hull:.3f} ± {estimate.e_hull_std:.3f} eV/atom, outside the"
        f" relaxed share (margin {margin} eV/atom)"
    )
    return Prediction(
        hash=h,
        relaxed_hash=None,
        model=model,
        energy_per_atom=estimate.energy_per_atom if math.isfinite(estimate.energy_per_atom) else None,
        energy_per_atom_std=estimate.energy_per_atom_std
        if math.isfinite(estimate.energy_per_atom_std)
        else None,
        e_hull=estimate.e_hull if estimate.placed else None,
        e_hull_std=estimate.e_hull_std if estimate.placed else None,
        data={
            "n_steps": 0,
            "converged": False,
            "reason": reason,
            "tier": {"relaxed": None, "cheap": estimate.as_dict()},
        },
    )


@dataclass(frozen=True)
class Screening:
    """The predictions of a round, the relaxed structures by candidate hash, and the stage's metrics."""

    predictions: list[Prediction]
    relaxed: dict[str, Structure]
    report: dict[str, Any]


def relax_structures(
    config: CampaignConfig,
    *,
    structures: Sequence[Structure],
    checkpoint: Path | None,
    executor: Any,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """`relax_chunk` results of `structures`, in order (quarantined chunks stand in with NaN energies).

    Args:
        progress: Called with the number of structures of each finished chunk.
    """
    ordered = [s.as_dict() for s in structures]
    # Fixed-size contiguous chunks, whatever the number of workers: the emulator evaluates a chunk's final energies
    # as one batch, so the chunking must not depend on how many workers happen to be up (reproducible resumes).
    chunks = [ordered[i : i + RELAX_CHUNK] for i in range(0, len(ordered), RELAX_CHUNK)]
    train = config.emulator_training
    args = (
        str(checkpoint) if checkpoint else None,
        config.emulator.model_dump(),
        train.relax_fmax,
        train.relax_steps,
    )
    if executor is None:
        out = []
        for chunk in chunks:
            out.extend(relax_chunk(chunk, *args))
            if progress is not None:
                progress(len(chunk))
        return out
    return executor.map_chunks(
        relax_chunk, chunks, *args, on_quarantine=_quarantined_relaxations, progress=progress
    )


def _quarantined_rescore(chunk: list[dict[str, Any]], quarantine: TaskQuarantined) -> list[dict[str, Any]]:
    return [
        {"energy_per_atom": float("nan"), "energy_per_atom_std": float("nan"), "max_force": float("inf")}
        for _ in chunk
    ]


def rescore_pool(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    carried: Sequence[Prediction],
    checkpoint: Path | None,
    executor: Any,
) -> list[dict[str, Any]]:
    """Re-score the pool's candidates with the current emulator, in the form of `relax_chunk` results.

    One batched prediction at each stored emulator-relaxed geometry; a candidate whose current largest force there
    exceeds `acquisition.pool.rerelax_force` is relaxed again from that geometry (the model moved its minimum).
    Each result carries `rescore` ("static" or "relaxed") and the `max_force` that decided it (eV/Å).
    """
    if not carried:
        return []
    structures = store.get_structures([str(p.relaxed_hash) for p in carried])
    ordered = [structures[str(p.relaxed_hash)] for p in carried]
    dicts = [s.as_dict() for s in ordered]
    chunks = [dicts[i : i + RESCORE_CHUNK] for i in range(0, len(dicts), RESCORE_CHUNK)]
    args = (str(checkpoint) if checkpoint else None, config.emulator.model_dump())
    if executor is None:
        scores = [item for chunk in chunks for item in rescore_chunk(chunk, *args)]
    else:
        scores = executor.map_chunks(rescore_chunk, chunks, *args, on_quarantine=_quarantined_rescore)
    limit = config.acquisition.pool.rerelax_force
    moved = [i for i, sc in enumerate(scores) if not sc["max_force"] <= limit]
    relaxed = relax_structures(
        config, structures=[ordered[i] for i in moved], checkpoint=checkpoint, executor=executor
    )
    again = dict(zip(moved, relaxed, strict=True))
    out = []
    for i, (p, sc) in enumerate(zip(carried, scores, strict=True)):
        if i in again:
            out.append({**again[i], "rescore": "relaxed", "max_force": sc["max_force"]})
            continue
        out.append(
            {
                "structure": dicts[i],
                "energy_per_atom": sc["energy_per_atom"],
                "energy_per_atom_std": sc["energy_per_atom_std"],
                "n_steps": 0,
                "converged": bool(p.data.get("converged", True)),
                "collapsed": False,
                "rescore": "static",
                "max_force": sc["max_force"],
                "relaxed_hash": p.relaxed_hash,
            }
        )
    return out


def screen(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    hashes: Sequence[str],
    checkpoint: Path | None,
    executor: Any,
    carried: Sequence[Prediction] = (),
    round: int = 1,
    cache_folder: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Screening:
    """Relax the structures `hashes` with the emulator ensemble (`checkpoint`, None: the pretrained one), re-score
    the pool's `carried` candidates (`rescore_pool`), and place them all against the oracle hull.

    Args:
        config: The campaign's settings.
        store: The campaign store.
        hashes: The round's new candidates (funnel survivors).
        checkpoint: The emulator in use (None: the pretrained one).
        executor: Where chunks run (None: in this process).
        carried: Predictions of the previous round whose candidates stay on offer (`loop.views.candidate_pool`):
            relaxed ones are re-scored, ones left at the cheap tier join the new candidates in this round's tiers.
        round: The round being screened (a carried candidate's age is counted from it).
        cache_folder: Where a round screened in tiers keeps each finished block of a tier until the stage is
            committed (`loop.runtime.screening_cache`; None: no cache).
        should_stop: Asked between blocks of a tier screened in tiers; once it says True the stage stops
            (`StopRequested`) and a resume computes only the blocks not cached.
    """
    new = list(hashes)
    # A candidate screened afresh this round is not re-scored as well.
    fresh = set(new)
    carried = [p for p in carried if p.hash not in fresh]
    # Candidates an earlier round left at the cheap tier go through this round's tiers beside the new ones: the
    # current emulator and hull decide again whether they are worth a relaxation.
    from_cheap = [p for p in carried if left_at_cheap_tier(p)]
    carried = [p for p in carried if not left_at_cheap_tier(p)]
    new += [p.hash for p in from_cheap]
    structures = store.get_structures(list(new))
    hull = current_hull(config, store)
    tiers = config.screening
    cheap: dict[str, CheapEstimate] = {}
    why: dict[str, str] = {}
    to_relax = new
    started = time.time()
    tiered = tiers.enabled and len(new) > tiers.floor
    # A round screened in tiers runs for an hour or more at scale: its blocks are cached until the stage commits.
    folder = cache_folder if tiered else None
    key = tag(
        str(checkpoint) if checkpoint else None,
        config.emulator.model_dump(mode="json"),
        config.emulator_training.relax_fmax,
        config.emulator_training.relax_steps,
        tiers.steps,
    )
    if tiered:

        def estimate(block: list[str]) -> list[dict[str, Any]]:
            found = cheap_estimates(
                [structures[h] for h in block],
                hull=hull,
                emulator_settings=config.emulator.model_dump(),
                checkpoint=checkpoint,
                executor=executor,
                progress=bar.update,
                steps=tiers.steps,
                fmax=config.emulator_training.relax_fmax,
            )
            return [dataclasses.asdict(e) for e in found]

        with progress(total=len(new), what=f"round {round}: cheap tier") as bar:
            rows = in_blocks(
                new,
                estimate,
                cache=TierCache(folder, tier="cheap", key=key),
                should_stop=should_stop,
                progress=bar.update,
                stop=StopRequested,
            )
        estimates = [CheapEstimate(**rows[h]) for h in new]
        cheap = dict(zip(new, estimates, strict=True))
        groups = None
        if tiers.per_formula is not None:
            rows = {r.hash: r for r in store.structure_rows(where="round = ?", params=(round,))}
            found = [rows.get(h) or store.structure_row(h) for h in new]
            groups = [(r.source, r.reduced_formula) for r in found]
        share = relaxed_share(estimates, settings=tiers, groups=groups)
        why = {new[i]: w for i, w in share.why.items()}
        # Screening order is kept: acquisition breaks ties by it.
        to_relax = [h for h in new if h in why]
    cheap_time = time.time() - started
    started = time.time()

    def relax(block: list[str]) -> list[dict[str, Any]]:
        return relax_structures(
            config,
            structures=[structures[h] for h in block],
            checkpoint=checkpoint,
            executor=executor,
            progress=bar.update,
        )

    with progress(total=len(to_relax), what=f"round {round}: relax") as bar:
        if tiered:
            relaxed_rows = in_blocks(
                to_relax,
                relax,
                cache=TierCache(folder, tier="relax", key=key),
                should_stop=should_stop,
                progress=bar.update,
                stop=StopRequested,
            )
            results = [relaxed_rows[h] for h in to_relax]
        else:
            results = relax(to_relax)
    relax_time = time.time() - started
    started = time.time()
    results += rescore_pool(config, store=store, carried=carried, checkpoint=checkpoint, executor=executor)
    rescore_time = time.time() - started
    hashes = [*to_relax, *(p.hash for p in carried)]
    pool_info = {
        p.hash: {
            "first_round": first_round(p, round=round - 1),
            "age": round - first_round(p, round=round - 1),
        }
        for p in [*carried, *from_cheap]
    }

    relaxed = {h: Structure.from_dict(res["structure"]) for h, res in zip(hashes, results, strict=True)}
    ev = hull.evaluate(
        [relaxed[h].composition for h in hashes],
        [res["energy_per_atom"] for res in results],
        [res["energy_per_atom_std"] for res in results],
    )
    committee = committee_e_hull(
        config, store=store, hull=hull, structures=[relaxed[h] for h in hashes], executor=executor
    )
    model = checkpoint.name if checkpoint else "pretrained"
    predictions = []
    for i, h in enumerate(hashes):
        res = results[i]
        e_hull = ev.e_above_hull[i]
        reason = ev.reasons[i] if ev.reasons else None
        if res.get("collapsed"):
            e_hull, reason = float("nan"), "relaxation collapsed (atoms closer than 0.5 Å)"
        if res.get("quarantined"):
            e_hull, reason = float("nan"), res["quarantined"]
        placed = math.isfinite(e_hull)
        e_hull_std = float(ev.e_above_hull_std[i]) if placed else float("nan")
        data: dict[str, Any] = {"n_steps": res["n_steps"], "converged": res["converged"], "reason": reason}
        if h in pool_info:
            rescored = {"rescore": res["rescore"], "max_force": res["max_force"]} if "rescore" in res else {}
            data["pool"] = {**pool_info[h], "rescore": CHEAP_RESCORE, **rescored}
        if h in cheap:
            data["tier"] = {"relaxed": why[h], "cheap": cheap[h].as_dict()}
        if committee and placed:
            members = {kind: float(values[i]) for kind, values in committee.items()}
            data["committee"] = {"emulator": float(e_hull), "emulator_std": e_hull_std, **members}
            e_hull, e_hull_std = combine_committee(float(e_hull), e_hull_std, list(members.values()))
        predictions.append(
            Prediction(
                hash=h,
                relaxed_hash=res.get("relaxed_hash") or structure_hash(relaxed[h]),
                model=model,
                energy_per_atom=res["energy_per_atom"],
                energy_per_atom_std=res["energy_per_atom_std"],
                e_hull=float(e_hull) if placed else None,
                e_hull_std=e_hull_std if placed else None,
                data=data,
            )
        )
    offered = len(predictions)
    placed_e = [p.e_hull for p in predictions if p.e_hull is not None]
    relaxed_std = [p.energy_per_atom_std for p in predictions]
    for h in new:
        if h in cheap and h not in why:
            left = cheap_only(h, cheap[h], model=model, margin=tiers.margin)
            if h in pool_info:
                left.data["pool"] = {**pool_info[h], "rescore": CHEAP_RESCORE}
            predictions.append(left)
    ages = [info["age"] for info in pool_info.values()]
    report = {
        "n_screened": len(new) - len(from_cheap),
        "n_pool_carried": len(carried) + len(from_cheap),
        # Carried from the cheap tier of an earlier round: estimated again, and how many now made the cut.
        "n_pool_cheap_carried": len(from_cheap),
        "n_pool_cheap_relaxed": len({p.hash for p in from_cheap} & set(to_relax)),
        "n_offered": offered,
        # Screening in tiers (`loop.runtime.screening_tiers`): every new candidate had the cheap estimate when there were
        # more than `screening.floor` of them; those left there are stored but not offered.
        "n_cheap_tier": len(cheap),
        "n_relaxed": len(to_relax),
        "n_cheap_only": len(cheap) - len(why),
        "n_relaxed_by": {
            k: sum(1 for w in why.values() if w == k) for k in ("margin", "top_fraction", "floor")
        },
        "cheap_time_s": seconds(cheap_time),
        "n_pool_relaxed_again": sum(
            1 for p in predictions if p.data.get("pool", {}).get("rescore") == "relaxed"
        ),
        "pool_age_max": max(ages) if ages else 0,
        "pool_age_mean": float(np.mean(ages)) if ages else 0.0,
        "rescore_time_s": seconds(rescore_time),
        "n_placed": len(placed_e),
        # An unconverged relaxation leaves the candidate above its minimum, so its E_hull is an upper bound.
        "n_unconverged": sum(1 for p in predictions[:offered] if not p.data["converged"]),
        "relax_time_s": seconds(relax_time),
        "e_hull_min": min(placed_e) if placed_e else None,
        "e_hull_median": float(np.median(placed_e)) if placed_e else None,
        "n_below_threshold": sum(1 for e in placed_e if config.stability_rule.is_hit(e)),
        "std_median": float(np.median(relaxed_std)) if relaxed_std else None,
    }
    return Screening(predictions=predictions, relaxed=relaxed, report=report)
