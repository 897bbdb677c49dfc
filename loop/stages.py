"""The work of each stage of a round, as functions of (config, store) that return what the stage commits.

`loop.campaign` calls these and commits their results in one transaction per stage; nothing here marks a stage
done. Units: energies eV/atom, forces eV/Å, stress GPa, times s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from loop.config import CampaignConfig
from loop.errors import InputError
from loop.store import CampaignStore
from loop.structures import structure_hash

log = logging.getLogger("matloop")

RELAX_CHUNK = 4  # structures per screening task


# -- known crystals ---------------------------------------------------------------------------------------------------
def known_index(config: CampaignConfig, *, store: CampaignStore, before_round: int) -> Any:
    """The duplicate/novelty index of a round: every bundled crystal not withheld (origin "seed", lazily parsed)
    and every structure the campaign stored before `before_round` (its references count as "seed")."""
    from loop.funnel import KnownIndex

    index = KnownIndex.from_seed_data(matcher=config.generator.funnel.matcher, withhold=config.withholding)
    earlier = store.structure_rows(where="round < ? OR round IS NULL", params=(before_round,))
    structures = store.get_structures([r["hash"] for r in earlier])
    for r in earlier:
        index.add(
            id=r["hash"],
            structure=structures[r["hash"]],
            origin="seed" if r["source"] == "seed" else "campaign",
        )
    return index


def withheld_records(config: CampaignConfig) -> list[dict[str, Any]]:
    """The bundled crystals this campaign withholds (rediscovery mode), as JSON-ready records.

    Each record: material_id, formula (reduced), spacegroup, split, structure (pymatgen `Structure.as_dict()`).
    Ids listed in `withhold` are recorded wherever they lie; formulas and "all_compounds" only match inside the
    target systems by construction.
    """
    from generator.seeds import load_seeds, seed_table

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


def withheld_structures(store: CampaignStore) -> list[Any]:
    """What the campaign in `store` withheld, as `KnownStructure`s (empty when nothing was)."""
    from generator.base import KnownStructure

    return [
        KnownStructure(
            id=r["material_id"],
            structure=Structure.from_dict(r["structure"]),
            properties={k: v for k, v in r.items() if k != "structure"},
        )
        for r in store.get_meta("withheld") or []
    ]


# -- references (round 0) ---------------------------------------------------------------------------------------------
def reference_pool(config: CampaignConfig) -> list[Any]:
    """The known crystals round 0 may label: every elemental polymorph of the target elements up to
    `references.max_element_atoms` atoms (bundled crystals and ASE's reference states, the same crystal given
    twice kept once, bundled first), and every bundled compound of the target systems and their subsystems up to
    `references.max_atoms` atoms, minus the withheld ones.

    Raises:
        InputError: an element of the target systems has no elemental crystal at all, so the hull could not be
            built in the oracle's level of theory.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from generator.seeds import load_seeds, reference_states

    refs = config.references
    bundled = load_seeds(chemical_systems=config.chemical_systems, withhold=config.withholding)
    elements = [
        k
        for k in [
            *sorted(bundled, key=lambda k: (len(k.structure), k.id)),
            *reference_states(config.elements),
        ]
        if len(k.structure.composition) == 1 and len(k.structure) <= refs.max_element_atoms
    ]
    # Only the same crystal given twice is dropped (ASE's fcc Al and the bundled one). The funnel's matcher would
    # also merge small distortions such as cI16 Li into bcc Li, whose oracle energies differ (13 meV/atom in the
    # demo's GPAW), and both are cheap to label.
    same = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1.0, primitive_cell=False, scale=True)
    polymorphs: list[Any] = []
    for k in elements:
        if not any(
            p.structure.composition.reduced_formula == k.structure.composition.reduced_formula
            and same.fit(p.structure, k.structure)
            for p in polymorphs
        ):
            polymorphs.append(k)
    have = {k.structure.composition.elements[0].symbol for k in polymorphs}
    missing = sorted(set(config.elements) - have)
    if missing:
        raise InputError(
            f"no elemental crystal with <= {refs.max_element_atoms} atoms for {', '.join(missing)} in the bundled"
            " data or ASE's reference states; raise references.max_element_atoms or choose another system"
        )
    compounds = [
        k
        for k in sorted(bundled, key=lambda k: k.id)
        if len(k.structure.composition) > 1 and len(k.structure) <= refs.max_atoms
    ]
    return [*polymorphs, *compounds]


