"""Whole campaigns against uniform random ones: what a user runs, on chemistries written down before any tuning.

    OMP_NUM_THREADS=1 python -m benchmarks.campaigns --workdir runs/campaigns --chemistries K-O,Ti-Al \
        --arms default,random,one_shot --seeds 0,1,2 --out campaigns.json

Each campaign is `configs/default.yaml` with the changes BENCHMARKS.md lists ("Whole campaigns against random
ones"): the chemistry, every known compound withheld, the `mlff` oracle, no committee, `--rounds` rounds of
`--budget` calls. It runs as a user runs it (`python -m loop.cli run CONFIG --workdir DIR --rounds N`, a fresh
process per campaign; a stopped benchmark resumes where it was). Arms:

* `default`: that configuration unchanged;
* `random`: `acquisition.strategy: random` (seeded by the campaign's seed) with no similarity penalty and no
  per-formula cap: the same generators, funnel, screening and budget;
* `one_shot`: one round with a 4x generator mix, screened by the pretrained emulator, all `rounds x budget` calls
  in one batch by the default strategy;
* `strategy=NAME`: the default configuration with `acquisition.strategy: NAME` (for comparing strategies);
* `decorations=N`: the default configuration with `generator.extra_decorations: N` and `screening.per_formula:
  2` (`DECORATION_ARM_PER_FORMULA`): hundreds of decorations a round, the best two of each formula relaxed.

What counts (`benchmarks.rediscovery`): the truth is every withheld crystal that fits the funnel and every round-0
reference, labelled by the same oracle in a separate store; a withheld phase is a target when it is stable on the
joint hull of those labels and every run's (`joint_targets`: one a campaign beat with another, lower polymorph, by
more than `BEATEN_BY`, is not). A target is rediscovered by the first call whose structure or oracle-relaxed
structure matches it
(`StructureMatcher`, as the campaign's science report marks it). Reported per run: targets found after k calls
(k = 1 .. all), hits on the joint hull of every run of the chemistry and the truth; per arm: the mean over seeds
with a bootstrap 95 % interval, and the ratio of the default's mean to random's with its bootstrap interval.

Units: eV/atom; times s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.lib.runs import run_campaign
from benchmarks.rediscovery import found, joint_hits, truth

log = logging.getLogger("campaigns")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
# Written into BENCHMARKS.md before the first measurement; not to be changed after it.
CHEMISTRIES = {"K-O": "ionic binary", "Ti-O": "oxide", "Ti-Al": "intermetallic", "Na-Al-O": "ternary"}
BOOTSTRAP = 2000
# The `decorations=N` arm's cut: round 1's first 400 decorations of Ti-O, Na-Al-O and K-O put 3 of 6 withheld phases
# first of their formula by the 5-step cheap tier (`benchmarks.decoration_screen`); the best two of each formula cost
# 71-230 relaxations a round for 400 decorations.
DECORATION_ARM_PER_FORMULA = 2
RATIO = "_over_random"  # summary key suffix: an arm's rediscoveries over its random counterpart's


def arm_slug(arm: str) -> str:
    """The arm as a folder and campaign name part: `random+decorations=200` -> `random_decorations-200`."""
    return arm.replace("+", "_").replace("=", "-")


def is_random(arm: str) -> bool:
    """Whether `arm` picks uniformly at random: `random` is one of its parts (`decorations=200+random` too)."""
    return "random" in arm.split("+")


def random_counterpart(arm: str) -> str:
    """The uniform-random arm with the same generators as `arm`: `random` for `default`, else `random+ARM`."""
    return "random" if arm == "default" else f"random+{arm}"


def campaign_config(*, system: str, arm: str, seed: int, rounds: int, budget: int) -> dict[str, Any]:
    """The campaign configuration of one run: the default config with the benchmark's changes and the arm's.

    An arm may join several with `+` (`random+decorations=200`: random picks among the candidates the
    `decorations=200` generators and screening offer); each part changes the configuration in turn.
    """
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data.update(
        name=f"bench-{system}-{arm_slug(arm)}-s{seed}",
        seed=seed,
        chemical_systems=[system],
        withhold=["all_compounds"],
        oracle={"kind": "mlff"},
        committee=[],
    )
    data["stop"] = {**data.get("stop", {}), "max_rounds": rounds}
    acquisition = {**data.get("acquisition", {}), "budget": budget}
    for part in arm.split("+"):
        if part == "random":
            acquisition.update(
                strategy="random",
                seed=seed,
                diversity={"max_per_formula": None, "similarity_penalty": 0.0},
            )
        elif part == "one_shot":
            data["stop"]["max_rounds"] = 1
            acquisition["budget"] = rounds * budget
            data["generator"] = {
                **data["generator"],
                "mix": {name: 4 * n for name, n in data["generator"]["mix"].items()},
            }
        elif part.startswith("strategy="):
            acquisition["strategy"] = part.split("=", 1)[1]
        elif part.startswith("decorations="):
            count = part.split("=", 1)[1]
            if not count.isdigit():
                raise SystemExit(
                    f"campaigns: arm {arm!r} needs a number of decorations, e.g. decorations=200"
                )
            data["generator"] = {**data["generator"], "extra_decorations": int(count)}
            data["screening"] = {**data.get("screening", {}), "per_formula": DECORATION_ARM_PER_FORMULA}
        elif part != "default":
            raise SystemExit(
                f"campaigns: unknown arm {arm!r}; use default, random, one_shot, strategy=NAME or decorations=N,"
                " joined with + (random+decorations=200)"
            )
    data["acquisition"] = acquisition
    return data


def cpu_seconds(workdir: Path) -> float:
    """Wall time of a finished campaign's stages, s (its rounds' start to finish, from the store)."""
    from loop.store import CampaignStore

    store = CampaignStore.in_workdir(workdir)
    try:
        return float(sum((r.finished_at or r.started_at) - r.started_at for r in store.rounds()))
    finally:
        store.close()


BEATEN_BY = 0.001
"""eV/atom: how far below a withheld phase another structure must lie on the joint hull to beat it. The same crystal
relaxed by the oracle from two starting points differs by about 0.1 meV/atom (Na-Al-O: P-62m Na2O2 labelled by a
campaign and by the truth store), so a strict comparison let a campaign's own rediscovery of a target remove it from
the targets; 1 meV/atom is ten times that noise and a fifth of the oracle convergence tolerance (5 meV/atom)."""


def joint_targets(runs: dict[str, Path], *, truth_dir: Path, verdicts: dict[str, Any]) -> set[str]:
    """The withheld phases (material ids) that are stable on the joint hull: every label of every run and of the
    truth store (same oracle settings). A withheld phase that a campaign beat with a lower polymorph it found (on
    K-O, antifluorite K2O, which no bundled row holds, lies below every withheld K2O) is no ground state to find;
    a label of the same crystal (`StructureMatcher`) never beats it, and another crystal beats it only by more than
    `BEATEN_BY`."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from loop.science.hull import HullEntry, OracleHull
    from loop.science.structures import structure_hash
    from loop.store import CampaignStore

    labels: dict[str, tuple[Any, float]] = {}
    structures: dict[str, Any] = {}
    for workdir in [*runs.values(), truth_dir]:
        store = CampaignStore.in_workdir(workdir)
        try:
            ok = store.oracle_results(ok_only=True)
            found = store.get_structures([h for r in ok for h in (r.hash, r.final_hash) if h])
            for r in ok:
                labels.setdefault(r.hash, (found[r.hash].composition, float(r.energy_per_atom)))
                # the oracle-relaxed crystal where there is one: a label is that crystal's energy
                structures.setdefault(r.hash, found.get(r.final_hash or r.hash, found[r.hash]))
        finally:
            store.close()
    store = CampaignStore.in_workdir(next(iter(runs.values())))
    try:
        withheld = store.get_meta("withheld") or []
    finally:
        store.close()
    matcher = StructureMatcher()
    out = set()
    for w in withheld:
        wid = str(w.get("material_id"))
        if wid not in verdicts or verdicts[wid]["e_hull"] is None:
            continue
        crystal = Structure.from_dict(w["structure"])
        h = structure_hash(crystal)
        if h not in labels:
            continue
        formula = labels[h][0].reduced_formula
        same = {
            k
            for k, (comp, _) in labels.items()
            if k != h
            and comp.reduced_formula == formula
            and matcher.fit(structures[k], structures.get(h, crystal))
        }
        hull = OracleHull.from_entries(
            HullEntry(entry_id=k, composition=c, energy_per_atom=e)
            for k, (c, e) in labels.items()
            if k not in same
        )
        if hull.e_above_hull(*labels[h]) <= BEATEN_BY:
            out.add(wid)
    return out


