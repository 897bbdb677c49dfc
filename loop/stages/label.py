"""Label: run the oracle on the round's queries, committing each result as it completes (`loop.runtime.labelling`).

Units: times s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from loop.runtime.control import StopRequested
from loop.runtime.faults import crash_point
from loop.runtime.labelling import label_hashes
from loop.runtime.progress import Progress
from loop.stages.base import StageContext
from loop.store import StoredResult

log = logging.getLogger("matloop")


@dataclass(frozen=True)
class Labels:
    """The result of every query of the round: the stored one, or a transient failure (not stored, retried)."""

    queried: list[str]
    results: dict[str, StoredResult]


class LabelStage:
    """Label the round's queries; the results are already committed one by one, the stage commits its metrics."""

    name = "label"

    def compute(self, ctx: StageContext) -> Labels:
        hashes = [q.hash for q in ctx.store.round_queries(ctx.round)]
        ex = ctx.executor
        committed = 0
        # Counts results as they are committed (those already stored before a resume are not shown).
        bar = Progress(total=len(hashes), what=f"round {ctx.round}: label", unit="calls")

        def on_commit() -> None:
            nonlocal committed
            committed += 1
            bar.update(1)
            crash_point(self.name, ctx.round, committed)

        results = label_hashes(
            ctx.store,
            hashes,
            settings=ctx.config.oracle,
            workdir=ctx.workdir,
            round=ctx.round,
            submit=None if ex is None or ex.inline else ex.submit,
            as_completed=None if ex is None or ex.inline else ex.as_completed,
            on_commit=on_commit,
            max_volume_per_atom=ctx.config.generator.funnel.volume_per_atom[1],
            # A stop request lets the calculations under way finish and be stored; the rest wait for the resume.
            should_stop=ctx.should_stop,
            cancel_queued=None if ex is None or ex.inline else ex.cancel_queued,
        )
        bar.close()
        if ctx.should_stop():
            raise StopRequested
        return Labels(queried=hashes, results=results)

    def commit(self, ctx: StageContext, result: Labels) -> dict[str, Any]:
        failed = {h: r for h, r in result.results.items() if not r.ok}
        for h, r in failed.items():
            log.info("round %d: oracle failed on %s (%s): %s", ctx.round, h, r.failure_kind, r.reason)
        return {
            "n_queried": len(result.queried),
            "n_ok": len(result.results) - len(failed),
            "n_failed": len(result.queried) - (len(result.results) - len(failed)),
            "oracle_wall_time_s": round(sum(r.wall_time for r in result.results.values()), 2),
        }


STAGE = LabelStage()