def select_references(config: CampaignConfig, *, executor: Any = None) -> list[tuple[Any, str]]:
    """Round 0: every elemental polymorph of the pool and the lowest-lying known compounds, one per composition,
    ranked by the pretrained emulator (only to choose what to label: the hull itself is built from oracle
    energies), at most `references.max_compounds`.

    Returns:
        (KnownStructure, role) pairs, role "element" or "compound".
    """
    from loop.hull import HullEntry, OracleHull
    from loop.tasks import predict_energies

    pool = reference_pool(config)
    picks: list[tuple[Any, str]] = [(k, "element") for k in pool if len(k.structure.composition) == 1]
    compounds = [k for k in pool if len(k.structure.composition) > 1]
    if not compounds or config.references.max_compounds == 0:
        return picks
    energies = predict_energies([k.structure for k in pool], settings=config.emulator, checkpoint=None)
    hull = OracleHull.from_entries(
        [
            HullEntry(entry_id=k.id, composition=k.structure.composition, energy_per_atom=e)
            for k, e in zip(pool, energies, strict=True)
        ]
    )
    by_id = dict(zip((k.id for k in pool), energies, strict=True))
    ev = hull.evaluate([k.structure.composition for k in compounds], [by_id[k.id] for k in compounds])
    order = sorted(
        range(len(compounds)),
        key=lambda i: (ev.e_above_hull[i], len(compounds[i].structure), compounds[i].id),
    )
    seen: set[str] = set()
    for i in order:
        k = compounds[i]
        formula = k.structure.composition.reduced_formula
        if formula in seen:  # one polymorph per composition: the hull needs the lowest only
            continue
        seen.add(formula)
        picks.append((k, "compound"))
        if len(seen) >= config.references.max_compounds:
            break
    return picks


# -- generate ---------------------------------------------------------------------------------------------------------
SUBSTITUTION_CHUNK = 16  # parents offered to the substitution generator at a time
PROTOTYPES_MIN = 64  # fewest prototype parents searched per round


def _discoveries(config: CampaignConfig, store: CampaignStore) -> list[Any]:
    """The campaign's own discoveries: hits (`loop.verdicts`) on the latest hull that were first queried in a
    round >= 1. References (round 0) are never discoveries."""
    from generator.base import KnownStructure

    rule = config.stability_rule
    first_query = store.first_query_rounds()
    rows = [r for r in store.stability() if rule.is_hit(r["e_hull"]) and first_query.get(r["hash"], 0) >= 1]
    structures = store.get_structures([r["hash"] for r in rows])
    return [
        KnownStructure(
            id=r["hash"], structure=structures[r["hash"]], properties={"e_above_hull": r["e_hull"]}
        )
        for r in rows
        if r["hash"] in structures
    ]


def _spent_prototypes(store: CampaignStore, round: int) -> set[str]:
    """Prototypes whose parent already gave substitution candidates in an earlier round (children known)."""
    rows = store.structure_rows(where="source = ? AND round < ?", params=("substitution", round))
    return {r["provenance"]["parent_prototype"] for r in rows if r["provenance"].get("parent_prototype")}