def generation_recall(workdir: Path, *, targets: set[str]) -> dict[str, dict[str, list[str]]]:
    """Which targets (withheld stable phases, by material id) each generator proposed, round by round.

    A target counts for a generator in a round when one of the candidates it proposed, that passed the funnel and
    that screening relaxed by that round (so acquisition could pick it; one left at the cheap tier counts from the
    round that relaxes it), or that candidate's emulator-relaxed structure, matches the target (`StructureMatcher`, default tolerances).
    Returns, per round (as a string) and generator, the sorted target ids found up to that round.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from loop.store import CampaignStore

    store = CampaignStore.in_workdir(workdir)
    try:
        withheld = {
            str(w["material_id"]): Structure.from_dict(w["structure"])
            for w in store.get_meta("withheld") or []
            if str(w.get("material_id")) in targets and isinstance(w.get("structure"), dict)
        }
        by_formula: dict[str, list[str]] = {}
        for wid, s in withheld.items():
            by_formula.setdefault(s.composition.reduced_formula, []).append(wid)
        matcher = StructureMatcher()
        seen: dict[str, set[str]] = {}
        counted: set[str] = set()
        out: dict[str, dict[str, list[str]]] = {}
        for rnd, predictions in sorted(store.predictions_by_round().items()):
            for p in predictions:
                # Counted in the first round screening relaxed it: one left at the cheap tier counts when a later
                # round (the pool carries it) relaxes it.
                if p.relaxed_hash is None or p.hash in counted:
                    continue
                counted.add(p.hash)
                source = store.structure_row(p.hash).source
                mine = seen.setdefault(source, set())
                hashes = [p.hash, p.relaxed_hash]
                for structure in store.get_structures(hashes).values():
                    for wid in by_formula.get(structure.composition.reduced_formula, []):
                        if wid not in mine and matcher.fit(structure, withheld[wid]):
                            mine.add(wid)
            out[str(rnd)] = {source: sorted(ids) for source, ids in seen.items()}
        return out
    finally:
        store.close()


def curve(run_found: dict[str, Any], *, targets: set[str], calls: int) -> list[int]:
    """Targets rediscovered after k = 1 .. `calls` oracle calls (of rounds >= 1)."""
    when = [
        w["after_calls"]
        for wid, w in run_found["withheld"].items()
        if wid in targets and w["after_calls"] is not None
    ]
    return [sum(1 for c in when if c <= k) for k in range(1, calls + 1)]


def bootstrap_mean(values: list[float], *, seed: int = 0) -> tuple[float, float, float]:
    """Mean and bootstrap 95 % interval over seeds."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(BOOTSTRAP, x.size))].mean(axis=1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_ratio(a: list[float], b: list[float], *, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of means a/b and its bootstrap 95 % interval (seeds resampled within each arm); inf where b's mean is 0."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ma = x[rng.integers(0, x.size, size=(BOOTSTRAP, x.size))].mean(axis=1)
    mb = y[rng.integers(0, y.size, size=(BOOTSTRAP, y.size))].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(mb > 0, ma / np.where(mb > 0, mb, 1.0), np.where(ma > 0, np.inf, 1.0))
    point = x.mean() / y.mean() if y.mean() > 0 else (np.inf if x.mean() > 0 else 1.0)
    # no interpolation between resampled ratios: two infinite ones gave NaN (inf - inf) instead of inf
    low, high = np.percentile(ratios, [2.5, 97.5], method="inverted_cdf")
    return float(point), float(low), float(high)


