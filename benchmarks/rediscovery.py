"""Rediscovery: withhold known phases from a campaign, run it with the default strategy and with random picks at the
same budget, and count which withheld phases each run finds again, when, and after how many oracle calls.

    OMP_NUM_THREADS=1 python -m benchmarks.rediscovery --config configs/rediscovery-mlff.yaml \
        --strategies expected_improvement,random --rounds 4 --workdir /tmp/rediscovery --out rediscovery.json

Per strategy, the campaign runs as a user would run it (`matloop run CONFIG --workdir DIR --rounds N`, a fresh
process; a stopped benchmark resumes where it was), with only `acquisition.strategy` changed. The config must
withhold something (`withhold:`). What counts:

* the truth: every withheld crystal (its bundled structure) and every round-0 reference of the first run, labelled
  by the campaign's own oracle in a separate store (`truth/`), and their hull at the oracle's level of theory. A
  withheld phase is *stable* there when it is on that hull and a *hit* when within the campaign's `near_stable`
  (`loop.science.verdicts.StabilityRule`): a campaign cannot be blamed for missing a withheld phase that its own oracle
  puts far above the hull;
* a rediscovery: the first oracle call whose structure, or the oracle's relaxed version of it, matches the withheld
  structure (pymatgen `StructureMatcher`, default tolerances), as the science report marks it
  (`loop.report.science.collect`); reported with its round and the number of oracle calls made until then.

Units: eV/atom.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.lib.runs import run_campaign

log = logging.getLogger("rediscovery")


def run_strategy(config: dict[str, Any], *, strategy: str, rounds: int, workdir: Path) -> float:
    """Run (or resume) the campaign with `strategy` in `workdir`; returns the wall time of this call, s."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(config))
    data["name"] = f"{config['name']}-{strategy}"
    data.setdefault("acquisition", {})["strategy"] = strategy
    return run_campaign(data, workdir=workdir, rounds=rounds)


def truth(first: Path, *, workdir: Path) -> dict[str, dict[str, Any]]:
    """E_hull (eV/atom) and verdict of every withheld phase against the hull of the references and the withheld
    phases, all labelled by the campaign's oracle (in `workdir`, resumable)."""
    from pymatgen.core import Structure

    from loop.config import validate_config
    from loop.runtime.labelling import label_hashes
    from loop.science.hull import HullEntry, OracleHull
    from loop.science.verdicts import StabilityRule
    from loop.store import CampaignStore

    source = CampaignStore.in_workdir(first)
    try:
        config = validate_config(source.get_meta("config"), source="campaign store")
        withheld = [w for w in source.get_meta("withheld") or [] if isinstance(w.get("structure"), dict)]
        refs = source.structure_rows(where="round = 0 AND source = 'seed'")
        ref_structures = source.get_structures([r.hash for r in refs])
    finally:
        source.close()
    # A withheld crystal larger than the funnel lets through cannot come back in this campaign: it is no target,
    # and labelling it (a 24-atom LiAl cell with GPAW) would cost more than the campaigns.
    max_atoms = config.generator.funnel.max_atoms
    out: dict[str, dict[str, Any]] = {}
    for w in withheld:
        n = len(Structure.from_dict(w["structure"]))
        if n > max_atoms:
            out[str(w.get("material_id"))] = {
                "e_hull": None,
                "verdict": f"not a target ({n} atoms > {max_atoms})",
            }
    withheld = [w for w in withheld if str(w.get("material_id")) not in out]
    store = CampaignStore.in_workdir(workdir)
    try:
        named: dict[str, str] = {}
        for w in withheld:
            h = store.add_structure(Structure.from_dict(w["structure"]), source="withheld", round=0)
            named[h] = str(w.get("material_id") or h)
        for h, s in ref_structures.items():
            store.add_structure(s, source="seed", round=0, hash=h)
        hashes = [*named, *ref_structures]
        results = label_hashes(store, hashes, settings=config.oracle, workdir=workdir, round=0)
        ok = {h: r for h, r in results.items() if r.ok}
        structures = store.get_structures(list(ok))
    finally:
        store.close()
    hull = OracleHull.from_entries(
        HullEntry(entry_id=h, composition=structures[h].composition, energy_per_atom=r.energy_per_atom)
        for h, r in ok.items()
    )
    rule = StabilityRule(near_stable=config.near_stable)
    for h, wid in named.items():
        if h not in ok:
            out[wid] = {"e_hull": None, "verdict": "failed", "oracle_status": results[h].status}
            continue
        e_hull = float(hull.e_above_hull(structures[h].composition, ok[h].energy_per_atom))
        out[wid] = {"e_hull": round(e_hull, 4), "verdict": rule.classify(e_hull).value}
    return out