def substitution_candidates(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    round: int,
    n: int,
    discoveries: Sequence[Any],
    known: Any,
) -> tuple[list[Any], dict[str, int]]:
    """Up to `n` substitution candidates that search structure types.

    Parents: the campaign's discoveries, then one bundled crystal per prototype (`prototype_parents`: every
    bundled chemical system that substitutes into a target system, best Hautier score first), skipping the
    withheld crystals and the prototypes used in earlier rounds. Children matching a known structure (`known`,
    a `KnownIndex`, which also receives every child kept) or larger than the funnel's `max_atoms` are dropped
    here, so a parent whose children are all known yields nothing and the next prototype is tried.

    Returns:
        The candidates and counts: parents offered, prototypes skipped as spent, children dropped as known.
    """
    from generator.base import GenerationContext
    from generator.substitution import SubstitutionGenerator, prototype_parents

    settings = config.generator.substitution
    spent = _spent_prototypes(store, round)
    parents = [
        *discoveries,
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
    generator = SubstitutionGenerator(settings=settings)
    out: list[Any] = []
    counts = {"parents": len(parents), "spent_prototypes": len(spent), "known_children": 0}
    for start in range(0, len(parents), SUBSTITUTION_CHUNK):
        chunk = parents[start : start + SUBSTITUTION_CHUNK]
        context = GenerationContext(known=chunk, chemical_systems=config.chemical_systems)
        made = generator.generate(
            n=len(chunk) * settings.max_candidates_per_parent,
            context=context,
            seed=config.seed * 1000 + round + start,
        )
        max_atoms = config.generator.funnel.max_atoms
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
) -> tuple[list[Any], dict[str, float]]:
    """Ask every generator of the mix for its share of candidates.

    Returns:
        The candidates (generator.base.Candidate) and the wall time of each generator, s.
    """
    import generator  # noqa: F401  (registers the generators)
    from generator.base import GenerationContext, get_generator_class

    gen_cfg = config.generator
    discoveries = _discoveries(config, store)
    context = GenerationContext(
        known=discoveries,
        chemical_systems=config.chemical_systems,
        conditions=dict(gen_cfg.diffusion.conditions) if hasattr(gen_cfg.diffusion, "conditions") else {},
    )
    candidates: list[Any] = []
    timings: dict[str, float] = {}
    for name, n in gen_cfg.mix.items():
        if n <= 0:
            continue
        settings = getattr(gen_cfg, name)
        if name == "diffusion" and generator_checkpoint is not None:
            settings = settings.model_copy(update={"checkpoint": str(generator_checkpoint)})
        started = time.time()
        if name == "substitution":
            known = known_index(config, store=store, before_round=round)
            made, counts = substitution_candidates(
                config, store=store, round=round, n=n, discoveries=discoveries, known=known
            )
            log.info(
                "round %d: substitution searched %d parents (%d prototypes spent), dropped %d known children",
                round,
                counts["parents"],
                counts["spent_prototypes"],
                counts["known_children"],
            )
        else:
            made = get_generator_class(name)(settings=settings).generate(
                n=n, context=context, seed=config.seed * 1000 + round
            )
        timings[name] = round_(time.time() - started)
        candidates.extend(made)
        log.info("round %d: %s proposed %d candidates in %.1f s", round, name, len(made), timings[name])
    return candidates, timings


def round_(x: float, ndigits: int = 3) -> float:
    return float(f"{x:.{ndigits}f}")


# -- funnel -----------------------------------------------------------------------------------------------------------
def run_funnel(
    config: CampaignConfig, *, store: CampaignStore, round: int, candidates: Sequence[Sequence[str]]
) -> tuple[list[tuple[str, str, bool, str | None]], dict[str, Any]]:
    """Validity, charge balance, dedup (within the batch and against everything known), novelty, design filters.

    Args:
        candidates: (hash, source) of this round's generated structures, in generation order.

    Returns:
        Per-candidate (hash, source, passed, reason) and the funnel report (counts per filter and per source).
    """
    from generator.base import Candidate
    from loop.funnel import Funnel

    funnel_cfg = config.generator.funnel
    # Novelty is judged against every bundled crystal not withheld; the index parses a CIF only on a formula hit.
    known = known_index(config, store=store, before_round=round)
    structures = store.get_structures([h for h, _ in candidates])
    batch = [Candidate(structure=structures[h], source=src, parent=None) for h, src in candidates]
    kept, report = Funnel(funnel_cfg, known=known).run(batch, chemical_systems=config.chemical_systems)
    rejected = {rej.index: rej for rej in report.rejections}
    outcome = []
    per_source: dict[str, dict[str, int]] = {}
    for i, (h, src) in enumerate(candidates):
        rej = rejected.get(i)
        outcome.append((h, src, rej is None, None if rej is None else f"{rej.filter}: {rej.reason}"))
        counts = per_source.setdefault(src, {"in": 0, "passed": 0})
        counts["in"] += 1
        counts["passed"] += int(rej is None)
    summary = report.to_dict()
    summary.pop("fingerprints", None)
    summary.pop("rejections", None)
    return outcome, {
        "report": summary,
        "per_source": per_source,
        "n_in": len(candidates),
        "n_passed": len(kept),
    }


