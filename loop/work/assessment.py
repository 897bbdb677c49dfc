"""Assess: judge every hit of the campaign against the design requirements and keep the shortlist (`loop.runtime.shortlist`).

It runs every round, after the hull update and the retraining and before tracking, on every hit the campaign has
queried (its discoveries, `loop.science.verdicts`) on this round's hull:
* the cheap requirements are recomputed for all of them each round, because the hull they lean on (the window,
  E_hull) changes as labels arrive, and they cost milliseconds;
* an expensive check (MD, phonons) runs once per structure and settings: a hit assessed in an earlier round is
  read back from the store, so each round pays only for its new hits. Running it each round rather than once at
  the campaign's end keeps the shortlist current for a daemon that runs for days (a stop by `max_hours` or a
  signal finds it up to date), and spreads the MD over the rounds instead of leaving hours of it after the last
  one.
The MD uses the campaign's current emulator checkpoint (this round's retrained one). Each expensive result is
stored as it completes; a process killed mid-stage redoes only the checks not stored.

Units: as in `loop.design.requirements`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loop.config import CampaignConfig
from loop.runtime.shortlist import ExpensiveReport, ExpensiveStore, ShortlistRow, Subject
from loop.store import CampaignStore
from oracle.base import get_oracle_class


@dataclass(frozen=True)
class Assessed:
    """The rows of every hit, and what the expensive checks did."""

    rows: list[ShortlistRow]
    report: ExpensiveReport
    seconds: float


def hit_subjects(config: CampaignConfig, store: CampaignStore) -> list[Subject]:
    """The campaign's hits on the latest hull as structures to judge: each one's oracle-relaxed cell, its oracle
    energy and the band gap of its oracle calculation."""
    rule = config.stability_rule
    first = store.first_query_rounds()
    hits = [v for v in store.stability() if rule.is_discovery(v.e_hull, first_round=first.get(v.hash))]
    settings_hash = config.oracle.settings_hash()
    results = {r.hash: r for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)}
    finals = {v.hash: results[v.hash].structure_hash for v in hits if v.hash in results}
    structures = store.get_structures(sorted(set(finals.values())))
    computes_gap = "band_gap" in get_oracle_class(config.oracle.kind).implemented_properties
    subjects = []
    for v in hits:
        if v.hash not in finals or finals[v.hash] not in structures:
            continue
        meta = results[v.hash].metadata
        gap = meta.get("band_gap")
        if computes_gap:
            why = "labelled before band gaps were recorded" if gap is None else ""
        else:
            why = f"oracle {config.oracle.kind} computes no band gap"
        subjects.append(
            Subject(
                key=v.hash,
                structure=structures[finals[v.hash]],
                structure_hash=finals[v.hash],
                energy_per_atom=results[v.hash].energy_per_atom,
                e_hull=v.e_hull,
                band_gap=None if gap is None else float(gap),
                band_gap_functional=meta.get("band_gap_functional"),
                band_gap_why=why,
            )
        )
    return subjects


def campaign_results(store: CampaignStore, *, round: int) -> ExpensiveStore:
    """The campaign store as the home of expensive results."""

    def commit(h: str, requirement: str, key: str, result: dict[str, Any]) -> None:
        body = {k: v for k, v in result.items() if k != "wall_time"}
        store.add_assessment(
            h,
            requirement=requirement,
            settings_key=key,
            result=body,
            round=round,
            wall_time=float(result.get("wall_time") or 0.0),
        )

    return ExpensiveStore(stored=store.assessments, commit=commit)
