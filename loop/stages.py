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

ON_HULL_TOL = 1e-6  # eV/atom: on the hull within float noise
RELAX_CHUNK = 4  # structures per screening task


# -- references (round 0) ---------------------------------------------------------------------------------------------
def reference_pool(config: CampaignConfig) -> list[Any]:
    """Known crystals of the campaign's chemical systems (and their subsystems) from the bundled seed data.

    Raises:
        InputError: an element of the target systems has no elemental crystal in the seed data, so the hull
            could not be built in the oracle's level of theory.
    """
    from generator.seeds import load_seeds

    pool = [
        k
        for k in load_seeds(chemical_systems=config.chemical_systems)
        if len(k.structure) <= config.references.max_atoms
    ]
    have = {k.structure.composition.elements[0].symbol for k in pool if len(k.structure.composition) == 1}
    missing = sorted(set(config.elements) - have)
    if missing:
        raise InputError(
            f"no elemental reference structure with <= {config.references.max_atoms} atoms for {', '.join(missing)}"
            " in the seed data; raise references.max_atoms or choose another chemical system"
        )
    return pool


def select_references(config: CampaignConfig, *, executor: Any = None) -> list[tuple[Any, str]]:
    """Round 0: one ground-state polymorph per element and the lowest-lying known compounds, ranked by the
    pretrained emulator (only to choose what to label: the hull itself is built from oracle energies).

    Returns:
        (KnownStructure, role) pairs, role "element" or "compound".
    """
    from loop.hull import HullEntry, OracleHull
    from loop.tasks import predict_energies

    pool = reference_pool(config)
    energies = predict_energies([k.structure for k in pool], settings=config.emulator, checkpoint=None)
    by_element: dict[str, tuple[float, Any]] = {}
    for k, e in zip(pool, energies, strict=True):
        comp = k.structure.composition
        if len(comp) == 1:
            el = comp.elements[0].symbol
            if el not in by_element or e < by_element[el][0]:
                by_element[el] = (e, k)
    picks: list[tuple[Any, str]] = [(by_element[el][1], "element") for el in sorted(by_element)]
    compounds = [(k, e) for k, e in zip(pool, energies, strict=True) if len(k.structure.composition) > 1]
    if compounds and config.references.max_compounds > 0:
        hull = OracleHull.from_entries(
            [
                HullEntry(entry_id=k.id, composition=k.structure.composition, energy_per_atom=e)
                for k, e in zip(pool, energies, strict=True)
            ]
        )
        ev = hull.evaluate([k.structure.composition for k, _ in compounds], [e for _, e in compounds])
        order = sorted(
            range(len(compounds)),
            key=lambda i: (ev.e_above_hull[i], len(compounds[i][0].structure), compounds[i][0].id),
        )
        seen: set[str] = set()
        for i in order:
            k = compounds[i][0]
            formula = k.structure.composition.reduced_formula
            if formula in seen:  # one polymorph per composition: the hull needs the lowest only
                continue
            seen.add(formula)
            picks.append((k, "compound"))
            if len(seen) >= config.references.max_compounds:
                break
    return picks


# -- generate ---------------------------------------------------------------------------------------------------------
def _discoveries(store: CampaignStore) -> list[Any]:
    from generator.base import KnownStructure

    rows = [r for r in store.stability() if r["near_stable"]]
    structures = store.get_structures([r["hash"] for r in rows])
    return [
        KnownStructure(
            id=r["hash"], structure=structures[r["hash"]], properties={"e_above_hull": r["e_hull"]}
        )
        for r in rows
        if r["hash"] in structures
    ]


def generate_candidates(
    config: CampaignConfig, *, store: CampaignStore, round: int, generator_checkpoint: Path | None
) -> tuple[list[Any], dict[str, float]]:
    """Ask every generator of the mix for its share of candidates.

    Returns:
        The candidates (generator.base.Candidate) and the wall time of each generator, s.
    """
    import generator  # noqa: F401  (registers the generators)
    from generator.base import GenerationContext, get_generator_class
    from generator.seeds import load_seeds

    gen_cfg = config.generator
    parents = load_seeds(
        chemical_systems=config.chemical_systems, max_foreign_elements=1, limit=400, seed=round
    )
    context = GenerationContext(
        known=[*parents, *_discoveries(store)],
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
    from loop.funnel import Funnel, KnownIndex

    funnel_cfg = config.generator.funnel
    # Novelty is judged against every bundled seed crystal; the index parses a CIF only on a formula hit.
    known = KnownIndex.from_seed_data(matcher=funnel_cfg.matcher)
    earlier = [r for r in store.structure_rows(where="round < ? OR round IS NULL", params=(round,))]
    earlier_structures = store.get_structures([r["hash"] for r in earlier])
    for r in earlier:
        known.add(
            id=r["hash"],
            structure=earlier_structures[r["hash"]],
            origin="seed" if r["source"] == "seed" else "campaign",
        )
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
        results = executor.map_chunks(relax_chunk, chunks, *args)
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
        "n_below_threshold": sum(1 for e in placed if e <= config.acquisition.stability_threshold),
        "std_median": float(np.median([r["energy_per_atom_std"] for r in rows])) if rows else None,
    }
    return rows, relaxed, report