# -- screen -----------------------------------------------------------------------------------------------------------
def current_hull(config: CampaignConfig, store: CampaignStore) -> Any:
    """The convex hull of every successful oracle result with this campaign's oracle settings."""
    from loop.hull import HullEntry, OracleHull

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


def _quarantined_relaxations(chunk: list[dict[str, Any]], quarantine: Any) -> list[dict[str, Any]]:
    """Stand-in results for a screening chunk whose task kept killing workers: unrelaxed, unplaced (NaN energies,
    so acquisition never offers them), with the quarantine reason."""
    return [
        {
            "structure": d,
            "energy_per_atom": float("nan"),
            "energy_per_atom_std": float("nan"),
            "n_steps": 0,
            "converged": False,
            "collapsed": False,
            "quarantined": quarantine.reason,
        }
        for d in chunk
    ]


def screen(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    hashes: Sequence[str],
    checkpoint: Path | None,
    executor: Any,
) -> tuple[list[dict[str, Any]], dict[str, Structure], dict[str, Any]]:
    """Relax the funnel's survivors with the emulator ensemble and place them against the oracle hull.

    Returns:
        Prediction rows (for `CampaignStore.add_predictions`), relaxed structures by candidate hash, and a report.
    """
    from loop.tasks import relax_chunk

    structures = store.get_structures(list(hashes))
    ordered = [structures[h].as_dict() for h in hashes]
    # Fixed-size contiguous chunks, whatever the number of workers: the emulator evaluates a chunk's final energies
    # as one batch, so the chunking must not depend on how many workers happen to be up (reproducible resumes).
    chunks = [ordered[i : i + RELAX_CHUNK] for i in range(0, len(ordered), RELAX_CHUNK)]
    train = config.emulator_training
    started = time.time()
    args = (
        str(checkpoint) if checkpoint else None,
        config.emulator.model_dump(),
        train.relax_fmax,
        train.relax_steps,
    )
    if executor is None:
        results = [item for chunk in chunks for item in relax_chunk(chunk, *args)]
    else:
        results = executor.map_chunks(relax_chunk, chunks, *args, on_quarantine=_quarantined_relaxations)
    relax_time = time.time() - started

    hull = current_hull(config, store)
    relaxed = {h: Structure.from_dict(res["structure"]) for h, res in zip(hashes, results, strict=True)}
    ev = hull.evaluate(
        [relaxed[h].composition for h in hashes],
        [res["energy_per_atom"] for res in results],
        [res["energy_per_atom_std"] for res in results],
    )
    model = checkpoint.name if checkpoint else "pretrained"
    rows = []
    for i, h in enumerate(hashes):
        res = results[i]
        e_hull = ev.e_above_hull[i]
        reason = ev.reasons[i] if ev.reasons else None
        if res.get("collapsed"):
            e_hull, reason = float("nan"), "relaxation collapsed (atoms closer than 0.5 Å)"
        if res.get("quarantined"):
            e_hull, reason = float("nan"), res["quarantined"]
        rows.append(
            {
                "hash": h,
                "relaxed_hash": structure_hash(relaxed[h]),
                "model": model,
                "energy_per_atom": res["energy_per_atom"],
                "energy_per_atom_std": res["energy_per_atom_std"],
                "e_hull": None if not math.isfinite(e_hull) else float(e_hull),
                "e_hull_std": None if not math.isfinite(e_hull) else float(ev.e_above_hull_std[i]),
                "data": {"n_steps": res["n_steps"], "converged": res["converged"], "reason": reason},
            }
        )
    placed = [r["e_hull"] for r in rows if r["e_hull"] is not None]
    report = {
        "n_screened": len(rows),
        "n_placed": len(placed),
        "relax_time_s": round_(relax_time),
        "e_hull_min": min(placed) if placed else None,
        "e_hull_median": float(np.median(placed)) if placed else None,
        "n_below_threshold": sum(1 for e in placed if config.stability_rule.is_hit(e)),
        "std_median": float(np.median([r["energy_per_atom_std"] for r in rows])) if rows else None,
    }
    return rows, relaxed, report