def joint_hits(workdirs: dict[str, Path], truth_dir: Path) -> dict[str, dict[str, Any]]:
    """Each run's calls judged on one hull: every label of every run and of the truth store (same oracle settings).

    A campaign counts hits on its own hull, so a run that never labels the true ground state of a composition
    counts its worse polymorphs as hits; on the joint hull both runs are held to the best structure either found.

    Returns:
        Per run: `calls`, `hits` (E_hull ≤ near_stable on the joint hull) and `stable` (on it).
    """
    from loop.config import validate_config
    from loop.science.hull import HullEntry, OracleHull
    from loop.science.verdicts import StabilityRule
    from loop.store import CampaignStore

    labels: dict[str, tuple[Any, float]] = {}
    repeats: set[tuple[str, str]] = set()
    calls: dict[str, list[str]] = {}
    settings: set[str] = set()
    near_stable = None
    for name, workdir in {**workdirs, "truth": truth_dir}.items():
        store = CampaignStore.in_workdir(workdir)
        try:
            if name != "truth":
                config = validate_config(store.get_meta("config"), source="campaign store")
                settings.add(config.oracle.settings_hash())
                near_stable = config.near_stable
                queried = [q.hash for r, qs in sorted(store.queries_by_round().items()) if r > 0 for q in qs]
                calls[name] = queried
            ok = [
                r for r in store.oracle_results(ok_only=True) if not settings or r.settings_hash in settings
            ]
            # As in the campaign's own count: a label that relaxed onto an earlier label's crystal is no new hit.
            repeats |= {(name, r.hash) for r in ok if r.duplicate_of}
            structures = store.get_structures([r.hash for r in ok])
            for r in ok:
                labels.setdefault(r.hash, (structures[r.hash].composition, float(r.energy_per_atom)))
        finally:
            store.close()
    if len(settings) != 1 or near_stable is None:
        raise SystemExit(f"rediscovery: the runs used different oracle settings ({sorted(settings)})")
    hull = OracleHull.from_entries(
        HullEntry(entry_id=h, composition=c, energy_per_atom=e) for h, (c, e) in labels.items()
    )
    rule = StabilityRule(near_stable=near_stable)
    out = {}
    for name, hashes in calls.items():
        e_hull = [hull.e_above_hull(*labels[h]) for h in hashes if h in labels and (name, h) not in repeats]
        out[name] = {
            "calls": len(hashes),
            "hits": sum(rule.is_hit(e) for e in e_hull),
            "stable": sum(rule.is_stable(e) for e in e_hull),
        }
    return out


def found(workdir: Path) -> dict[str, Any]:
    """What one campaign found: per withheld phase, the call that rediscovered it (round, calls so far)."""
    from loop.report.science import collect

    data = collect(workdir)
    return {
        "rounds": max((r.round for r in data.rounds), default=0),
        "oracle_calls": len(data.calls),
        "hits": sum(c.is_hit for c in data.calls),
        "withheld": {
            w.id: {
                "formula": w.formula,
                "space_group": None if w.space_group is None else str(w.space_group),
                "round": None if w.found is None else w.found.round,
                "after_calls": None if w.found is None else w.found.index,
            }
            for w in data.withheld
        },
    }


def table(result: dict[str, Any]) -> str:
    """The rediscovery table (markdown): one row per withheld phase, a column per strategy, and a summary row."""
    strategies = list(result["runs"])
    head = ["withheld phase", "E_hull at the oracle (eV/atom)", *strategies]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ids = sorted(
        result["truth"], key=lambda w: (result["truth"][w]["e_hull"] is None, result["truth"][w]["e_hull"])
    )
    first = result["runs"][strategies[0]]["found"]["withheld"]
    for wid in ids:
        t = result["truth"][wid]
        meta = first.get(wid, {})
        name = f"{meta.get('formula', '?')} ({wid}, {meta.get('space_group') or '?'})"
        e = t["verdict"] if t["e_hull"] is None else f"{t['e_hull']:+.3f} ({t['verdict']})"
        cells = []
        for s in strategies:
            w = result["runs"][s]["found"]["withheld"].get(wid, {})
            cells.append("–" if w.get("round") is None else f"round {w['round']}, call {w['after_calls']}")
        lines.append(f"| {name} | {e} | " + " | ".join(cells) + " |")
    summary = []
    for s in strategies:
        f = result["runs"][s]["found"]
        n_found = sum(w.get("round") is not None for w in f["withheld"].values())
        hit_ids = [w for w, t in result["truth"].items() if t["verdict"] in ("stable", "near_stable")]
        found_hits = sum(f["withheld"].get(w, {}).get("round") is not None for w in hit_ids)
        per = f"{f['oracle_calls'] / n_found:.1f}" if n_found else "–"
        summary.append(
            f"{n_found}/{len(f['withheld'])} found ({found_hits}/{len(hit_ids)} of the oracle's hits); "
            f"{f['oracle_calls']} calls, {per} calls per rediscovery; {f['hits']} hits in all "
            f"({f['hits'] / f['oracle_calls']:.0%} of calls)"
            if f["oracle_calls"]
            else "no oracle call"
        )
    lines.append("| **all** | | " + " | ".join(summary) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path, help="campaign config with a withhold: list")
    p.add_argument("--strategies", default="expected_improvement,random")
    p.add_argument("--rounds", type=int, default=4, help="rounds after round 0")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        config = yaml.safe_load(args.config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        print(f"rediscovery: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(config, dict) or not config.get("withhold"):
        print(f"rediscovery: {args.config} withholds nothing; add a withhold: list", file=sys.stderr)
        return 2
    strategies = [s for s in args.strategies.split(",") if s]
    result: dict[str, Any] = {
        "config": args.config.name,
        "rounds": args.rounds,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": {},
    }
    for strategy in strategies:
        wall = run_strategy(config, strategy=strategy, rounds=args.rounds, workdir=args.workdir / strategy)
        result["runs"][strategy] = {
            "wall_s_this_call": round(wall, 1),
            "found": found(args.workdir / strategy),
        }
    result["truth"] = truth(args.workdir / strategies[0], workdir=args.workdir / "truth")
    result["joint_hull"] = joint_hits(
        {s: args.workdir / s for s in strategies}, truth_dir=args.workdir / "truth"
    )
    print(table(result))
    for s, j in result["joint_hull"].items():
        print(
            f"{s}: {j['hits']} hits ({j['stable']} stable) in {j['calls']} calls on the joint hull of every run"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
