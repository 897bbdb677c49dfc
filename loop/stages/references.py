"""Round 0, references: the known crystals the oracle labels to build the hull in its own level of theory.

The stage stores what `loop.work.references` computes.

Energies eV/atom.
"""

from __future__ import annotations

from typing import Any

from loop.stages.base import StageContext
from loop.store import Query
from loop.work.references import References, gather_references


class ReferencesStage:
    """Fetch the providers' crystals (`references.source: optimade`, once: cached in the workdir), store the
    references as round-0 structures and queue them for the oracle."""

    name = "references"

    def compute(self, ctx: StageContext) -> References:
        return gather_references(ctx.config, workdir=ctx.workdir)

    def commit(self, ctx: StageContext, result: References) -> dict[str, Any]:
        store = ctx.store
        store.set_meta("withheld", result.withheld)
        hashes = [
            store.add_structure(
                p.known.structure,
                source="seed",
                parent=p.known.id,
                round=0,
                provenance={"material_id": p.known.id, "role": p.role, **p.known.properties},
            )
            for p in result.picks
        ]
        store.add_queries(
            0, [Query(hash=h, strategy="references", rank=i, score=None) for i, h in enumerate(hashes)]
        )
        return {
            "n_references": len(hashes),
            "n_elements": sum(1 for p in result.picks if p.role == "element"),
            "n_compounds": sum(1 for p in result.picks if p.role == "compound"),
            "n_withheld": len(result.withheld),
            "n_provider_references": sum(1 for p in result.picks if "provider" in p.known.properties),
            "providers": result.providers,
        }


STAGE = ReferencesStage()
