"""Screen: relax the funnel's survivors with the emulator ensemble and place them against the oracle hull.

The stage stores what `loop.work.screening` computes.

Units: energies eV/atom, times s.
"""

from __future__ import annotations

from typing import Any

from loop.runtime.screening_cache import cache_dir, clear
from loop.stages.base import StageContext
from loop.views.candidate_pool import carried_candidates
from loop.work.screening import Screening, screen


class ScreenStage:
    """Store the emulator-relaxed structures and the predictions of the funnel's survivors."""

    name = "screen"

    def compute(self, ctx: StageContext) -> Screening:
        passed = [c.hash for c in ctx.store.candidates(ctx.round, passed=True)]
        return screen(
            ctx.config,
            store=ctx.store,
            hashes=passed,
            checkpoint=ctx.checkpoint("emulator"),
            executor=ctx.executor,
            carried=carried_candidates(ctx.config, store=ctx.store, round=ctx.round),
            round=ctx.round,
            cache_folder=cache_dir(ctx.workdir, ctx.round),
            should_stop=ctx.should_stop,
        )

    def commit(self, ctx: StageContext, result: Screening) -> dict[str, Any]:
        relaxed_hash = {p.hash: p.relaxed_hash for p in result.predictions}
        for parent, structure in result.relaxed.items():
            ctx.store.add_structure(
                structure,
                source="relaxed",
                parent=parent,
                round=ctx.round,
                provenance={"relaxed_by": "emulator"},
                hash=relaxed_hash[parent],
            )
        ctx.store.add_predictions(ctx.round, result.predictions)
        # The store holds every result now (the transaction commits right after; a kill in between costs a
        # recomputation of the tiers, never a wrong result).
        clear(cache_dir(ctx.workdir, ctx.round))
        return result.report


STAGE = ScreenStage()
