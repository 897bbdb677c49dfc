"""Funnel: validity, charge balance, dedup (within the batch and against everything known), novelty, design filters.

The stage stores what `loop.work.funnel` computes.
"""

from __future__ import annotations

from typing import Any

from loop.stages.base import StageContext
from loop.work.funnel import Funnelled, run_funnel


class FunnelStage:
    """Record which generated candidates go on to screening and why the others do not."""

    name = "funnel"

    def compute(self, ctx: StageContext) -> Funnelled:
        return run_funnel(
            ctx.config, store=ctx.store, round=ctx.round, candidates=ctx.store.generated(ctx.round)
        )

    def commit(self, ctx: StageContext, result: Funnelled) -> dict[str, Any]:
        ctx.store.add_candidates(ctx.round, result.outcomes)
        return result.report


STAGE = FunnelStage()
