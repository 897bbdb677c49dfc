"""What a campaign withholds (rediscovery mode): the bundled crystals, as the config selects them and as the store
recorded them, and the OPTIMADE providers' cached crystals marked withheld where they are.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from generator.base import KnownStructure
from generator.seeds import load_seeds, seed_table
from loop.config import CampaignConfig
from loop.runtime.provider_crystals import ProviderCrystal, cached_provider_crystals
from loop.store import CampaignStore


def withheld_records(config: CampaignConfig) -> list[dict[str, Any]]:
    """The bundled crystals this campaign withholds (rediscovery mode), as JSON-ready records.

    Each record: material_id, formula (reduced), spacegroup, split, structure (pymatgen `Structure.as_dict()`).
    Ids listed in `withhold` are recorded wherever they lie; formulas and "all_compounds" only match inside the
    target systems by construction.
    """
    withhold = config.withholding
    if not withhold:
        return []
    table = seed_table()
    ids = table["material_id"][withhold.mask(table)]
    inside = [
        k
        for k in load_seeds(ids=ids)
        if k.id in withhold.ids
        or any(
            {el.symbol for el in k.structure.composition.elements} <= set(s.split("-"))
            for s in config.chemical_systems
        )
    ]
    return [
        {
            "material_id": k.id,
            "formula": k.structure.composition.reduced_formula,
            "spacegroup": k.properties.get("spacegroup"),
            "split": k.properties.get("split"),
            "structure": k.structure.as_dict(),
        }
        for k in sorted(inside, key=lambda k: k.id)
    ]


def provider_crystals(config: CampaignConfig, *, workdir: Path) -> list[ProviderCrystal]:
    """The OPTIMADE providers' cached crystals of the target systems (`loop.runtime.provider_crystals`), each marked
    withheld when its id or formula is, or when it is the same crystal (the funnel's matcher) as a withheld bundled
    one. Empty with `references.source: bundled`; never queries."""
    refs = config.references
    if refs.source != "optimade":
        return []
    crystals = cached_provider_crystals(
        refs.optimade, chemical_systems=config.chemical_systems, workdir=workdir
    )
    withhold = config.withholding
    if not withhold:
        return crystals
    held: dict[str, list[Structure]] = {}
    for r in withheld_records(config):
        held.setdefault(r["formula"], []).append(Structure.from_dict(r["structure"]))
    matcher = config.generator.funnel.matcher.matcher()
    out = []
    for c in crystals:
        comp = c.structure.composition
        covered = withhold.covers(
            material_id=c.id,
            reduced_formula=comp.reduced_formula,
            elements=[el.symbol for el in comp.elements],
        ) or any(matcher.fit(c.structure, w) for w in held.get(comp.reduced_formula, []))
        out.append(replace(c, withheld=covered))
    return out


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


__all__ = ["provider_crystals", "withheld_records", "withheld_structures"]