def measure(system: str, *, arms: list[str], seeds: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Run every arm and seed of one chemistry, then judge them against the truth."""
    base = args.workdir / system
    runs: dict[str, Path] = {}
    wall: dict[str, float] = {}
    # Seed by seed, so that a stopped benchmark has every arm at the seeds it finished.
    for seed in seeds:
        for arm in arms:
            key = f"{arm}/s{seed}"
            workdir = base / arm_slug(arm) / f"s{seed}"
            config = campaign_config(
                system=system, arm=arm, seed=seed, rounds=args.rounds, budget=args.budget
            )
            log.info("%s %s", system, key)
            wall[key] = run_campaign(config, workdir=workdir, rounds=config["stop"]["max_rounds"])
            runs[key] = workdir
    first = next(iter(runs.values()))
    verdicts = truth(first, workdir=base / "truth")
    targets = joint_targets(runs, truth_dir=base / "truth", verdicts=verdicts)
    joint = joint_hits(runs, truth_dir=base / "truth")
    calls = args.rounds * args.budget
    per_run = {}
    for key, workdir in runs.items():
        f = found(workdir)
        per_run[key] = {
            "found": f,
            "curve": curve(f, targets=targets, calls=calls),
            "generation_recall": generation_recall(workdir, targets=targets),
            "joint_hull": joint[key],
            "stage_time_s": round(cpu_seconds(workdir), 1),
            "wall_s_this_call": round(wall[key], 1),
        }
    summary: dict[str, Any] = {}
    for arm in arms:
        rows = [per_run[f"{arm}/s{s}"] for s in seeds]
        at_budget = [float(r["curve"][-1]) if r["curve"] else 0.0 for r in rows]
        summary[arm] = {
            "rediscovered_at_budget": bootstrap_mean(at_budget),
            "joint_hits": bootstrap_mean([float(r["joint_hull"]["hits"]) for r in rows]),
            "calls": float(np.mean([r["joint_hull"]["calls"] for r in rows])),
            "share_of_targets": float(np.mean(at_budget)) / len(targets) if targets else None,
        }
    # Each arm against the uniform-random arm with its generators, when both ran.
    for arm in arms:
        rand = random_counterpart(arm)
        if is_random(arm) or rand not in arms:
            continue
        d = [float(per_run[f"{arm}/s{s}"]["curve"][-1]) for s in seeds]
        r = [float(per_run[f"{rand}/s{s}"]["curve"][-1]) for s in seeds]
        summary[f"{arm}{RATIO}"] = bootstrap_ratio(d, r)
    return {
        "system": system,
        "role": CHEMISTRIES.get(system, "extra"),
        "targets": sorted(targets),
        "truth": verdicts,
        "runs": per_run,
        "summary": summary,
    }


def _recall_share(runs: list[dict[str, Any]], *, generator: str, round: int, n_targets: int) -> str:
    """Mean share of the targets `generator` ("all": any generator) proposed by `round` over `runs`, or "–"."""
    shares = []
    for run in runs:
        per = run["generation_recall"].get(str(round))
        if per is not None:
            ids = set(per.get(generator, [])) if generator != "all" else {i for x in per.values() for i in x}
            shares.append(len(ids) / n_targets)
    return "–" if not shares else f"{np.mean(shares):.0%}"


def recall_table(results: list[dict[str, Any]]) -> str:
    """Markdown: share of the targets that fit the funnel proposed (screened) by each round, per generator and in
    all, mean over the seeds of each arm that does not pick at random (its random counterpart has the same
    generators)."""
    lines = ["| system | targets | arm | generator | " + " | ".join(f"round {r}" for r in range(1, 5)) + " |"]
    lines.append("|---|---|---|---|" + "---|" * 4)
    for res in results:
        n = len(res["targets"])
        if not n:
            continue
        by_arm: dict[str, list[dict[str, Any]]] = {}
        for key, run in res["runs"].items():
            arm = key.rsplit("/", 1)[0]
            if not is_random(arm):
                by_arm.setdefault(arm, []).append(run)
        for arm, runs in by_arm.items():
            generators = sorted({g for v in runs for per in v["generation_recall"].values() for g in per})
            for g in [*generators, "all"]:
                cells = [_recall_share(runs, generator=g, round=r, n_targets=n) for r in range(1, 5)]
                lines.append(f"| {res['system']} | {n} | {arm} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per chemistry and arm, targets rediscovered at the budget, hits on the joint hull (mean [95 % CI])."""
    lines = [
        "| system | targets | arm | rediscovered (mean [95 % CI]) | share | joint-hull hits | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for arm, s in res["summary"].items():
            if arm.endswith(RATIO):
                continue
            m, lo, hi = s["rediscovered_at_budget"]
            hm, hlo, hhi = s["joint_hits"]
            seeds = [
                v["curve"][-1] if v["curve"] else 0 for k, v in res["runs"].items() if k.startswith(arm + "/")
            ]
            share = "–" if s["share_of_targets"] is None else f"{s['share_of_targets']:.0%}"
            lines.append(
                f"| {res['system']} | {len(res['targets'])} | {arm} | {m:.2f} [{lo:.2f}, {hi:.2f}] | {share} | "
                f"{hm:.1f} [{hlo:.1f}, {hhi:.1f}] | {seeds} |"
            )
        for key, value in res["summary"].items():
            if key.endswith(RATIO):
                arm, (p, lo, hi) = key.removesuffix(RATIO), value
                lines.append(
                    f"| {res['system']} | | {arm} / {random_counterpart(arm)} | {p:.2f} [{lo:.2f}, {hi:.2f}] | | | |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--chemistries", default=",".join(CHEMISTRIES))
    p.add_argument("--arms", default="default,random,one_shot")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=4, help="rounds after round 0")
    p.add_argument("--budget", type=int, default=8, help="oracle calls per round")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.workdir = args.workdir.resolve()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    arms = [a for a in args.arms.split(",") if a]
    started = time.time()
    results = [measure(s, arms=arms, seeds=seeds, args=args) for s in args.chemistries.split(",") if s]
    print(table(results))
    print(recall_table(results))
    print(f"benchmark wall time {time.time() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
