"""Update: rebuild the oracle hull with every label so far and judge every labelled structure against it.

The stage stores what `loop.work.hull_update` computes.

Units: energies eV/atom.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from loop.stages.base import StageContext
from loop.views.novelty import META_KEY, judge_labels, stored_novelty
from loop.views.withholding import provider_crystals
from loop.work.hull_update import HullUpdate, update_hull


class UpdateStage:
    """Record the verdicts of the round's hull."""

    name = "update"

    def compute(self, ctx: StageContext) -> HullUpdate:
        fresh = judge_labels(
            ctx.config, store=ctx.store, providers=lambda: provider_crystals(ctx.config, workdir=ctx.workdir)
        )
        novelty = {**stored_novelty(ctx.store), **fresh}
        return replace(
            update_hull(ctx.config, store=ctx.store, round=ctx.round, novelty=novelty), novelty=fresh
        )

    def commit(self, ctx: StageContext, result: HullUpdate) -> dict[str, Any]:
        ctx.store.set_stability(ctx.round, result.verdicts)
        if result.novelty:
            recorded = ctx.store.get_meta(META_KEY) or {}
            ctx.store.set_meta(META_KEY, {**recorded, **{h: n.as_dict() for h, n in result.novelty.items()}})
        return result.report


STAGE = UpdateStage()
