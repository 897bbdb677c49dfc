"""Update: rebuild the oracle hull with every label so far and judge every labelled structure against it.

Units: energies eV/atom.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loop.config import CampaignConfig
from loop.science.emulator_errors import emulator_metrics
from loop.store import CampaignStore, StabilityRecord
from loop.views.novelty import Novelty
from loop.views.oracle_hull import current_hull


@dataclass(frozen=True)
class HullUpdate:
    """The verdict on every labelled structure at the end of the round, the stage's metrics, and the novelty of the
    labels judged this time (`loop.views.novelty`)."""

    verdicts: list[StabilityRecord]
    report: dict[str, Any]
    novelty: dict[str, Novelty] = field(default_factory=dict)


def update_hull(
    config: CampaignConfig, *, store: CampaignStore, round: int, novelty: Mapping[str, Novelty] | None = None
) -> HullUpdate:
    """Rebuild the oracle hull with everything labelled so far and judge every labelled structure against it.

    Verdicts follow `loop.science.verdicts` (the campaign's `stability_rule`). Rates count this round's queries; cumulative
    counts are the campaign's own discoveries (first queried in a round >= 1), never the references. With
    `novelty` (by hash), hits that are known crystals are counted as rediscoveries, apart from the new ones.
    """
    known = {h for h, n in (novelty or {}).items() if n.known}
    rule = config.stability_rule
    hull = current_hull(config, store)
    e_hull = hull.entry_e_above_hull()
    settings_hash = config.oracle.settings_hash()
    # A label whose oracle relaxation ended on the crystal of an earlier label is on the hull (or not) as that one
    # is, but it is not a new discovery: it never counts as stable or as a hit.
    duplicates = {
        r.hash for r in store.oracle_results(settings_hash=settings_hash, ok_only=True) if r.duplicate_of
    }
    verdicts = [
        StabilityRecord(
            hash=h,
            e_hull=float(e),
            stable=rule.is_stable(e) and h not in duplicates,
            hit=rule.is_hit(e) and h not in duplicates,
        )
        for h, e in e_hull.items()
    ]
    queried = [q.hash for q in store.round_queries(round)]
    results = {h: store.get_oracle_result(h, settings_hash) for h in queried}
    this_round = {h: e_hull[h] for h in queried if h in e_hull and h not in duplicates}
    n_stable = sum(1 for e in this_round.values() if rule.is_stable(e))
    n_hits = sum(1 for e in this_round.values() if rule.is_hit(e))
    discovery_round = round > 0 and bool(queried)
    report: dict[str, Any] = {
        "hull_entries": len(e_hull),
        "hull_stable_entries": len(hull.stable_ids()),
        "n_labelled_round": len(this_round),
        "n_duplicates_round": sum(1 for h in queried if h in duplicates),
        "n_failed_round": sum(1 for r in results.values() if r is not None and not r.ok),
        "n_stable_new": n_stable if round > 0 else 0,
        "n_near_stable_new": n_hits - n_stable if round > 0 else 0,
        "n_hits_new": n_hits if round > 0 else 0,
        "hit_rate": n_hits / len(queried) if discovery_round else None,
        "stable_rate": n_stable / len(queried) if discovery_round else None,
        "near_stable_threshold": rule.near_stable,
    }
    if round > 0:
        first_query = store.first_query_rounds()
        discovered = [v for v in verdicts if v.hit and first_query.get(v.hash, -1) >= 1]
        report["cumulative_stable"] = sum(1 for v in discovered if v.stable)
        report["cumulative_hits"] = len(discovered)
        rediscovered = sum(1 for h, e in this_round.items() if rule.is_hit(e) and h in known)
        report["n_rediscoveries_new"] = rediscovered
        report["n_new_discoveries"] = n_hits - rediscovered
        report["cumulative_new_discoveries"] = sum(1 for v in discovered if v.hash not in known)
        report["cumulative_rediscoveries"] = sum(1 for v in discovered if v.hash in known)
        preds = {p.relaxed_hash: p for p in store.round_predictions(round)}
        pairs = []
        for h in queried:
            label = results.get(h)
            if h in preds and label is not None and label.ok:
                pairs.append((preds[h].energy_per_atom, preds[h].energy_per_atom_std, label.energy_per_atom))
        report.update(emulator_metrics(pairs))
    return HullUpdate(verdicts=verdicts, report=report)
