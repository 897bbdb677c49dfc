"""Does property conditioning shift the sampled crystals' properties? Judged with CHGNet 0.3.0.

    OMP_NUM_THREADS=1 python -m benchmarks.generator_property_shift --n 48 --n-uncond 200

For each request (magnetic density high; bulk modulus high and low; energy above hull low) the shipped
diffusion checkpoint samples `--n` crystals with that condition and `--n-uncond` without any; structurally
valid samples are relaxed briefly with CHGNet (`--relax-steps` FIRE steps, cell + positions, fmax 0.1 eV/Å)
and judged on the relaxed structure:

* magnetic density (μB/Å³): Σ|m_i| / V from CHGNet site magnetic moments;
* bulk modulus (GPa): clamped-ion E-V fit of CHGNet energies (`generator.diffusion.chgnet_labels.bulk_moduli`,
  the routine that made the training labels), NaN where the fit fails its sanity checks;
* energy above hull (eV/atom): CHGNet energy per atom against a CHGNet hull of the mp_20 train+val crystals
  in the sample's chemical (sub)systems, with the CHGNet-relaxed prototype references of
  `benchmarks.generator_quality._prototype_energy` for elements without an elemental crystal there (incomplete hull,
  so optimistic).

Reports mean, median and the fraction inside the requested range, conditioned vs unconditional (the same
unconditional samples serve every row). All numbers are CHGNet estimates, not DFT. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from generator.diffusion.sampler import DEFAULT_GUIDANCE

warnings.filterwarnings("ignore")

REQUESTS: dict[str, tuple[str, str]] = {
    "magnetic_density_high": ("magnetic_density", "0.05:0.3"),
    "bulk_modulus_high": ("bulk_modulus", "200:500"),
    "bulk_modulus_low": ("bulk_modulus", "0:40"),
    "e_above_hull_low": ("e_above_hull", "0:0.05"),
}


def judge(structures, *, model, opt, relax_steps: int, with_hull: bool) -> dict[str, list[float]]:
    """CHGNet properties of the relaxed valid samples (NaN where a step failed)."""
    from benchmarks.generator_quality import hull_distances, mp20_structures, relax_briefly
    from generator.diffusion.chgnet_labels import bulk_moduli, magnetic_densities

    relaxed = [r for r in relax_briefly(structures, opt=opt, steps=relax_steps) if r is not None]
    final = [s for s, _ in relaxed]
    mag, e0 = magnetic_densities(final, model=model) if final else ([], [])
    bulk = bulk_moduli(final, model=model, energies0=e0) if final else []
    if with_hull and relaxed:
        references = mp20_structures("train") + mp20_structures("val")
        hull = hull_distances(relaxed, references, model=model, opt=opt)[0]
    else:
        hull = [math.nan] * len(relaxed)
    return {"magnetic_density": mag, "bulk_modulus": bulk, "e_above_hull": hull}


def summarise(values: list[float], low: float, high: float) -> dict[str, float | int | None]:
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if not len(x):
        return {"n": 0, "mean": None, "median": None, "in_range": None}
    return {
        "n": len(x),
        "mean": round(float(x.mean()), 4),
        "median": round(float(np.median(x)), 4),
        "in_range": round(float(((x >= low) & (x <= high)).mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--n-uncond", type=int, default=200)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--relax-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=list(REQUESTS), default=list(REQUESTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from chgnet.model import StructOptimizer

    from generator.diffusion.chgnet_labels import load_chgnet
    from generator.diffusion.conditions import validate_condition
    from generator.diffusion.generator import sample_structures
    from generator.diffusion.metrics import structurally_valid

    model = load_chgnet()
    opt = StructOptimizer(model=model)
    t0 = time.monotonic()

    def draw(conditions: dict[str, str], n: int) -> list:
        out = sample_structures(
            n=n,
            conditions=conditions,
            checkpoint=args.checkpoint,
            steps=args.steps,
            guidance_scale=args.guidance,
            batch_size=n,
            seed=args.seed,
        )
        return [s for s in out if structurally_valid(s)]

    uncond = draw({}, args.n_uncond)
    need_hull = "e_above_hull_low" in args.only
    judged_u = judge(uncond, model=model, opt=opt, relax_steps=args.relax_steps, with_hull=need_hull)
    result: dict[str, object] = {"n_uncond_valid": len(uncond)}
    for key in args.only:
        prop, text = REQUESTS[key]
        cond = validate_condition(prop, text)
        samples = draw({prop: text}, args.n)
        judged = judge(
            samples, model=model, opt=opt, relax_steps=args.relax_steps, with_hull=prop == "e_above_hull"
        )
        lo, hi = float(cond.low), float(cond.high)
        result[key] = {
            "request": f"{prop}={text}",
            "n_valid": len(samples),
            "conditioned": summarise(judged[prop], lo, hi),
            "unconditional": summarise(judged_u[prop], lo, hi),
        }
        print(json.dumps({key: result[key]}), flush=True)
    result["args"] = vars(args) | {"checkpoint": str(args.checkpoint) if args.checkpoint else "shipped"}
    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
