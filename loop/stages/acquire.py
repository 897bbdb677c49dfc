"""Acquire: choose the round's oracle queries with the configured modAL strategy under the budget.

The stage stores what `loop.work.acquisition` computes.

Units: energies eV/atom.
"""

from __future__ import annotations

from typing import Any

from loop.stages.base import StageContext
from loop.work.acquisition import Acquisition, acquire


class AcquireStage:
    """Record the round's oracle queries."""

    name = "acquire"

    def compute(self, ctx: StageContext) -> Acquisition:
        return acquire(ctx.config, store=ctx.store, round=ctx.round)

    def commit(self, ctx: StageContext, result: Acquisition) -> dict[str, Any]:
        ctx.store.add_queries(ctx.round, result.queries)
        return result.report


STAGE = AcquireStage()
