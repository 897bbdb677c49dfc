"""The oracle hull as the store holds it: every successful label at the campaign's oracle settings, the phases on
it, and the campaign's discoveries on it.

Units: energies eV/atom.
"""

from __future__ import annotations

import math

from pymatgen.core import Structure

from generator.base import KnownStructure
from loop.config import CampaignConfig
from loop.science.hull import HullEntry, OracleHull
from loop.store import CampaignStore


def current_hull(config: CampaignConfig, store: CampaignStore) -> OracleHull:
    """The convex hull of every successful oracle result with this campaign's oracle settings."""
    results = store.oracle_results(settings_hash=config.oracle.settings_hash(), ok_only=True)
    structures = store.get_structures([r.hash for r in results])
    entries = [
        HullEntry.from_total_energy(
            entry_id=r.hash, composition=structures[r.hash].composition, energy=r.energy
        )
        for r in results
        if r.energy is not None and math.isfinite(r.energy)
    ]
    return OracleHull.from_entries(entries)


def hull_phases(config: CampaignConfig, store: CampaignStore, hull: OracleHull) -> dict[str, Structure]:
    """The oracle's final (relaxed) structure of every entry on `hull`, by entry id (the labelled hash)."""
    on_hull = set(hull.stable_ids())
    results = store.oracle_results(settings_hash=config.oracle.settings_hash(), ok_only=True)
    final = {r.hash: r.final_hash or r.hash for r in results if r.hash in on_hull}
    structures = store.get_structures(sorted(set(final.values())))
    return {h: structures[f] for h, f in final.items() if f in structures}


def discoveries(config: CampaignConfig, store: CampaignStore) -> list[KnownStructure]:
    """The campaign's own discoveries: hits (`loop.science.verdicts`) on the latest hull that were first queried in a
    round >= 1. References (round 0) are never discoveries."""
    rule = config.stability_rule
    first_query = store.first_query_rounds()
    rows = [v for v in store.stability() if rule.is_discovery(v.e_hull, first_round=first_query.get(v.hash))]
    structures = store.get_structures([v.hash for v in rows])
    return [
        KnownStructure(id=v.hash, structure=structures[v.hash], properties={"e_above_hull": v.e_hull})
        for v in rows
        if v.hash in structures
    ]


__all__ = ["current_hull", "discoveries", "hull_phases"]
