"""Assess: judge every hit of the campaign against the design requirements and keep the shortlist (`loop.runtime.shortlist`).

The stage stores what `loop.work.assessment` computes.

Units: as in `loop.design.requirements`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from loop.runtime.control import StopRequested
from loop.runtime.faults import crash_point
from loop.runtime.shortlist import assess
from loop.stages.base import StageContext
from loop.views.oracle_hull import current_hull
from loop.work.assessment import Assessed, campaign_results, hit_subjects


class AssessStage:
    """Judge the hits against `design:`; expensive results are committed one by one, the rows with the stage."""

    name = "assess"

    def compute(self, ctx: StageContext) -> Assessed:
        started = time.time()
        subjects = hit_subjects(ctx.config, ctx.store)
        hull = current_hull(ctx.config, ctx.store) if subjects else None
        committed = 0

        def on_commit() -> None:
            nonlocal committed
            committed += 1
            crash_point(self.name, ctx.round, committed)

        checkpoint = ctx.checkpoint("emulator")
        rows, report = assess(
            ctx.config.design,
            subjects,
            hull_entries=None if hull is None else hull.entries_in(ctx.config.elements),
            results=campaign_results(ctx.store, round=ctx.round),
            executor=ctx.executor,
            checkpoint=None if checkpoint is None else os.fspath(checkpoint),
            should_stop=ctx.should_stop,
            on_commit=on_commit,
        )
        if report.stopped:
            raise StopRequested
        return Assessed(rows=rows, report=report, seconds=time.time() - started)

    def commit(self, ctx: StageContext, result: Assessed) -> dict[str, Any]:
        ctx.store.set_shortlist(ctx.round, [r.to_dict() for r in result.rows])
        statuses = [r.status.value for r in result.rows]
        return {
            "n_assessed": len(result.rows),
            "n_pass": statuses.count("pass"),
            "n_unknown": statuses.count("unknown"),
            "n_fail": statuses.count("fail"),
            "computed": dict(result.report.computed),
            "reused": dict(result.report.reused),
        }


STAGE = AssessStage()
