"""ML property labels for the mp_20 crystals from a pretrained CHGNet 0.3.0 model.

Two labels that the Materials Project table of mp_20 does not carry:

* `magnetic_density` (μB/Å³) = Σ_i |m_i| / V, with m_i CHGNet's predicted site magnetic moments on the given
  (DFT-relaxed) structure and V its cell volume.
* `bulk_modulus` (GPa) from an energy-volume curve: the cell is scaled isotropically to volume strains
  `BULK_STRAINS` (fractional coordinates fixed, no relaxation of ions or cell shape), CHGNet energies are fitted by
  a quadratic E(V) and B = V₀ · d²E/dV² at the fitted minimum V₀. Because the ions are not relaxed this is the
  unrelaxed (clamped-ion) modulus, an upper bound of the relaxed one. Non-convex or absurd fits give NaN.

Both are ML estimates, not DFT values. Run as::

    python -m generator.diffusion.chgnet_labels --out generator/data/mp_20/chgnet_labels.csv.gz

`chgnet` is imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from generator.diffusion.data import DATA_DIR, read_mp20_frame

LABELS_PATH = DATA_DIR / "chgnet_labels.csv.gz"
# ±5 % volume strain: wide enough to dominate CHGNet's energy noise, small enough for a quadratic E(V)
BULK_STRAINS: tuple[float, ...] = (-0.05, -0.025, 0.0, 0.025, 0.05)
EV_PER_A3_TO_GPA = 160.21766208
# sanity window of the fit: stiffer than diamond (~440 GPa) by a margin, softer than 0.5 GPa (Cs: ~2) is not a solid here
BULK_RANGE_GPA = (0.5, 600.0)
# the fitted minimum must lie near the sampled volumes; far outside, the quadratic is an extrapolation
MAX_MIN_SHIFT = 0.08


def load_chgnet():
    """The pretrained CHGNet 0.3.0 model (weights ship in the `chgnet` wheel; no network access needed)."""
    from chgnet.model import CHGNet

    return CHGNet.load(model_name="0.3.0", verbose=False)


def _predict(model, structures: Sequence[Structure], *, task: str, batch_size: int) -> list[dict[str, Any]]:
    out = model.predict_structure(list(structures), task=task, batch_size=batch_size)
    return [out] if isinstance(out, dict) else list(out)


def magnetic_densities(
    structures: Sequence[Structure], *, model=None, batch_size: int = 16
) -> tuple[list[float], list[float]]:
    """CHGNet magnetic density and energy of each structure.

    Args:
        structures: Crystals, predicted as given (no relaxation).
        model: A loaded CHGNet (default: `load_chgnet()`).
        batch_size: Structures per CHGNet forward pass.

    Returns:
        (magnetic density in μB/Å³ = Σ|m_i| / V, total energy in eV) per structure.
    """
    model = model or load_chgnet()
    preds = _predict(model, structures, task="em", batch_size=batch_size)
    dens, energies = [], []
    for s, p in zip(structures, preds, strict=True):
        dens.append(float(np.abs(np.asarray(p["m"], dtype=float)).sum() / s.volume))
        energies.append(float(p["e"]) * len(s))
    return dens, energies


def fit_bulk_modulus(volumes: Sequence[float], energies: Sequence[float]) -> float:
    """Bulk modulus (GPa) from a quadratic fit E(V) = aV² + bV + c: B = V₀ · 2a at the minimum V₀ = -b / 2a.

    Args:
        volumes: Cell volumes (Å³).
        energies: Total energies (eV) at those volumes.

    Returns:
        B in GPa, or NaN when the fit is not convex, its minimum lies more than `MAX_MIN_SHIFT` outside the
        sampled volumes, or B falls outside `BULK_RANGE_GPA`.
    """
    v = np.asarray(volumes, dtype=float)
    e = np.asarray(energies, dtype=float)
    if len(v) < 3 or not (np.isfinite(v).all() and np.isfinite(e).all()):
        return float("nan")
    v_ref = float(np.median(v))
    # fit in reduced volume x = V / V_ref so the polynomial is well conditioned
    a, b, _ = np.polyfit(v / v_ref, e, 2)
    if a <= 0:
        return float("nan")
    x0 = -b / (2 * a)
    lo, hi = v.min() / v_ref, v.max() / v_ref
    if not (lo - MAX_MIN_SHIFT) <= x0 <= (hi + MAX_MIN_SHIFT):
        return float("nan")
    # d²E/dV² = 2a / V_ref², so B = V₀ · d²E/dV² = 2a · x0 / V_ref
    bulk = 2 * a * x0 / v_ref * EV_PER_A3_TO_GPA
    if not BULK_RANGE_GPA[0] <= bulk <= BULK_RANGE_GPA[1]:
        return float("nan")
    return float(bulk)


def bulk_moduli(
    structures: Sequence[Structure],
    *,
    model=None,
    strains: Sequence[float] = BULK_STRAINS,
    batch_size: int = 16,
    energies0: Sequence[float] | None = None,
) -> list[float]:
    """Clamped-ion bulk modulus (GPa) of each structure from CHGNet energies at isotropic volume strains.

    Args:
        structures: Crystals at their reference volume.
        model: A loaded CHGNet (default: `load_chgnet()`).
        strains: Volume strains ΔV/V; fractional coordinates are kept fixed (no relaxation).
        batch_size: Structures per CHGNet forward pass.
        energies0: Total energies (eV) of the unstrained structures if already known (skips that strain).

    Returns:
        Bulk modulus in GPa per structure, NaN where the fit fails the sanity checks of `fit_bulk_modulus`.
    """
    model = model or load_chgnet()
    jobs: list[Structure] = []
    where: list[tuple[int, float]] = []
    for i, s in enumerate(structures):
        for eps in strains:
            if eps == 0.0 and energies0 is not None:
                continue
            strained = s.copy()
            strained.scale_lattice(s.volume * (1 + eps))
            jobs.append(strained)
            where.append((i, eps))
    preds = _predict(model, jobs, task="e", batch_size=batch_size) if jobs else []
    curves: list[list[tuple[float, float]]] = [[] for _ in structures]
    for (i, _), job, p in zip(where, jobs, preds, strict=True):
        curves[i].append((job.volume, float(p["e"]) * len(job)))
    if energies0 is not None and 0.0 in strains:
        for i, s in enumerate(structures):
            curves[i].append((s.volume, float(energies0[i])))
    return [fit_bulk_modulus([v for v, _ in c], [e for _, e in c]) for c in curves]


def label_structures(
    structures: Sequence[Structure], *, model=None, bulk: Sequence[bool] | None = None, batch_size: int = 16
) -> tuple[list[float], list[float]]:
    """Both labels for `structures`; `bulk` selects which get a bulk modulus (others NaN).

    Returns:
        (magnetic density μB/Å³, bulk modulus GPa) per structure.
    """
    model = model or load_chgnet()
    dens, e0 = magnetic_densities(structures, model=model, batch_size=batch_size)
    sel = [i for i in range(len(structures)) if bulk is None or bulk[i]]
    bms = [float("nan")] * len(structures)
    if sel:
        values = bulk_moduli(
            [structures[i] for i in sel], model=model, batch_size=batch_size, energies0=[e0[i] for i in sel]
        )
        for i, v in zip(sel, values, strict=True):
            bms[i] = v
    return dens, bms


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="CHGNet 0.3.0 magnetic-density and bulk-modulus labels for mp_20."
    )
    parser.add_argument("--splits", nargs="+", default=["train"])
    parser.add_argument("--out", type=Path, default=LABELS_PATH)
    parser.add_argument("--partial", type=Path, default=Path("runs/chgnet_labels_partial.csv"))
    parser.add_argument(
        "--bulk-fraction", type=float, default=1.0, help="random share of rows given a bulk modulus"
    )
    parser.add_argument("--limit", type=int, default=None, help="first rows of each split only")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-minutes", type=float, default=1e9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    model = load_chgnet()
    rng = np.random.default_rng(args.seed)
    args.partial.parent.mkdir(parents=True, exist_ok=True)
    done = set(pd.read_csv(args.partial)["material_id"]) if args.partial.exists() else set()
    t0 = time.monotonic()
    n_done = 0
    for split in args.splits:
        frame = read_mp20_frame(split)
        if args.limit is not None:
            frame = frame.iloc[: args.limit]
        # the bulk subset is drawn from the whole split up front, so a resumed run selects the same rows
        want_bulk = rng.random(len(frame)) < args.bulk_fraction
        todo = [i for i, mid in enumerate(frame["material_id"]) if mid not in done]
        for start in range(0, len(todo), args.chunk):
            if (time.monotonic() - t0) > args.max_minutes * 60:
                break
            rows = todo[start : start + args.chunk]
            structures = [Structure.from_str(frame["cif"].iloc[i], fmt="cif") for i in rows]
            dens, bms = label_structures(
                structures, model=model, bulk=[bool(want_bulk[i]) for i in rows], batch_size=args.batch_size
            )
            part = pd.DataFrame(
                {
                    "material_id": frame["material_id"].iloc[rows].to_numpy(),
                    "magnetic_density": np.round(dens, 6),
                    "bulk_modulus": np.round(bms, 2),
                }
            )
            part.to_csv(args.partial, mode="a", header=not args.partial.exists(), index=False)
            n_done += len(rows)
            elapsed = time.monotonic() - t0
            print(json.dumps({"split": split, "rows": n_done, "elapsed_s": round(elapsed, 1)}), flush=True)
    table = pd.read_csv(args.partial).drop_duplicates("material_id")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, compression="gzip")
    summary = {
        "rows": len(table),
        "magnetic_density": int(table["magnetic_density"].notna().sum()),
        "bulk_modulus": int(table["bulk_modulus"].notna().sum()),
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