# -- acquire ----------------------------------------------------------------------------------------------------------
def acquire(
    config: CampaignConfig, *, store: CampaignStore, round: int
) -> tuple[list[tuple[str, str, int, float | None]], dict[str, Any]]:
    """Choose the oracle queries of this round with the configured modAL strategy under the budget.

    Relaxed structures already labelled, or relaxed onto the same structure as another candidate, are offered once.
    """
    from loop.acquisition import select_structures

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
    nan = float("nan")
    result = select_structures(
        structures=[structures[r["relaxed_hash"]] for r in pool],
        mean=[nan if r["e_hull"] is None else r["e_hull"] for r in pool],
        std=[nan if r["e_hull_std"] is None else r["e_hull_std"] for r in pool],
        config=config.acquisition,
        labelled=labelled,
    )
    picks = [
        (pool[int(i)]["relaxed_hash"], result.strategy, rank, float(u))
        for rank, (i, u) in enumerate(zip(result.indices, result.utilities, strict=True))
    ]
    report = {
        "strategy": result.strategy,
        "budget": config.acquisition.budget,
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
    """Rebuild the oracle hull with everything labelled so far and judge every labelled structure against it."""
    hull = current_hull(config, store)
    e_hull = hull.entry_e_above_hull()
    verdicts = [
        (h, float(e), bool(e <= ON_HULL_TOL), bool(e <= config.near_stable + ON_HULL_TOL))
        for h, e in e_hull.items()
    ]
    queried = [q["hash"] for q in store.queries(round)]
    settings_hash = config.oracle.settings_hash()
    results = {h: store.get_oracle_result(h, settings_hash) for h in queried}
    this_round = {h: e_hull[h] for h in queried if h in e_hull}
    n_stable = sum(1 for e in this_round.values() if e <= ON_HULL_TOL)
    n_near = sum(1 for e in this_round.values() if ON_HULL_TOL < e <= config.near_stable + ON_HULL_TOL)
    report: dict[str, Any] = {
        "hull_entries": len(e_hull),
        "hull_stable_entries": len(hull.stable_ids()),
        "n_labelled_round": len(this_round),
        "n_failed_round": sum(1 for r in results.values() if r is not None and not r.ok),
        "n_stable_new": n_stable if round > 0 else 0,
        "n_near_stable_new": n_near if round > 0 else 0,
        "hit_rate": (n_stable / len(queried)) if (round > 0 and queried) else None,
        "near_stable_rate": ((n_stable + n_near) / len(queried)) if (round > 0 and queried) else None,
        "e_hull_of_queries": {h: round_(e, 5) for h, e in this_round.items()},
    }
    if round > 0:
        first_query = store.first_query_rounds()
        discovered = [v for v in verdicts if v[3] and first_query.get(v[0], -1) >= 1]
        report["cumulative_stable"] = sum(1 for v in discovered if v[2])
        report["cumulative_near_stable"] = len(discovered)
        preds = {r["relaxed_hash"]: r for r in store.predictions(round)}
        pairs = [
            (preds[h]["energy_per_atom"], preds[h]["energy_per_atom_std"], results[h].energy_per_atom)
            for h in queried
            if h in preds and results.get(h) is not None and results[h].ok
        ]
        report.update(emulator_metrics(pairs))
    return verdicts, report


# -- retrain ----------------------------------------------------------------------------------------------------------
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
    from loop.tasks import fine_tune_emulator, fine_tune_generator

    out_dir.mkdir(parents=True, exist_ok=True)
    results = store.oracle_results(settings_hash=config.oracle.settings_hash(), ok_only=True)
    structures = store.get_structures([r.hash for r in results])
    data = [
        {"structure": structures[r.hash], "energy": r.energy, "forces": r.forces, "stress": r.stress}
        for r in results
    ]
    train = config.emulator_training
    report: dict[str, Any] = {"n_training_labels": len(data)}
    new = {q["hash"] for q in store.queries(round)} if round > 0 else set()
    started = time.time()
    emu_path, emu_metrics = fine_tune_emulator(
        data,
        settings=config.emulator,
        checkpoint_in=emulator_in,
        out_dir=out_dir / "emulator",
        epochs=train.fine_tune_epochs,
        max_minutes=train.fine_tune_max_minutes,
        seed=config.seed + round,
        calibrate_on=[d for d, r in zip(data, results, strict=True) if r.hash in new],
    )
    report["emulator_checkpoint"] = str(emu_path)
    report["emulator_fine_tune_s"] = round_(time.time() - started)
    report.update({f"emulator_{k}": v for k, v in emu_metrics.items() if isinstance(v, int | float)})

    gen_cfg = config.generator
    discoveries = _discoveries(store) if round > 0 else []
    if gen_cfg.mix.get("diffusion", 0) > 0 and gen_cfg.fine_tune_weight > 0 and discoveries:
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
        )
        report["generator_checkpoint"] = str(gen_path)
        report["generator_fine_tune_s"] = round_(time.time() - started)
        report["generator_n_discoveries"] = len(discoveries)
        report.update({f"generator_{k}": v for k, v in gen_metrics.items() if isinstance(v, int | float)})
    return report


# -- track ------------------------------------------------------------------------------------------------------------
def track_round(config: CampaignConfig, *, store: CampaignStore, round: int, workdir: Path) -> dict[str, Any]:
    """Log the round to MLflow (see `loop.campaign_tracking`); a tracking fault never stops discovery."""
    from loop.campaign_tracking import track_round as log_round

    return log_round(config, store=store, round=round, workdir=workdir)
