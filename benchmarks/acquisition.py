"""Acquisition benchmark: replay campaigns on a labelled pool and measure discoveries per oracle call.

    OMP_NUM_THREADS=1 python -m benchmarks.acquisition --pool benchmarks/pools/li-al_mlff.json.gz \
        --rounds 5 --budget 8 --seeds 5 --out /tmp/acq_li-al.json

The oracle is a lookup into the pool's labels (`benchmarks.build_pool`), so every replay uses real oracle data
computed once. The replay engine is `benchmarks.lib.replay`; this script runs it over strategies and seeds. A replay starts like a campaign after round 0: the references are labelled, the emulator has been
retrained on them. Each round it

1. predicts every unlabelled candidate at its emulator-relaxed geometry (ensemble mean and spread, eV/atom);
2. places the predictions on the hull of everything labelled so far (`loop.science.hull.OracleHull`), giving E_hull ± σ;
3. picks `--budget` queries with the project's acquisition call (`loop.science.acquisition.select_structures`, the
   strategy's modAL query with the campaign's batch-diversity rules; the p_stable threshold is the hit threshold
   of `loop.science.verdicts.StabilityRule`);
4. looks the picks up in the pool: hits are the pool's ground-truth verdicts (E_hull against the hull of all
   references and candidates); the emulator's MAE and Spearman(σ, |error|) on the picks, before retraining, come
   from `loop.science.emulator_errors.emulator_metrics`;
5. retrains the emulator on all labels so far, in one of two modes (reported with every table):

   * ``retrain``: exactly the campaign's stage, `loop.work.retraining.retrain`, on a campaign store holding the replay's
     labels (reference refit, σ calibration on the round's new labels, fine-tuning of the ensemble), then
     `loop.runtime.tasks.load_emulator(...).predict` on the candidates. Tens of seconds per round on one core, so it is
     run with few seeds and strategies.
   * ``refit`` (cheap): the reference-energy refit of the emulator alone (`emulator.training.refit_reference_shift`
     on all labels, from the pretrained ensemble each round, on the emulator's design `emulator.training.refit_design`:
     element fractions and, unless `--per-element-refit`, the convention features), applied to the pretrained per-member energies stored
     in the pool, with the campaign's σ calibration (bias and spread scale fitted on the refit's leave-one-out
     pairs, as the retrain stage does while no member has been trained). No weights change, so hundreds of
     replays take minutes.

Each seed offers a random `--subset` fraction of the pool's candidates (a different "generation batch"), and seeds
the random baseline. Reported per strategy: hits per oracle call, DAF = hit rate / prevalence (its ceiling is
1/prevalence), the ratio of mean DAF to random's and greedy's with the spread over seeds, and per round the
emulator MAE and Spearman(σ, |error|) on the queries. Units: eV/atom.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lib.pools import load_committee, load_pool
from benchmarks.lib.replay import (
    STRATEGIES,
    CampaignRetrainEmulator,
    RefitEmulator,
    campaign_references,
    distinct_candidates,
    replay,
)

log = logging.getLogger("acquisition")


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(runs: dict[str, list[dict[str, Any]]], *, rounds: int) -> dict[str, Any]:
    """Per strategy: hit rate, DAF, ratios to random and greedy (spread over seeds), per-round emulator metrics."""
    out: dict[str, Any] = {}
    daf = {s: [r["hits"] / r["calls"] / r["prevalence"] for r in rs] for s, rs in runs.items()}
    for s, rs in runs.items():
        rate = _mean_sd([r["hits"] / r["calls"] for r in rs])
        d = _mean_sd(daf[s])
        row: dict[str, Any] = {
            "seeds": len(rs),
            "hits": _mean_sd([r["hits"] for r in rs]),
            "calls": _mean_sd([r["calls"] for r in rs]),
            "hits_per_call": rate,
            "daf": d,
            "ceiling": _mean_sd([1 / r["prevalence"] for r in rs]),
            # All hits found: with more calls than offered hits, even a perfect strategy stays below 1/prevalence.
            "ceiling_at_budget": _mean_sd(
                [min(1 / r["prevalence"], r["n_offered"] / r["calls"]) for r in rs if "n_offered" in r]
            ),
        }
        for base in ("random", "greedy"):
            if base in daf and base != s:
                ref = _mean_sd(daf[base])[0]
                row[f"vs_{base}"] = (
                    (d[0] / ref, _mean_sd([x / ref for x in daf[s]])[1]) if ref > 0 else (math.nan,) * 2
                )
        row["per_round"] = [
            {
                "round": k + 1,
                "hits": _mean_sd([r["rounds"][k]["hits"] for r in rs if len(r["rounds"]) > k]),
                "mae": _mean_sd([r["rounds"][k]["mae"] for r in rs if len(r["rounds"]) > k]),
                "spearman": _mean_sd([r["rounds"][k]["spearman"] for r in rs if len(r["rounds"]) > k]),
            }
            for k in range(rounds)
        ]
        out[s] = row
    return out


def markdown(result: dict[str, Any]) -> str:
    """The benchmark table of one pool."""
    meta = result["meta"]
    first = next(iter(result["strategies"].values()), {})
    at_budget = first.get("ceiling_at_budget", (math.nan,))[0]
    # Over the seeds' offered subsets, as the DAFs are (the pool's own is 1 / meta["prevalence"]).
    ceiling = first.get("ceiling", (1 / meta["prevalence"],))[0]
    lines = [
        f"**{meta['system']}** ({meta['oracle']}, {meta['level_of_theory']}): {meta['n_candidates']} candidates, "
        f"{meta['n_hits']} hits (E_hull ≤ {meta['near_stable']:g} eV/atom), prevalence {meta['prevalence']:.3f} (DAF ceiling {ceiling:.1f}"
        + (f", {at_budget:.1f} at this budget" if math.isfinite(at_budget) else "")
        + "); "
        f"{meta['rounds']} rounds × {meta['budget']} queries, {meta['seeds']} seeds × {meta['subset']:.0%} of the pool, "
        f"retraining mode `{meta['mode']}`, screening `{meta.get('screening', 'as_built')}`, default strategy `{meta['default_strategy']}`"
        + (f", committee with {', '.join(meta['committee'])}" if meta.get("committee") else "")
        + (
            f", distinct oracle minima only ({meta['known_crystals_not_counted']} known crystals not counted)"
            if meta.get("distinct")
            else ""
        )
        + ".",
        "",
        "| strategy | hits / call | DAF (mean ± sd) | × random | × greedy | MAE per round (eV/atom) | Spearman(σ, err) per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, row in result["strategies"].items():

        def pm(pair: Sequence[float], fmt: str = ".2f") -> str:
            return "–" if not math.isfinite(pair[0]) else f"{pair[0]:{fmt}} ± {pair[1]:{fmt}}"

        def ratio(strategy: str, base: str, row: dict[str, Any] = row) -> str:
            if f"vs_{base}" in row:
                return pm(row[f"vs_{base}"])
            return "1" if strategy == base else "–"  # the baseline itself, or a baseline not run

        maes = " / ".join(
            "–" if not math.isfinite(r["mae"][0]) else f"{r['mae'][0]:.3f}" for r in row["per_round"]
        )
        rhos = " / ".join(
            "–" if not math.isfinite(r["spearman"][0]) else f"{r['spearman'][0]:+.2f}"
            for r in row["per_round"]
        )
        lines.append(
            f"| {s} | {pm(row['hits_per_call'], '.3f')} | {pm(row['daf'])} | "
            f"{ratio(s, 'random')} | {ratio(s, 'greedy')} | "
            f"{maes} | {rhos} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loop.science.acquisition import AcquisitionConfig

    pool = load_pool(Path(args.pool), near_stable=args.near_stable, screening=args.screening)
    committee = load_committee(pool, [Path(p) for p in args.committee])
    cands = pool.cands
    n_known = 0
    crystals = None
    if args.distinct:
        cands, known, crystals = distinct_candidates(pool)
        n_known = int((known & pool.hit).sum())
        pool.hit = pool.hit & ~known
    references = (
        campaign_references(pool, max_compounds=args.max_compounds) if args.campaign_references else None
    )
    n_offer = max(1, round(args.subset * len(cands)))
    strategies = args.strategies.split(",")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    started = time.time()
    shared = (
        RefitEmulator(pool, per_element_only=args.per_element_refit, calibration_rule=args.calibration_rule)
        if args.mode == "refit"
        else None
    )
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        offered = np.sort(rng.choice(cands, size=n_offer, replace=False))
        prevalence = float(pool.hit[offered].mean())
        for s in strategies:
            emulator = shared or CampaignRetrainEmulator(
                pool, epochs=args.epochs, max_minutes=args.max_minutes, seed=seed
            )
            try:
                t0 = time.time()
                r = replay(
                    pool,
                    strategy=s,
                    offered=offered,
                    rounds=args.rounds,
                    budget=args.budget,
                    seed=seed,
                    emulator=emulator,
                    committee=committee,
                    references=references,
                    crystals=crystals,
                )
            finally:
                if emulator is not shared:
                    emulator.close()
            r.update(
                seed=seed,
                prevalence=prevalence,
                n_offered=len(offered),
                wall_time_s=round(time.time() - t0, 1),
            )
            runs[s].append(r)
            log.info(
                "seed %d %-8s hits %d / %d calls (prevalence %.3f), %.0f s",
                seed,
                s,
                r["hits"],
                r["calls"],
                prevalence,
                r["wall_time_s"],
            )
    n_hits = int(pool.hit[cands].sum())
    result = {
        "meta": {
            "pool": Path(args.pool).name,
            "system": pool.system,
            "oracle": pool.oracle["kind"],
            "level_of_theory": pool.oracle.get("level_of_theory"),
            "n_candidates": len(cands),
            "n_hits": n_hits,
            "prevalence": n_hits / len(cands),
            "near_stable": pool.near_stable,
            "rounds": args.rounds,
            "budget": args.budget,
            "seeds": args.seeds,
            "subset": args.subset,
            "mode": args.mode,
            "screening": args.screening,
            "distinct": bool(args.distinct),
            "round_0_references": "all of the pool's"
            if references is None
            else f"{len(references)}, as a campaign labels them",
            "known_crystals_not_counted": n_known,
            "committee": sorted(committee),
            "per_element_refit": bool(args.per_element_refit),
            "calibration_rule": args.calibration_rule or "the emulator's",
            "committee_pools": [Path(p).name for p in args.committee],
            "default_strategy": AcquisitionConfig().strategy,
            "wall_time_s": round(time.time() - started, 1),
        },
        "strategies": summarize(runs, rounds=args.rounds),
        "runs": runs,
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="pool file from benchmarks.build_pool")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", type=int, default=8, help="oracle queries per round")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--subset", type=float, default=0.8, help="fraction of the pool offered per seed")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--mode", choices=("refit", "retrain"), default="refit")
    p.add_argument("--epochs", type=int, default=3, help="retrain mode: fine-tuning epochs per round")
    p.add_argument("--max-minutes", type=float, default=2.0, help="retrain mode: bound of one fine-tune")
    p.add_argument(
        "--near-stable", type=float, help="hit threshold above the hull, eV/atom (default: the pool's, 0.05)"
    )
    p.add_argument(
        "--committee",
        action="append",
        default=[],
        metavar="POOL",
        help="a pool file of the same candidates labelled by another model family: replay with a committee",
    )
    p.add_argument(
        "--per-element-refit",
        action="store_true",
        help="refit mode: per-element shifts only (without the emulator's convention features)",
    )
    p.add_argument(
        "--calibration-rule",
        choices=("quantile", "floor"),
        help="refit mode: calibrate σ by this rule instead of the emulator's setting (emulator.calibration)",
    )
    p.add_argument(
        "--screening",
        choices=("as_built", "rescreened"),
        default="as_built",
        help="candidates at the build's screening geometry, or where benchmarks.rescreen_pool continued it to convergence",
    )
    p.add_argument(
        "--distinct",
        action="store_true",
        help="one candidate per emulator-relaxed crystal (what a campaign offers), each oracle crystal counted as a "
        "hit once, known crystals not counted (distinct_candidates)",
    )
    p.add_argument(
        "--campaign-references",
        action="store_true",
        help="round 0 labels only what a campaign labels (the elements and --max-compounds compounds) instead of "
        "every reference of the pool",
    )
    p.add_argument(
        "--max-compounds",
        type=int,
        default=4,
        help="compounds labelled in round 0 (references.max_compounds)",
    )
    p.add_argument("--out", help="write the full result (JSON) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(key, "1")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if not Path(args.pool).is_file():
        print(
            f"acquisition: {args.pool}: no such pool file; build one with python -m benchmarks.build_pool",
            file=sys.stderr,
        )
        return 2
    if args.calibration_rule and args.mode != "refit":
        print(
            "acquisition: --calibration-rule applies to --mode refit (retrain uses the config's)",
            file=sys.stderr,
        )
        return 2
    missing = [p for p in args.committee if not Path(p).is_file()]
    if missing:
        print(f"acquisition: --committee {missing[0]}: no such pool file", file=sys.stderr)
        return 2
    unknown = sorted(set(args.strategies.split(",")) - set(STRATEGIES))
    if unknown:
        print(
            f"acquisition: unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}", file=sys.stderr
        )
        return 2
    try:
        result = run(args)
    except ValueError as err:
        print(f"acquisition: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
