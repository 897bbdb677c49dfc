"""Acquire: choose the round's oracle queries with the configured modAL strategy under the budget.

Units: energies eV/atom.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from loop.config import CampaignConfig
from loop.science.acquisition import select_structures
from loop.store import CampaignStore, Query
from loop.views.candidate_pool import acquisition_pool
from loop.views.oracle_calls import oracle_calls_left

log = logging.getLogger("matloop")


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
