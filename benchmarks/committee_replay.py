"""Emulator alone vs the committee across model families, on a campaign's oracle labels (a prospective test).

For every candidate the campaign labelled in round r >= 1, it compares what screening would have said before the
label with the oracle's E_hull against the hull of the labels before round r:
* emulator: the CHGNet ensemble's calibrated E_hull ± σ as stored by the screen;
* committee: the same combined with each committee member's own-hull E_hull (`loop.work.screening`). When the
  campaign screened without a committee, the members are run now on the stored emulator-relaxed structures and
  the round's hull phases, exactly as the screen would have.
Then per design: MAE, Spearman(σ, |error|), share of errors within 1σ and 2σ, and the rank of each label among the
round's candidates (so one sees whether a phase below the hull would have been chosen).

Usage:
    OMP_NUM_THREADS=1 python -m benchmarks.committee_replay --workdir runs/demo [--workdir ...] [--member sevennet]

Units: eV/atom.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from loop.config import CampaignConfig
from loop.science.committee import combine_committee
from loop.science.hull import HullEntry, OracleHull
from loop.store import CampaignStore
from loop.work.screening import committee_e_hull


def summary(name: str, errors: list[float], sigmas: list[float]) -> str:
    e, s = np.abs(errors), np.asarray(sigmas)
    rho = spearmanr(s, e).statistic if len(e) > 2 else float("nan")
    return (
        f"| {name} | {len(e)} | {e.mean():.3f} | {np.mean(errors):+.3f} | {rho:+.2f} | "
        f"{np.mean(e <= s):.2f} | {np.mean(e <= 2 * s):.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, action="append", required=True)
    parser.add_argument(
        "--member", default="sevennet", help="committee member kind to replay when none is stored"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    errs: dict[str, list[float]] = {"emulator": [], "committee": []}
    sigs: dict[str, list[float]] = {"emulator": [], "committee": []}
    print(
        "| campaign | round | formula | emulator E_hull ± σ | member E_hull | committee E_hull ± σ | oracle E_hull |"
        " rank (emulator / committee) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for workdir in args.workdir:
        store = CampaignStore.in_workdir(workdir)
        raw = store.get_meta("config")
        raw.setdefault("committee", [])
        if not raw["committee"]:
            raw["committee"] = [{"kind": args.member}]
        config = CampaignConfig.model_validate(raw)
        results = store.oracle_results(settings_hash=config.oracle.settings_hash(), ok_only=True)
        structures = store.get_structures([r.hash for r in results])
        rounds = sorted({r.round for r in results if r.round})
        for rnd in rounds:
            before = [r for r in results if (r.round or 0) < rnd]
            hull = OracleHull.from_entries(
                HullEntry.from_total_energy(
                    entry_id=r.hash, composition=structures[r.hash].composition, energy=r.energy
                )
                for r in before
            )
            preds = [p for p in store.round_predictions(rnd) if p.e_hull is not None and p.relaxed_hash]
            relaxed = store.get_structures([p.relaxed_hash for p in preds])
            stored = all("committee" in p.data for p in preds)
            if stored:
                emu = [(p.data["committee"]["emulator"], p.data["committee"]["emulator_std"]) for p in preds]
                member = [
                    next(v for k, v in p.data["committee"].items() if not k.startswith("emulator"))
                    for p in preds
                ]
            else:
                emu = [(p.e_hull, p.e_hull_std) for p in preds]
                member = list(
                    committee_e_hull(
                        config,
                        store=store,
                        hull=hull,
                        structures=[relaxed[p.relaxed_hash] for p in preds],
                        executor=None,
                    )[args.member]
                )
            combined = [combine_committee(m, s, [x]) for (m, s), x in zip(emu, member, strict=True)]
            rank_emu = np.argsort(np.argsort([m for m, _ in emu]))
            rank_com = np.argsort(np.argsort([m for m, _ in combined]))
            labelled = {r.hash: r for r in results if r.round == rnd}
            for i, p in enumerate(preds):
                r = labelled.get(p.relaxed_hash)
                if r is None:
                    continue
                comp = structures[r.hash].composition
                truth = hull.e_above_hull(comp, r.energy_per_atom)
                if not math.isfinite(truth):
                    continue
                for name, (m, s) in (("emulator", emu[i]), ("committee", combined[i])):
                    errs[name].append(m - truth)
                    sigs[name].append(s)
                print(
                    f"| {Path(workdir).name} | {rnd} | {comp.reduced_formula} | {emu[i][0]:+.3f} ± {emu[i][1]:.3f} | "
                    f"{member[i]:+.3f} | {combined[i][0]:+.3f} ± {combined[i][1]:.3f} | {truth:+.3f} | "
                    f"{rank_emu[i] + 1} / {rank_com[i] + 1} of {len(preds)} |"
                )
        store.close()
    print()
    print("| design | labels | MAE | mean error | Spearman(σ, \\|err\\|) | within 1σ | within 2σ |")
    print("|---|---|---|---|---|---|---|")
    for name in ("emulator", "committee"):
        if errs[name]:
            print(summary(name, errs[name], sigs[name]))


if __name__ == "__main__":
    main()