# -- acquire ----------------------------------------------------------------------------------------------------------
def oracle_calls_left(config: CampaignConfig, store: CampaignStore) -> int | None:
    """Oracle calls the stop rule still allows (`stop.max_oracle_calls` minus every stored result, failed ones
    included); None without that rule."""
    limit = config.stop.max_oracle_calls
    if limit is None:
        return None
    return max(0, limit - len(store.oracle_results()))


def acquire(
    config: CampaignConfig, *, store: CampaignStore, round: int
) -> tuple[list[tuple[str, str, int, float | None]], dict[str, Any]]:
    """Choose the oracle queries of this round with the configured modAL strategy under the budget.

    Relaxed structures already labelled, or relaxed onto the same structure as another candidate, are offered once.
    The batch never exceeds the oracle calls `stop.max_oracle_calls` still allows.
    """
    from loop.acquisition import select_structures

    budget = config.acquisition.budget
    left = oracle_calls_left(config, store)
    if left is not None and left < budget:
        budget = left
        log.info("round %d: %d oracle calls left under stop.max_oracle_calls: batch capped", round, left)

    settings_hash = config.oracle.settings_hash()
    rows = [r for r in store.predictions(round) if r["relaxed_hash"]]
    seen: set[str] = set()
    pool = []
    for r in rows:
        h = r["relaxed_hash"]
        if h in seen or store.get_oracle_result(h, settings_hash) is not None:
            continue
        seen.add(h)
        pool.append(r)
    structures = store.get_structures([r["relaxed_hash"] for r in pool])
    labelled_hashes = [r.hash for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)]
    labelled = list(store.get_structures(labelled_hashes).values())
    if budget == 0:
        report = {
            "strategy": config.acquisition.strategy,
            "budget": 0,
            "budget_capped": True,
            "n_pool": len(pool),
            "n_skipped": 0,
            "n_queries": 0,
            "mean_e_hull_of_picks": None,
        }
        return [], report
    nan = float("nan")
    result = select_structures(
        structures=[structures[r["relaxed_hash"]] for r in pool],
        mean=[nan if r["e_hull"] is None else r["e_hull"] for r in pool],
        std=[nan if r["e_hull_std"] is None else r["e_hull_std"] for r in pool],
        config=config.acquisition.model_copy(update={"budget": budget}),
        rule=config.stability_rule,
        labelled=labelled,
    )
    picks = [
        (pool[int(i)]["relaxed_hash"], result.strategy, rank, float(u))
        for rank, (i, u) in enumerate(zip(result.indices, result.utilities, strict=True))
    ]
    report = {
        "strategy": result.strategy,
        "budget": budget,
        "budget_capped": budget < config.acquisition.budget,
        "n_pool": result.n_pool,
        "n_skipped": result.n_skipped,
        "n_queries": len(picks),
        "mean_e_hull_of_picks": float(np.mean([pool[int(i)]["e_hull"] for i in result.indices]))
        if len(picks)
        else None,
    }
    return picks, report


