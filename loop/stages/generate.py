"""Generate: every generator of the mix proposes its share of candidates.

Units: times s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import generator  # noqa: F401  (registers the generators)
from generator.base import Candidate, GenerationContext, KnownStructure, get_generator_class
from generator.substitution import SubstitutionGenerator, prototype_parents
from loop.candidate_pool import live_candidates
from loop.config import CampaignConfig
from loop.funnel import KnownIndex
from loop.stages.base import StageContext, seconds
from loop.stages.references import provider_crystals
from loop.stages.shared import discoveries, known_index
from loop.store import CampaignStore, Generated

log = logging.getLogger("matloop")

SUBSTITUTION_CHUNK = 16  # parents offered to the substitution generator at a time
PROTOTYPES_MIN = 64  # fewest prototype parents searched per round


def spent_prototypes(config: CampaignConfig, store: CampaignStore, round: int) -> set[str]:
    """Prototypes spent by labels: a substitution child of an earlier round is labelled or still in the candidate
    pool (`loop.candidate_pool.live_candidates`). A prototype whose children were only screened and dropped (the
    funnel removed them, or the pool let them go) is offered again."""
    alive = live_candidates(config, store=store, round=round)
    rows = store.structure_rows(where="source = ? AND round < ?", params=("substitution", round))
    return {
        r.provenance["parent_prototype"]
        for r in rows
        if r.provenance.get("parent_prototype") and r.hash in alive
    }


def substitution_candidates(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    round: int,
    n: int,
    discoveries: Sequence[KnownStructure],
    known: KnownIndex,
) -> tuple[list[Candidate], dict[str, int]]:
    """Up to `n` substitution candidates that search structure types.

    Parents: the campaign's discoveries, the OPTIMADE providers' crystals not withheld, then one bundled crystal
    per prototype (`prototype_parents`: every
    bundled chemical system that substitutes into a target system, best Hautier score first), skipping the
    withheld crystals and the prototypes used in earlier rounds. Children matching a known structure (`known`,
    which also receives every child kept) or larger than the funnel's `max_atoms` are dropped here, so a parent
    whose children are all known yields nothing and the next prototype is tried.

    Returns:
        The candidates and counts: parents offered, prototypes skipped as spent, children dropped as known.
    """
    settings = config.generator.substitution
    spent = spent_prototypes(config, store, round)
    # The providers' crystals of the target systems (`references.source: optimade`) are parents as well.
    providers = [c.as_known() for c in provider_crystals(config, workdir=store.path.parent) if not c.withheld]
    parents = [
        *discoveries,
        *providers,
        *prototype_parents(
            chemical_systems=config.chemical_systems,
            settings=settings,
            withhold=config.withholding,
            exclude_prototypes=spent,
            # enough structure types for this round even if most children turn out known; scoring every
            # ionic formula of an oxide system would take minutes
            limit=max(PROTOTYPES_MIN, 4 * n),
        ),
    ]
    made_by = SubstitutionGenerator(settings=settings)
    out: list[Candidate] = []
    counts = {"parents": len(parents), "spent_prototypes": len(spent), "known_children": 0}
    max_atoms = config.generator.funnel.max_atoms
    for start in range(0, len(parents), SUBSTITUTION_CHUNK):
        chunk = parents[start : start + SUBSTITUTION_CHUNK]
        context = GenerationContext(known=chunk, chemical_systems=config.chemical_systems)
        made = made_by.generate(
            n=len(chunk) * settings.max_candidates_per_parent,
            context=context,
            seed=config.seed * 1000 + round + start,
        )
        for cand in made:
            if max_atoms is not None and len(cand.structure) > max_atoms:
                continue  # the funnel would drop it; spend the slot on another structure type
            if known.find(cand.structure) is not None:
                counts["known_children"] += 1
                continue
            # two parents can give the same child: keep the first
            known.add(id=f"substitution-{len(out)}", structure=cand.structure, origin="campaign")
            out.append(cand)
            if len(out) >= n:
                return out, counts
    return out, counts


def generate_candidates(
    config: CampaignConfig, *, store: CampaignStore, round: int, generator_checkpoint: Path | None
) -> tuple[list[Candidate], dict[str, float]]:
    """Ask every generator of the mix for its share of candidates.

    A generator that `supports_conditions` gets its settings' `conditions`; one that `supports_fine_tune` starts
    from the campaign's latest fine-tuned checkpoint (`generator_checkpoint`) when there is one.

    Returns:
        The candidates and the wall time of each generator, s.
    """
    gen_cfg = config.generator
    found = discoveries(config, store)
    candidates: list[Candidate] = []
    timings: dict[str, float] = {}
    for name, n in gen_cfg.mix.items():
        if n <= 0:
            continue
        cls = get_generator_class(name)
        settings = gen_cfg.settings_for(name)
        if cls.supports_fine_tune and generator_checkpoint is not None:
            settings = settings.model_copy(update={"checkpoint": str(generator_checkpoint)})
        started = time.time()
        if cls is SubstitutionGenerator:
            # The structure-type search needs the campaign's store and known index, not only a context.
            known = known_index(config, store=store, before_round=round)
            made, counts = substitution_candidates(
                config, store=store, round=round, n=n, discoveries=found, known=known
            )
            log.info(
                "round %d: substitution searched %d parents (%d prototypes spent), dropped %d known children",
                round,
                counts["parents"],
                counts["spent_prototypes"],
                counts["known_children"],
            )
        else:
            context = GenerationContext(
                known=found,
                chemical_systems=config.chemical_systems,
                conditions=dict(settings.conditions) if cls.supports_conditions else {},
            )
            made = cls(settings=settings).generate(n=n, context=context, seed=config.seed * 1000 + round)
        timings[name] = seconds(time.time() - started)
        candidates.extend(made)
        log.info("round %d: %s proposed %d candidates in %.1f s", round, name, len(made), timings[name])
    return candidates, timings


@dataclass(frozen=True)
class Generation:
    """A round's candidates, in generation order, and each generator's wall time, s."""

    candidates: list[Candidate]
    timings: dict[str, float]


class GenerateStage:
    """Store every candidate with its provenance and the round's list of generated candidates."""

    name = "generate"

    def compute(self, ctx: StageContext) -> Generation:
        candidates, timings = generate_candidates(
            ctx.config, store=ctx.store, round=ctx.round, generator_checkpoint=ctx.checkpoint("generator")
        )
        return Generation(candidates=candidates, timings=timings)

    def commit(self, ctx: StageContext, result: Generation) -> dict[str, Any]:
        rows = [
            Generated(
                hash=ctx.store.add_structure(
                    c.structure, source=c.source, parent=c.parent, round=ctx.round, provenance=c.info
                ),
                source=c.source,
            )
            for c in result.candidates
        ]
        ctx.store.add_generated(ctx.round, rows)
        per_source: dict[str, int] = {}
        for g in rows:
            per_source[g.source] = per_source.get(g.source, 0) + 1
        return {"n_generated": len(rows), "per_source": per_source, "timings_s": result.timings}


STAGE = GenerateStage()
