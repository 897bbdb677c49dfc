"""Throughput of screening in tiers: candidates per hour through the cheap tier and through the relaxation tier.

    OMP_NUM_THREADS=1 python -m benchmarks.screening_throughput --system Li-Al --n 1000 --relax 48 --workers 2

What `matloop screen --generate N` and a round of that size run, step by step, with the campaign's code:

1. sample `--n` crystals of the system with the shipped diffusion model (`loop.cli.screen.sample`);
2. the emulator's own hull of the system's known crystals (`loop.cli.screen.emulator_hull`, a one-off per run);
3. the funnel (`loop.science.funnel.Funnel`: validity, dedup, novelty against the bundled crystals) on all of them;
4. the cheap tier (`loop.runtime.screening_tiers.cheap_estimates`) on the survivors, once per `--steps` value (0: batched
   energy-only ensemble predictions; k: k steps of the screening relaxation), on `--workers` single-threaded Dask
   workers (1: in this process);
5. the relaxation tier (`loop.work.screening.relax_structures`, the campaign's FIRE + cell filter at the default
   `emulator_training` settings) on `--relax` candidates of the default relaxed share, best first.

Rates are per hour of wall time on this machine as it was (its 1-minute load average before and after is
reported: other processes on the same cores slow every figure down). Units: s, candidates/h.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

from benchmarks.lib.report import emit_json
from benchmarks.lib.timing import load_average


def run(*, system: str, n: int, relax: int, workers: int, seed: int, steps: list[int]) -> dict[str, Any]:
    from generator.base import Candidate
    from loop.cli.screen import emulator_hull, sample
    from loop.config import validate_config
    from loop.runtime.execution import make_executor
    from loop.runtime.screening_tiers import cheap_estimates, relaxed_share
    from loop.science.funnel import Funnel, KnownIndex
    from loop.work.screening import relax_structures

    execution = {"kind": "inline"} if workers == 1 else {"kind": "local", "n_workers": workers}
    config = validate_config(
        {
            "name": "throughput",
            "chemical_systems": [system],
            "execution": execution,
            "tracking": {"enabled": False},
        }
    )
    load_before = load_average()[0]
    seconds: dict[str, float] = {}
    started = time.time()
    named = sample(config, n=n, seed=seed)
    seconds["generate"] = time.time() - started
    with make_executor(config.execution) as ex:
        executor = None if ex.inline else ex
        started = time.time()
        hull = emulator_hull(config, executor=executor)
        seconds["hull"] = time.time() - started
        started = time.time()
        known = KnownIndex.from_seed_data(
            matcher=config.generator.funnel.matcher, withhold=config.withholding
        )
        kept, _ = Funnel(config.generator.funnel, known=known).run(
            [Candidate(structure=s, source="diffusion", parent=None) for _, s in named],
            chemical_systems=config.chemical_systems,
        )
        seconds["funnel"] = time.time() - started
        structures = [c.structure for c in kept]
        for n_steps in steps:
            started = time.time()
            estimates = cheap_estimates(
                structures,
                hull=hull,
                emulator_settings=config.emulator.model_dump(),
                checkpoint=None,
                executor=executor,
                steps=n_steps,
                fmax=config.emulator_training.relax_fmax,
            )
            seconds[f"cheap_{n_steps}_steps"] = time.time() - started
        # the relaxed share of the last cheap tier measured
        groups = [(c.source, c.structure.composition.reduced_formula) for c in kept]
        share = relaxed_share(estimates, settings=config.screening, groups=groups)
        chosen = share.indices[:relax]
        started = time.time()
        results = relax_structures(
            config, structures=[structures[i] for i in chosen], checkpoint=None, executor=executor
        )
        seconds["relax"] = time.time() - started
    taken = [r["n_steps"] for r in results]
    atoms = [len(s) for s in structures]

    def per_hour(count: int, s: float) -> float | None:
        return round(3600.0 * count / s) if s > 0 else None

    return {
        "command": f"python -m benchmarks.screening_throughput --system {system} --n {n} --relax {relax} "
        f"--workers {workers} --seed {seed} --steps {','.join(map(str, steps))}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_1min_before": round(load_before, 2),
        "load_1min_after": load_average()[0],
        "workers": workers,
        "n_generated": len(named),
        "n_funnel_passed": len(structures),
        "mean_atoms": round(sum(atoms) / max(len(atoms), 1), 1),
        "n_cheap_placed": sum(1 for e in estimates if e.placed),
        "default_relaxed_share": len(share.indices),
        "n_relaxed": len(chosen),
        "relax_steps_mean": round(sum(taken) / max(len(taken), 1), 1),
        "relax_converged": sum(1 for r in results if r["converged"]),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "per_hour": {
            "generate": per_hour(len(named), seconds["generate"]),
            "funnel": per_hour(len(named), seconds["funnel"]),
            **{f"cheap_{k}_steps": per_hour(len(structures), seconds[f"cheap_{k}_steps"]) for k in steps},
            "relax": per_hour(len(chosen), seconds["relax"]),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", default="Li-Al", help="chemical system, e.g. Li-Al")
    p.add_argument("--n", type=int, default=1000, help="crystals sampled and screened")
    p.add_argument(
        "--relax", type=int, default=48, help="candidates of the relaxed share timed in the relax tier"
    )
    p.add_argument("--workers", type=int, default=2, help="single-threaded workers (1: this process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="0,5", help="cheap-tier relaxation steps to time, comma-separated")
    p.add_argument("--out", help="also write the report here (JSON)")
    args = p.parse_args()
    report = run(
        system=args.system,
        n=args.n,
        relax=args.relax,
        workers=args.workers,
        seed=args.seed,
        steps=[int(k) for k in args.steps.split(",")],
    )
    emit_json(report, out=args.out)


if __name__ == "__main__":
    main()
