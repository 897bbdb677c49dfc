"""Generate: every generator of the mix proposes its share of candidates.

The stage stores what `loop.work.generation` computes.

Units: times s.
"""

from __future__ import annotations

from typing import Any

import generator  # noqa: F401  (registers the generators)
from loop.stages.base import StageContext
from loop.store import Generated
from loop.work.generation import Generation, generate_candidates, round_breadth


class GenerateStage:
    """Store every candidate with its provenance and the round's list of generated candidates."""

    name = "generate"

    def compute(self, ctx: StageContext) -> Generation:
        return generate_candidates(
            ctx.config, store=ctx.store, round=ctx.round, generator_checkpoint=ctx.checkpoint("generator")
        )

    def commit(self, ctx: StageContext, result: Generation) -> dict[str, Any]:
        rows = [
            Generated(
                hash=ctx.store.add_structure(
                    c.structure, source=c.source, parent=c.parent, round=ctx.round, provenance=c.info
                ),
                source=c.source,
            )
            for c in result.candidates
        ]
        ctx.store.add_generated(ctx.round, rows)
        return {
            "n_generated": len(rows),
            "per_source": result.per_source,
            "timings_s": result.timings,
            # each generator's share of the mix plus what the ones before it could not make
            "asked": result.asked,
            "unmade": result.unmade,
            # the structure-type search: decorated structure types proposed
            "n_decorations": sum(c.info.get("operation") == "decoration" for c in result.candidates),
            **round_breadth(result.candidates),
        }


STAGE = GenerateStage()
