"""Generate: every generator of the mix proposes its share of candidates.

Units: times s.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import generator  # noqa: F401  (registers the generators)
from generator.base import Candidate, GenerationContext, KnownStructure, generator_names, get_generator_class
from generator.compositions import (
    AllowedComposition,
    allowed_compositions,
    composition_weights,
    rank_compositions,
)
from generator.substitution import (
    Breadth,
    breadth,
    decorated_candidates,
    prototype_decorations,
    prototype_parents,
)
from loop.config import CampaignConfig
from loop.runtime.progress import Progress, seconds
from loop.science.funnel import KnownIndex
from loop.store import CampaignStore
from loop.views.candidate_pool import live_candidates
from loop.views.known_index import known_index
from loop.views.oracle_hull import discoveries
from loop.views.withholding import provider_crystals

log = logging.getLogger("matloop")


SUBSTITUTION_CHUNK = 16  # parents offered to the substitution generator at a time


PROTOTYPES_MIN = 64  # fewest prototype parents searched per round


CELL_LIMIT = 40  # atoms per formula unit enumerated when the funnel sets no max_atoms


GENERATED_SOURCES = tuple(generator_names())


def cell_limit(config: CampaignConfig) -> int:
    """The largest cell a candidate may have (the funnel's `max_atoms`), atoms; it bounds the formula units
    the round asks for."""
    return config.generator.funnel.max_atoms or CELL_LIMIT


def within_cell_limit(config: CampaignConfig, settings: Any) -> Any:
    """A generator's settings with its own `max_atoms` (if it has one) lowered to the cell limit, so it does not
    make cells the funnel would drop."""
    limit = getattr(settings, "max_atoms", None)
    if limit is None or limit <= cell_limit(config):
        return settings
    return settings.model_copy(update={"max_atoms": cell_limit(config)})


def round_compositions(
    config: CampaignConfig, *, store: CampaignStore, round: int
) -> tuple[list[AllowedComposition], dict[str, float]]:
    """The compositions a round asks for, most needed first, and each one's weight (`generator.compositions`).

    Every allowed composition of the target systems up to the cell limit is weighted by its class and size,
    down-weighted when a labelled structure of that formula is already a hit (stable or near-stable on the
    latest hull) and for every earlier round that generated it; the order is drawn from the weights with a
    seed of the campaign and round.
    """
    allowed = allowed_compositions(config.chemical_systems, max_atoms=cell_limit(config))
    hits = {v.hash for v in store.stability() if v.hit}
    rows = store.structure_rows(
        where=f"round < ? AND source IN ({','.join('?' * len(GENERATED_SOURCES))})",
        params=(round, *GENERATED_SOURCES),
    )
    rounds_of: dict[str, set[int]] = {}
    for r in rows:
        rounds_of.setdefault(r.reduced_formula, set()).add(int(r.round or 0))
    solved = {store.structure_row(h).reduced_formula for h in hits if store.has_structure(h)}
    weights = composition_weights(allowed, solved=solved, tried={f: len(v) for f, v in rounds_of.items()})
    ranked = rank_compositions(allowed, weights=weights, seed=config.seed * 1000 + round)
    return ranked, {c.formula: w for c, w in zip(allowed, weights, strict=True)}


def spent_decorations(config: CampaignConfig, store: CampaignStore, round: int) -> set[tuple[str, str]]:
    """(prototype, reduced formula) pairs spent by labels: a substitution child of an earlier round with that
    prototype and formula is labelled or still in the candidate pool (`loop.views.candidate_pool.live_candidates`).

    A prototype is spent for ionic substitution when any of its pairs is. One whose children were only screened and
    dropped (the funnel removed them, or the pool let them go) is offered again.
    """
    alive = live_candidates(config, store=store, round=round)
    rows = store.structure_rows(where="source = ? AND round < ?", params=("substitution", round))
    return {
        (r.provenance["parent_prototype"], r.reduced_formula)
        for r in rows
        if r.provenance.get("parent_prototype") and r.hash in alive
    }


def substitution_candidates(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    round: int,
    name: str,
    n: int,
    discoveries: Sequence[KnownStructure],
    known: KnownIndex,
    weights: dict[str, float] | None = None,
) -> tuple[list[Candidate], dict[str, int]]:
    """Up to `n` substitution candidates that search structure types, from two sources taking turns.

    Ionic substitution (half of `n` first, then whatever decoration leaves): parents are the campaign's
    discoveries, the OPTIMADE providers' crystals not withheld, then one bundled crystal per prototype
    (`prototype_parents`: every bundled chemical system that substitutes into a target system, best Hautier
    score first; full and partial (SAPS) substitutions), skipping the withheld crystals and spent prototypes.
    Decoration: every bundled structure type whose anonymous formula is that of an allowed composition
    (`prototype_decorations`, ranked by substitution probability times the composition's weight from
    `round_compositions`, or `weights`), skipping (prototype, formula) pairs spent by labels or pool entries,
    so the search goes on round after round until the types are exhausted. A child left at the cheap screening
    tier stays in the pool (`loop.views.candidate_pool`), so its pair is spent and the pool, not the search, offers
    it again.
    `generator.extra_decorations` more decoration candidates follow the `n`, further down the same list.
    Children matching a known structure (`known`, which also receives every child kept) or larger than the
    funnel's `max_atoms` are dropped here, so a parent whose children are all known yields nothing and the next
    one is tried.

    Args:
        name: The generator of the mix that `supports_prototype_search` (its class and settings make the children).

    Returns:
        The candidates and counts: parents offered, prototypes skipped as spent, children dropped as known,
        decorations on offer and decorations proposed.
    """
    settings = config.generator.settings_for(name)
    spent_pairs = spent_decorations(config, store, round)
    spent = {prototype for prototype, _ in spent_pairs}
    if weights is None:
        weights = round_compositions(config, store=store, round=round)[1]
    max_atoms = config.generator.funnel.max_atoms
    decorations = prototype_decorations(
        weights=weights,
        max_sites=min(max_atoms or CELL_LIMIT, settings.max_parent_sites),
        withhold=config.withholding,
        exclude=spent_pairs,
    )
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
    made_by = get_generator_class(name)(settings=settings)
    counts = {
        "parents": len(parents),
        "spent_prototypes": len(spent),
        "known_children": 0,
        "decorations_offered": len(decorations),
        "decorations": 0,
    }

    def ionic() -> Iterator[Candidate]:
        for start in range(0, len(parents), SUBSTITUTION_CHUNK):
            chunk = parents[start : start + SUBSTITUTION_CHUNK]
            context = GenerationContext(known=chunk, chemical_systems=config.chemical_systems)
            yield from made_by.generate(
                n=len(chunk) * settings.max_candidates_per_parent,
                context=context,
                seed=config.seed * 1000 + round + start,
            )

    out: list[Candidate] = []

    def take(source: Iterator[Candidate], upto: int) -> None:
        while len(out) < upto:
            cand = next(source, None)
            if cand is None:
                return
            if max_atoms is not None and len(cand.structure) > max_atoms:
                continue  # the funnel would drop it; spend the slot on another structure type
            if known.find(cand.structure) is not None:
                counts["known_children"] += 1
                continue
            # two parents can give the same child: keep the first
            known.add(id=f"substitution-{len(out)}", structure=cand.structure, origin="campaign")
            out.append(cand)
            if cand.info.get("operation") == "decoration":
                counts["decorations"] += 1

    from_ionic = ionic()
    decorated = decorated_candidates(
        decorations,
        chemical_systems=config.chemical_systems,
        settings=settings,
        seed=config.seed * 1000 + round,
    )
    take(from_ionic, math.ceil(n / 2))
    take(decorated, n)
    take(from_ionic, n)
    take(decorated, len(out) + config.generator.extra_decorations)
    return out, counts


def _context(
    config: CampaignConfig, cls: type, settings: Any, found: Sequence[KnownStructure], formulas: list[str]
) -> GenerationContext:
    return GenerationContext(
        known=found,
        chemical_systems=config.chemical_systems,
        conditions=dict(settings.conditions) if cls.supports_conditions else {},
        compositions=formulas,
    )


def sample_breadth(
    config: CampaignConfig, *, store: CampaignStore, round: int, name: str, checkpoint: Path | None
) -> dict[str, Breadth]:
    """Distinct formulas and prototypes of what a fine-tunable generator `name` proposes from `checkpoint` (None:
    its settings' own), `generator.fine_tune_check_samples` structures per request with one fixed seed, so two
    checkpoints answer the same requests:
    "request", round `round`'s compositions as the generate stage asks for them (prototypes tell), and "free",
    the target systems alone (the model's own choice of formulas tells).
    """
    cls = get_generator_class(name)
    settings = within_cell_limit(config, config.generator.settings_for(name))
    if checkpoint is not None:
        settings = settings.model_copy(update={"checkpoint": str(checkpoint)})
    ranked, _ = round_compositions(config, store=store, round=round)
    found = discoveries(config, store)
    n = config.generator.fine_tune_check_samples
    out = {}
    for kind, formulas in (("request", [c.formula for c in ranked]), ("free", [])):
        context = _context(config, cls, settings, found, formulas)
        made = cls(settings=settings).generate(n=n, context=context, seed=config.seed * 1000 + round)
        out[kind] = breadth([c.structure for c in made])
    return out


def compositions_used(asked: Sequence[str], made: Sequence[Candidate], *, default: int) -> int:
    """How many of the `asked` formulas (in order) a generator went through: up to the last one it made a
    candidate of. A generator passes over compositions it cannot make (the diffusion model beyond 20 atoms), so
    counting `n / structures_per_composition` would hand the next generator compositions already made (`default`
    when it made none of them)."""
    made_formulas = {c.structure.composition.reduced_formula for c in made}
    last = max((i for i, f in enumerate(asked) if f in made_formulas), default=default - 1)
    return last + 1


@dataclass(frozen=True)
class Generation:
    """A round's candidates, in generation order, with what each generator of the mix was asked for.

    Attributes:
        candidates: Every candidate proposed.
        timings: Each generator's wall time, s.
        asked: Candidates asked of each generator: its share of the mix plus what the generators before it
            could not make.
        unmade: Candidates of the mix no generator made (the last one's shortfall).
    """

    candidates: list[Candidate]
    timings: dict[str, float]
    asked: dict[str, int]
    unmade: int

    @property
    def per_source(self) -> dict[str, int]:
        """Candidates made by each generator, in the order they first appear."""
        return dict(Counter(c.source for c in self.candidates))


def generate_candidates(
    config: CampaignConfig, *, store: CampaignStore, round: int, generator_checkpoint: Path | None
) -> Generation:
    """Ask every generator of the mix for its share of candidates.

    A generator that `supports_conditions` gets its settings' `conditions`; one that `supports_fine_tune` starts
    from the campaign's latest fine-tuned checkpoint (`generator_checkpoint`) when there is one; one that
    `supports_prototype_search` gets the structure-type search (`substitution_candidates`) instead of one context.

    What a generator cannot make passes to the next one in the mix that is on: the structure-type search runs dry
    once its types are spent by labels and pool entries (a Ti-O campaign's round 4 proposed 4 of substitution's
    24), and the round would otherwise shrink to the other generators' shares. Random search, last in the default
    mix, makes any number, one composition after another, so the round still proposes the mix's total and covers
    more compositions. Generators that are off (0 in the mix) take nothing.
    """
    gen_cfg = config.generator
    found = discoveries(config, store)
    ranked, weights = round_compositions(config, store=store, round=round)
    formulas = [c.formula for c in ranked]
    offset = 0  # each generator that makes given compositions starts where the previous one stopped
    candidates: list[Candidate] = []
    timings: dict[str, float] = {}
    asked_of: dict[str, int] = {}
    shortfall = 0
    # Generators return whole batches: the bar moves by each generator's share (tqdm closes it if one fails).
    bar = Progress(total=sum(gen_cfg.mix.values()), what=f"round {round}: generate")
    for name, share in gen_cfg.mix.items():
        if share <= 0:
            continue
        n = asked_of[name] = share + shortfall
        cls = get_generator_class(name)
        settings = gen_cfg.settings_for(name)
        if cls.supports_fine_tune and generator_checkpoint is not None:
            settings = settings.model_copy(update={"checkpoint": str(generator_checkpoint)})
        settings = within_cell_limit(config, settings)
        started = time.time()
        if cls.supports_prototype_search:
            # The structure-type search needs the campaign's store and known index, not only a context.
            known = known_index(config, store=store, before_round=round)
            made, counts = substitution_candidates(
                config,
                store=store,
                round=round,
                name=name,
                n=n,
                discoveries=found,
                known=known,
                weights=weights,
            )
            log.info(
                "round %d: %s searched %d parents (%d prototypes spent) and %d decorations (%d used), dropped %d"
                " known children",
                round,
                name,
                counts["parents"],
                counts["spent_prototypes"],
                counts["decorations_offered"],
                counts["decorations"],
                counts["known_children"],
            )
        else:
            per = getattr(settings, "structures_per_composition", None)
            asked = formulas[offset:] + formulas[:offset] if per else []
            context = _context(config, cls, settings, found, asked)
            made = cls(settings=settings).generate(n=n, context=context, seed=config.seed * 1000 + round)
            if per and cls.hands_on_compositions:
                offset = (offset + compositions_used(asked, made, default=math.ceil(n / per))) % max(
                    len(formulas), 1
                )
        timings[name] = seconds(time.time() - started)
        candidates.extend(made)
        shortfall = max(0, n - len(made))
        log.info(
            "round %d: %s proposed %d of %d candidates in %.1f s%s",
            round,
            name,
            len(made),
            n,
            timings[name],
            f"; the other {shortfall} pass to the next generator" if shortfall else "",
        )
        bar.update(share)
    bar.close()
    if shortfall:
        log.info("round %d: %d candidates of the mix were made by no generator", round, shortfall)
    return Generation(candidates=candidates, timings=timings, asked=asked_of, unmade=shortfall)


def round_breadth(candidates: Sequence[Candidate]) -> dict[str, Any]:
    """Distinct formulas and prototypes (`generator.substitution.breadth`) of a round's candidates, in all and per
    generator."""
    every = breadth([c.structure for c in candidates])
    per = {
        source: breadth([c.structure for c in candidates if c.source == source])
        for source in sorted({c.source for c in candidates})
    }
    return {
        "distinct_formulas": every.formulas,
        "distinct_prototypes": every.prototypes,
        "formulas_per_source": {k: b.formulas for k, b in per.items()},
        "prototypes_per_source": {k: b.prototypes for k, b in per.items()},
    }
