"""Acquire: choose the round's oracle queries with the configured modAL strategy under the budget.

Units: energies eV/atom.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Structure

from loop.config import CampaignConfig
from loop.science.acquisition import select_structures
from loop.stages.base import StageContext
from loop.store import CampaignStore, Prediction, Query
from loop.views.oracle_calls import oracle_calls

log = logging.getLogger("matloop")


def oracle_calls_left(config: CampaignConfig, store: CampaignStore) -> int | None:
    """Oracle calls the stop rule still allows (`stop.max_oracle_calls` minus the calls made, as
    `loop.views.oracle_calls` counts them: round 0's references are not calls); None without that rule."""
    limit = config.stop.max_oracle_calls
    if limit is None:
        return None
    return max(0, limit - oracle_calls(store))


def one_per_crystal(
    candidates: Sequence[Structure], *, labelled: Iterable[tuple[str, Callable[[], Structure]]]
) -> list[int]:
    """Positions of the candidates to offer: each crystal once, and none already labelled.

    Candidates the funnel saw as different can relax onto one crystal: in the Li-Co-O pool 17 diffusion samples
    ended as one LiCoO2 under the oracle. A second label of a crystal is a call spent on no new information
    (`loop.runtime.labelling.mark_duplicates` flags it as a duplicate afterwards), so a candidate is dropped when its
    relaxed structure is the crystal (pymatgen `StructureMatcher` inside the funnel's formula buckets,
    `loop.science.funnel.KnownIndex`) of a labelled structure or of a candidate kept before it.

    Args:
        candidates: Relaxed structures, in order of preference (the first of a crystal is kept).
        labelled: (reduced formula, loader) of each labelled structure: inputs and oracle-relaxed final structures.
    """
    if not candidates:
        return []
    # torch (~3 s) comes with the generator room: imported only when there are candidates.
    from loop.science.funnel import KnownIndex

    index = KnownIndex()
    for formula, loader in labelled:
        index.add_lazy(id="labelled", formula=formula, loader=loader)
    kept = []
    for i, structure in enumerate(candidates):
        if index.find(structure, seed=False) is None:
            index.add(id=str(i), structure=structure)
            kept.append(i)
    return kept


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


@dataclass(frozen=True)
class Acquisition:
    """The round's queries (relaxed structures, by rank) and the stage's metrics."""

    queries: list[Query]
    report: dict[str, Any]


def acquire(config: CampaignConfig, *, store: CampaignStore, round: int) -> Acquisition:
    """Choose the oracle queries of this round with the configured modAL strategy under the budget.

    Each crystal is offered once, and none already labelled (`acquisition_pool`).
    The batch never exceeds the oracle calls `stop.max_oracle_calls` still allows.
    """
    budget = config.acquisition.budget
    left = oracle_calls_left(config, store)
    if left is not None and left < budget:
        budget = left
        log.info("round %d: %d oracle calls left under stop.max_oracle_calls: batch capped", round, left)
    pool = acquisition_pool(config, store=store, round=round)
    if budget == 0:
        report = {
            "strategy": config.acquisition.strategy,
            "budget": 0,
            "budget_capped": True,
            "n_pool": len(pool),
            "n_skipped": 0,
            "n_queries": 0,
            "mean_e_hull_of_picks": None,
        }
        return Acquisition(queries=[], report=report)
    settings_hash = config.oracle.settings_hash()
    structures = store.get_structures([p.relaxed_hash for p in pool if p.relaxed_hash])
    labelled_hashes = [r.hash for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)]
    labelled = list(store.get_structures(labelled_hashes).values())
    nan = float("nan")
    result = select_structures(
        structures=[structures[p.relaxed_hash] for p in pool if p.relaxed_hash],
        mean=[nan if p.e_hull is None else p.e_hull for p in pool],
        std=[nan if p.e_hull_std is None else p.e_hull_std for p in pool],
        config=config.acquisition.model_copy(update={"budget": budget}),
        rule=config.stability_rule,
        labelled=labelled,
    )
    queries = [
        Query(hash=str(pool[int(i)].relaxed_hash), strategy=result.strategy, rank=rank, score=float(u))
        for rank, (i, u) in enumerate(zip(result.indices, result.utilities, strict=True))
    ]
    picked_e = [pool[int(i)].e_hull for i in result.indices]
    report = {
        "strategy": result.strategy,
        "budget": budget,
        "budget_capped": budget < config.acquisition.budget,
        "n_pool": result.n_pool,
        "n_skipped": result.n_skipped,
        "n_queries": len(queries),
        "mean_e_hull_of_picks": float(np.mean(picked_e)) if queries else None,
    }
    return Acquisition(queries=queries, report=report)


class AcquireStage:
    """Record the round's oracle queries."""

    name = "acquire"

    def compute(self, ctx: StageContext) -> Acquisition:
        return acquire(ctx.config, store=ctx.store, round=ctx.round)

    def commit(self, ctx: StageContext, result: Acquisition) -> dict[str, Any]:
        ctx.store.add_queries(ctx.round, result.queries)
        return result.report


STAGE = AcquireStage()
