"""Track: log the round to MLflow (`loop.tracking.campaign`); a tracking fault never stops discovery.

Unlike the other stages, `compute` writes (to the MLflow store, which `campaign_tracking` keeps idempotent per
round); the campaign store only records the outcome.
"""

from __future__ import annotations

from typing import Any

from loop.stages.base import StageContext
from loop.tracking.campaign import track_round


class TrackStage:
    """Record how tracking went (logged, or pending until the tracking server answers)."""

    name = "track"

    def compute(self, ctx: StageContext) -> dict[str, Any]:
        return track_round(ctx.config, store=ctx.store, round=ctx.round, workdir=ctx.workdir)

    def commit(self, ctx: StageContext, result: dict[str, Any]) -> dict[str, Any]:
        return result


STAGE = TrackStage()