# -- update -----------------------------------------------------------------------------------------------------------
def emulator_metrics(pairs: Sequence[tuple[float, float, float]]) -> dict[str, float]:
    """Emulator vs oracle on new labels, before retraining: (predicted, std, oracle) energies per atom, eV/atom.

    Returns:
        MAE (eV/atom), Spearman(std, |error|), fractions of errors within 1σ and 2σ, and the count.
    """
    if not pairs:
        return {}
    pred, std, true = (np.asarray(x, dtype=float) for x in zip(*pairs, strict=True))
    err = np.abs(pred - true)
    out = {
        "emulator_mae": float(err.mean()),
        "emulator_within_1sigma": float(np.mean(err <= std)),
        "emulator_within_2sigma": float(np.mean(err <= 2 * std)),
        "emulator_n_new_labels": float(len(err)),
    }
    if len(err) >= 3 and np.ptp(std) > 0 and np.ptp(err) > 0:
        from scipy.stats import spearmanr

        out["emulator_spearman_std_err"] = float(spearmanr(std, err).statistic)
    return out


def update_hull(
    config: CampaignConfig, *, store: CampaignStore, round: int
) -> tuple[list[tuple[str, float, bool, bool]], dict[str, Any]]:
    """Rebuild the oracle hull with everything labelled so far and judge every labelled structure against it.

    Verdicts follow `loop.verdicts` (the campaign's `stability_rule`): (hash, E_hull eV/atom, stable, hit), where
    a hit is stable or near-stable. Rates count this round's queries; cumulative counts are the campaign's own
    discoveries (first queried in a round >= 1), never the references.
    """
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
        (h, float(e), rule.is_stable(e) and h not in duplicates, rule.is_hit(e) and h not in duplicates)
        for h, e in e_hull.items()
    ]
    queried = [q["hash"] for q in store.queries(round)]
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
        "e_hull_of_queries": {h: round_(e, 5) for h, e in this_round.items()},
    }
    if round > 0:
        first_query = store.first_query_rounds()
        discovered = [v for v in verdicts if v[3] and first_query.get(v[0], -1) >= 1]
        report["cumulative_stable"] = sum(1 for v in discovered if v[2])
        report["cumulative_hits"] = len(discovered)
        preds = {r["relaxed_hash"]: r for r in store.predictions(round)}
        pairs = [
            (preds[h]["energy_per_atom"], preds[h]["energy_per_atom_std"], results[h].energy_per_atom)
            for h in queried
            if h in preds and results.get(h) is not None and results[h].ok
        ]
        report.update(emulator_metrics(pairs))
    return verdicts, report


# -- retrain ----------------------------------------------------------------------------------------------------------
def training_labels(config: CampaignConfig, store: CampaignStore, *, frames: int = 0) -> list[dict[str, Any]]:
    """The emulator's training data: every successful oracle label of this campaign's oracle settings.

    Each label pairs the oracle's energy, forces and stress with the structure they belong to: the oracle's final
    (relaxed) structure, never the queried input. Labels whose final structure duplicates an earlier one's are
    kept (a second, independent sample of the same minimum costs nothing and weighs it as observed).

    Args:
        config: The campaign config (its oracle settings select the labels).
        store: The campaign store.
        frames: Also add up to this many intermediate relaxation frames per label (evenly spaced, the input
            geometry first, the final frame excluded as it is the label itself); 0 = final structures only.

    Returns:
        Dicts with `structure` (pymatgen), `energy` eV, `forces` eV/Å, `stress` GPa, `hash` (the labelled
        structure, so callers can select e.g. this round's labels) and `kind` ("final" or "frame"), in the
        store's canonical order (round, hash), frames after their label.
    """
    settings_hash = config.oracle.settings_hash()
    results = store.oracle_results(settings_hash=settings_hash, ok_only=True)
    structures = store.get_structures([r.structure_hash for r in results])
    data: list[dict[str, Any]] = []
    for r in results:
        data.append(
            {
                "structure": structures[r.structure_hash],
                "energy": r.energy,
                "forces": r.forces,
                "stress": r.stress,
                "hash": r.hash,
                "kind": "final",
            }
        )
        if frames <= 0:
            continue
        steps = store.oracle_frames(r.hash, settings_hash)[:-1]
        if not steps:
            continue
        picks = sorted({round(i) for i in np.linspace(0, len(steps) - 1, min(frames, len(steps)))})
        data.extend(
            {
                "structure": steps[i].structure,
                "energy": steps[i].energy,
                "forces": steps[i].forces,
                "stress": steps[i].stress,
                "hash": r.hash,
                "kind": "frame",
            }
            for i in picks
        )
    return data


