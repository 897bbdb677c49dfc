"""Funnel: validity, charge balance, dedup (within the batch and against everything known), novelty, design filters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from generator.base import Candidate
from loop.config import CampaignConfig
from loop.runtime.progress import progress
from loop.science.funnel import Funnel
from loop.store import CampaignStore, FunnelOutcome, Generated
from loop.views.known_index import known_index


@dataclass(frozen=True)
class Funnelled:
    """The funnel's outcome for every generated candidate of a round, and its metrics."""

    outcomes: list[FunnelOutcome]
    report: dict[str, Any]


def run_funnel(
    config: CampaignConfig, *, store: CampaignStore, round: int, candidates: Sequence[Generated]
) -> Funnelled:
    """Run the funnel on this round's generated structures (in generation order).

    The report holds the funnel's counts per filter (`report`), per source (`per_source`: in / passed), and the
    totals `n_in`, `n_passed`.
    """
    # Novelty is judged against every bundled crystal not withheld; the index parses a CIF only on a formula hit.
    known = known_index(config, store=store, before_round=round)
    structures = store.get_structures([g.hash for g in candidates])
    batch = [Candidate(structure=structures[g.hash], source=g.source, parent=None) for g in candidates]
    with progress(total=len(batch), what=f"round {round}: funnel") as bar:
        kept, report = Funnel(config.generator.funnel, known=known, design=config.design).run(
            batch, chemical_systems=config.chemical_systems, progress=bar.update
        )
    rejected = {rej.index: rej for rej in report.rejections}
    fingerprints = dict(zip(report.kept_indices, report.fingerprints, strict=True))
    outcomes = []
    per_source: dict[str, dict[str, int]] = {}
    for i, g in enumerate(candidates):
        rej = rejected.get(i)
        outcomes.append(
            FunnelOutcome(
                hash=g.hash,
                source=g.source,
                passed=rej is None,
                reason=None if rej is None else f"{rej.filter}: {rej.reason}",
                fingerprint=fingerprints.get(i),
            )
        )
        counts = per_source.setdefault(g.source, {"in": 0, "passed": 0})
        counts["in"] += 1
        counts["passed"] += int(rej is None)
    # Which candidates were kept, why the others were not and the fingerprints are stored with the outcomes.
    summary = report.to_dict()
    for per_candidate in ("fingerprints", "rejections", "kept_indices"):
        summary.pop(per_candidate, None)
    return Funnelled(
        outcomes=outcomes,
        report={"report": summary, "per_source": per_source, "n_in": len(candidates), "n_passed": len(kept)},
    )
