"""The persistent candidate pool: which screened candidates stay on offer, and which candidates are still alive.

A candidate screened in one round and not labelled is not thrown away: it is carried into the next round's
screening (re-scored there by the current emulator, `loop.work.screening`) and offered to acquisition again. One
that a round screened in tiers left at the cheap tier (placed, not relaxed) is carried too: the next round estimates
it again with its emulator and hull, beside that round's new candidates, and relaxes it if it now makes the cut. A
candidate leaves the pool when its emulator-relaxed structure has an oracle result (failed ones included), when its
screening cannot place it for good (collapsed or quarantined relaxation, or a cheap estimate the emulator could not
place), or when it is older than `acquisition.pool.max_age` rounds.

Units: energies eV/atom.
"""

from __future__ import annotations

from loop.config import CampaignConfig
from loop.science.acquisition import one_per_crystal
from loop.store import CampaignStore, Prediction

# Screening outcomes that no later round can change: such candidates are not carried.
_FINAL_REASONS = ("relaxation collapsed", "quarantined")


def first_round(prediction: Prediction, *, round: int) -> int:
    """The round in which the candidate of `prediction` (stored in `round`) was first screened."""
    return int(prediction.data.get("pool", {}).get("first_round", round))


def left_at_cheap_tier(prediction: Prediction) -> bool:
    """Whether `prediction` is a candidate a round screened in tiers left at the cheap tier (`loop.work.screening`)."""
    return prediction.relaxed_hash is None and "tier" in prediction.data


def carried_candidates(config: CampaignConfig, *, store: CampaignStore, round: int) -> list[Prediction]:
    """The predictions of round `round - 1` whose candidates stay on offer in `round`, in screening order.

    Each round's predictions hold the whole pool (its new candidates and those it carried), so the previous round's
    rows are the pool at the start of this one. Rows left at the cheap tier (no relaxed structure) are among them
    when that estimate was placed. Empty when `acquisition.pool.carry_over` is off or before round 2.
    """
    settings = config.acquisition.pool
    if not settings.carry_over or round < 2:
        return []
    settings_hash = config.oracle.settings_hash()
    labelled = {r.hash for r in store.oracle_results(settings_hash=settings_hash)}
    out = []
    for p in store.round_predictions(round - 1):
        if p.relaxed_hash is None and not (left_at_cheap_tier(p) and p.e_hull is not None):
            continue
        if p.relaxed_hash in labelled:
            continue
        reason = str(p.data.get("reason") or "")
        if any(final in reason for final in _FINAL_REASONS):
            continue
        if settings.max_age is not None and round - first_round(p, round=round - 1) > settings.max_age:
            continue
        out.append(p)
    return out


def live_candidates(config: CampaignConfig, *, store: CampaignStore, round: int) -> set[str]:
    """Candidates (by hash) of rounds before `round` that are in the pool at its start or were labelled.

    A structure prototype whose substitution children are among these is spent (`loop.work.generation`); one whose
    children were only screened and dropped is not.
    """
    settings_hash = config.oracle.settings_hash()
    labelled = {r.hash for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)}
    alive = {p.hash for p in carried_candidates(config, store=store, round=round)}
    for rnd, predictions in store.predictions_by_round().items():
        if rnd >= round:
            continue
        alive.update(p.hash for p in predictions if p.relaxed_hash in labelled)
    return alive


def acquisition_pool(config: CampaignConfig, *, store: CampaignStore, round: int) -> list[Prediction]:
    """The predictions of `round` acquisition may pick from, in the store's order: those with a relaxed structure
    that has no oracle result at these settings (not even a failed one), one per crystal and none of a crystal
    already labelled (`one_per_crystal`)."""
    settings_hash = config.oracle.settings_hash()
    seen: set[str] = set()
    predictions = []
    for p in store.round_predictions(round):
        h = p.relaxed_hash
        # A stored result, failed ones included, means this very structure was called already.
        if h and h not in seen and store.get_oracle_result(h, settings_hash) is None:
            seen.add(h)
            predictions.append(p)
    labelled = {
        h
        for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)
        for h in (r.hash, r.structure_hash)
    }
    relaxed = store.get_structures([p.relaxed_hash for p in predictions])
    kept = one_per_crystal(
        [relaxed[p.relaxed_hash] for p in predictions],
        labelled=[
            (store.structure_row(h).reduced_formula, lambda k=h: store.get_structure(k))
            for h in sorted(labelled)
        ],
    )
    return [predictions[i] for i in kept]


__all__ = ["acquisition_pool", "carried_candidates", "first_round", "left_at_cheap_tier", "live_candidates"]