def retrain(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    round: int,
    emulator_in: Path | None,
    generator_in: Path | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Fine-tune the emulator on all oracle data and the generator on the stable and near-stable discoveries.

    Returns:
        Metrics and the new checkpoint paths (`emulator_checkpoint`, `generator_checkpoint`).
    """
    from loop.tasks import fine_tune_emulator

    out_dir.mkdir(parents=True, exist_ok=True)
    data = training_labels(config, store)
    train = config.emulator_training
    report: dict[str, Any] = {"n_training_labels": len(data)}
    started = time.time()
    # Held-out validation needs no list of "new" labels: the previous checkpoint knows what it trained on.
    emu_path, emu_metrics = fine_tune_emulator(
        data,
        settings=config.emulator,
        checkpoint_in=emulator_in,
        out_dir=out_dir / "emulator",
        epochs=train.fine_tune_epochs,
        max_minutes=train.fine_tune_max_minutes,
        round=round,
    )
    report["emulator_checkpoint"] = str(emu_path)
    report["emulator_fine_tune_s"] = round_(time.time() - started)
    report["emulator_deployed"] = emu_metrics.pop("deployed")
    report["emulator_reason"] = emu_metrics.pop("reason")
    report.update({f"emulator_{k}": v for k, v in emu_metrics.items() if isinstance(v, int | float)})

    report.update(
        retrain_generator(config, store=store, round=round, generator_in=generator_in, out_dir=out_dir)
    )
    return report


def retrain_generator(
    config: CampaignConfig, *, store: CampaignStore, round: int, generator_in: Path | None, out_dir: Path
) -> dict[str, Any]:
    """Fine-tune the diffusion generator on the campaign's discoveries (never the references), mixed with original
    training crystals minus the withheld ones. Nothing happens before round 1 or without discoveries.

    Returns:
        Metrics and `generator_checkpoint` when a new checkpoint was written.
    """
    from loop.tasks import fine_tune_generator

    gen_cfg = config.generator
    discoveries = _discoveries(config, store) if round > 0 else []
    if not (gen_cfg.mix.get("diffusion", 0) > 0 and gen_cfg.fine_tune_weight > 0 and discoveries):
        return {"generator_n_discoveries": len(discoveries)}
    started = time.time()
    gen_path, gen_metrics = fine_tune_generator(
        [k.structure for k in discoveries],
        settings=gen_cfg.diffusion,
        checkpoint_in=generator_in,
        out_path=out_dir / "generator.pt",
        weight=gen_cfg.fine_tune_weight,
        steps=gen_cfg.fine_tune_steps,
        max_minutes=gen_cfg.fine_tune_max_minutes,
        seed=config.seed + round,
        exclude_ids=withheld_training_ids(config),
    )
    report: dict[str, Any] = {
        "generator_checkpoint": str(gen_path),
        "generator_fine_tune_s": round_(time.time() - started),
        "generator_n_discoveries": len(discoveries),
    }
    report.update({f"generator_{k}": v for k, v in gen_metrics.items() if isinstance(v, int | float)})
    return report


def withheld_training_ids(config: CampaignConfig) -> list[str]:
    """Material ids of the generator's original training crystals (mp_20 train) that the campaign withholds."""
    from generator.seeds import seed_table

    if not config.withholding:
        return []
    table = seed_table(splits=["mp_20/train"])
    return sorted(table["material_id"][config.withholding.mask(table)])


# -- track ------------------------------------------------------------------------------------------------------------
def track_round(config: CampaignConfig, *, store: CampaignStore, round: int, workdir: Path) -> dict[str, Any]:
    """Log the round to MLflow (see `loop.campaign_tracking`); a tracking fault never stops discovery."""
    from loop.campaign_tracking import track_round as log_round

    return log_round(config, store=store, round=round, workdir=workdir)
