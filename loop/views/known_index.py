"""The duplicate/novelty index of a round: everything known before it, bundled, provided and stored."""

from __future__ import annotations

from loop.config import CampaignConfig
from loop.science.funnel import KnownIndex
from loop.store import CampaignStore
from loop.views.withholding import provider_crystals


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


__all__ = ["known_index"]
