"""What several stages read from the store: the known-structure index, the oracle hull, the discoveries.

Units: energies eV/atom.
"""

from __future__ import annotations

import math

from pymatgen.core import Structure

from generator.base import KnownStructure
from loop.config import CampaignConfig
from loop.science.funnel import KnownIndex
from loop.science.hull import HullEntry, OracleHull
from loop.stages.references import provider_crystals
from loop.store import CampaignStore


def known_index(config: CampaignConfig, *, store: CampaignStore, before_round: int) -> KnownIndex:
    """The duplicate/novelty index of a round: every bundled crystal not withheld (origin "seed", lazily parsed),
    every OPTIMADE provider crystal not withheld (`references.source: optimade`, from the workdir's cache; origin
    "seed") and every structure the campaign stored before `before_round` (its references count as "seed").

    Candidates that passed an earlier funnel come with the fingerprint it stored, so they are parsed only when a
    query's formula and fingerprint come close to theirs.
    """
    index = KnownIndex.from_seed_data(matcher=config.generator.funnel.matcher, withhold=config.withholding)
    for crystal in provider_crystals(config, workdir=store.path.parent):
        if not crystal.withheld:
            index.add(id=crystal.key, structure=crystal.structure, origin="seed")
    earlier = store.structure_rows(where="round < ? OR round IS NULL", params=(before_round,))
    stored = store.fingerprints(before_round=before_round)
    structures = store.get_structures([r.hash for r in earlier if r.hash not in stored])
    for r in earlier:
        h = r.hash
        origin = "seed" if r.source == "seed" else "campaign"
        if h in stored:
            index.add(id=h, structure=lambda h=h: store.get_structure(h), fp=stored[h], origin=origin)
        else:
            index.add(id=h, structure=structures[h], origin=origin)
    return index


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


def withheld_structures(store: CampaignStore) -> list[KnownStructure]:
    """What the campaign in `store` withheld, as `KnownStructure`s (empty when nothing was)."""
    return [
        KnownStructure(
            id=r["material_id"],
            structure=Structure.from_dict(r["structure"]),
            properties={k: v for k, v in r.items() if k != "structure"},
        )
        for r in store.get_meta("withheld") or []
    ]


__all__ = ["current_hull", "discoveries", "hull_phases", "known_index", "withheld_structures"]
