"""What an oracle call is, for the stop rule (`stop.max_oracle_calls`), status, MLflow and the science report.

An oracle call is one structure a discovery round (round >= 1) sent to the oracle, whatever came back: a failed
calculation or a relaxation onto an already labelled crystal cost the same. Round 0's reference labels build the
hull at the oracle's level of theory before anything is discovered; they are counted apart, as reference labels.
"""

from __future__ import annotations

from loop.config import CampaignConfig
from loop.store import CampaignStore


def oracle_calls(store: CampaignStore, *, through_round: int | None = None) -> int:
    """Oracle calls of the discovery rounds 1..`through_round` (all rounds when None)."""
    return sum(
        len(queries)
        for rnd, queries in store.queries_by_round().items()
        if rnd >= 1 and (through_round is None or rnd <= through_round)
    )


def reference_labels(store: CampaignStore) -> int:
    """Structures round 0 sent to the oracle as references (not oracle calls)."""
    return len(store.round_queries(0))


def oracle_calls_left(config: CampaignConfig, store: CampaignStore) -> int | None:
    """Oracle calls the stop rule still allows (`stop.max_oracle_calls` minus the calls made, as
    `loop.views.oracle_calls` counts them: round 0's references are not calls); None without that rule."""
    limit = config.stop.max_oracle_calls
    if limit is None:
        return None
    return max(0, limit - oracle_calls(store))


__all__ = ["oracle_calls", "oracle_calls_left", "reference_labels"]
