"""Conductivity validation: the same MLFF MD settings rank known fast Li conductors above known poor ones.

Three fast Li-ion conductors and three poor ones (Materials Project structures bundled under generator/data), all
through `loop.design.conductivity` with the shipped CHGNet 0.3.0 and identical settings: the cell relaxed with the
model, NVT (Bussi) at each temperature on a supercell at least `--min-length` Å wide, 2 fs steps, `--equilibration`
ps dropped, `--duration` ps of production. Ranked by D (equivalently σ) at the highest temperature and by σ
extrapolated to 300 K (Arrhenius over ≥ 3 resolved temperatures; unknown ranks last).

To fit the CPU, a poor conductor runs its lower temperatures only when diffusion is resolved at the highest one
(no Li hop at the highest temperature means none at lower ones: its 300 K value is unknown either way). Every run is
stored under `--workdir` as it finishes and reused, so the benchmark resumes after an interruption. Two Lindemann
ratios (`loop.design.thermal.lindemann_ratio`) of each run show whether the framework stayed solid: of the whole
non-Li framework, and of its least electronegative element alone (P, Y, Al, Si; O or N when Li is the only
cation), which stays low when anion groups only rotate about their centres.

Statistical limits (defaults chosen to fit two shared cores): 1 ps runs on 16-42-atom cells (supercells only 5 Å
wide, so a Li ion sees its own periodic image within the model's 6 Å cutoff) resolve D ≳ 1e-5 cm²/s, and only to
within a factor of ~2-3 (the single-origin MSD: `DiffusionAnalyzer`'s multi-origin mode needs lags beyond 1 ps); the
300 K value is an Arrhenius extrapolation over a factor of 4 in 1/T and ranks, it does not measure.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.conductivity_validation --workdir runs/conductivity_validation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from pymatgen.core import Structure

from benchmarks.lib.cells import bundled
from emulator.dynamics import MDTrajectory
from loop.design.conductivity import ConductivityResult, conductivity_from_trajectories
from loop.design.md_runs import MDSettings
from loop.design.thermal import lindemann_ratio

# (label, bundled material id, class, published room-temperature σ in mS/cm, source)
MATERIALS = [
    (
        "Li7P3S11",
        "mp-641703",
        "fast",
        "17",
        "Seino et al., Energy Environ. Sci. 7, 627 (2014), glass-ceramic",
    ),
    ("Li3YBr6", "mp-1147619", "fast", "1.7", "Asano et al., Adv. Mater. 30, 1803075 (2018)"),
    (
        "β-Li3N",
        "mp-2341",
        "fast",
        "2.1 (vacancy-rich)",
        "W. Li et al., Nat. Nanotechnol., 'Superionic conducting vacancy-rich β-Li3N electrolyte for stable cycling "
        "of all-solid-state lithium metal batteries': 2.14 mS/cm at 25 °C for ball-milled β-Li3N, about 100x the "
        "commercial α/β mixture; the MD cell is stoichiometric",
    ),
    (
        "Li2O",
        "mp-1960",
        "poor",
        "≪ 1e-3",
        "vacancy-mediated conduction measured at high temperature only (J. Chem. Soc. Faraday Trans. 86, 1239 "
        "(1990)); superionic above ~1000 K (Annamareddy, Eapen, Entropy 19, 227 (2017))",
    ),
    (
        "γ-LiAlO2",
        "mp-3427",
        "poor",
        "≪ 1e-3",
        "ionic insulator (no room-temperature value reported that we cite)",
    ),
    (
        "Li2SiO3",
        "mp-5012",
        "poor",
        "≪ 1e-3",
        "ionic insulator (no room-temperature value reported that we cite)",
    ),
]


def _run(
    *, workdir: Path, label: str, structure: Structure, temperature: float, args: argparse.Namespace
) -> tuple[MDTrajectory, float]:
    """One stored MD run (reused if already on disk) and its wall time in s (0 when reused)."""
    path = workdir / f"{label}_{temperature:g}K.json"
    if path.is_file():
        return MDTrajectory.from_dict(json.loads(path.read_text())), 0.0
    start = time.perf_counter()
    md = MDSettings(
        equilibration=args.equilibration,
        min_length=args.min_length,
        frame_interval=args.frame_interval,
        seed=args.seed,
    )
    trajectory = md.run(structure=structure, temperature=temperature, duration=args.duration)
    seconds = time.perf_counter() - start
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(trajectory.to_dict()))
    tmp.replace(path)
    return trajectory, seconds


def _relaxed(*, workdir: Path, label: str, material_id: str) -> Structure:
    path = workdir / f"{label}_relaxed.json"
    if path.is_file():
        return Structure.from_dict(json.loads(path.read_text()))
    structure = MDSettings().relax(structure=bundled(material_id)).structure
    path.write_text(json.dumps(structure.as_dict()))
    return structure


def _fmt(x: float | None, spec: str = ".2g") -> str:
    return "unknown" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/conductivity_validation"))
    parser.add_argument("--temperatures", type=float, nargs="+", default=[800.0, 1000.0, 1200.0], help="K")
    parser.add_argument("--duration", type=float, default=1.0, help="production ps per temperature")
    parser.add_argument("--equilibration", type=float, default=0.1, help="ps per temperature")
    parser.add_argument("--min-length", type=float, default=5.0, help="Å, supercell width")
    parser.add_argument("--frame-interval", type=int, default=5, help="steps between frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    temperatures = sorted(args.temperatures)
    top = temperatures[-1]
    rows: list[tuple[str, str, str, str, ConductivityResult, list[tuple[float, float, str]]]] = []
    for label, material_id, kind, published, source in MATERIALS:
        if args.only is not None and label not in args.only:
            continue
        structure = _relaxed(workdir=args.workdir, label=label, material_id=material_id)
        runs, lindemann = [], []
        for temperature in reversed(temperatures):
            trajectory, seconds = _run(
                workdir=args.workdir, label=label, structure=structure, temperature=temperature, args=args
            )
            runs.append(trajectory)
            framework = sorted({site.specie for site in trajectory.structure if site.specie.symbol != "Li"})
            centres = min(framework, key=lambda el: el.X).symbol  # P in a thiophosphate, Y, Al, Si; O in Li2O
            others = [el.symbol for el in framework if el.symbol != centres]
            lindemann.append(
                (
                    lindemann_ratio(trajectory=trajectory, mobile_species=["Li"]),
                    lindemann_ratio(trajectory=trajectory, mobile_species=["Li", *others]),
                    centres,
                )
            )
            print(
                f"{label} {temperature:g} K: {len(trajectory.structure)} atoms, {trajectory.duration:g} ps, "
                f"mean T {trajectory.mean_temperature:.0f} K, {seconds:.0f} s",
                flush=True,
            )
            if temperature == top and kind == "poor":
                probe = conductivity_from_trajectories(trajectories=runs, specie="Li")
                if not probe.resolved[-1]:
                    break
        result = conductivity_from_trajectories(trajectories=runs, specie="Li")
        rows.append((label, kind, published, source, result, lindemann[::-1]))

    print(
        f"\nSettings: {', '.join(f'{t:g}' for t in temperatures)} K, {args.duration:g} ps production after "
        f"{args.equilibration:g} ps, 2 fs, supercell ≥ {args.min_length:g} Å, seed {args.seed}; production "
        f"lengths run: {sorted({d for row in rows for d in row[4].durations})} ps\n"
    )
    print(
        f"| material | class | published σ(300 K) mS/cm | atoms (Li) | mean T K | D({top:g} K) cm²/s | σ({top:g} K) mS/cm | "
        "MSD Å² per T | Lindemann per T: framework / its least electronegative element | Ea eV | "
        "σ(300 K) mS/cm [95 %] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, kind, published, _, r, lind in rows:
        msd = ", ".join(
            f"{t:g} K: {m:.2f}{'' if ok else '*'}"
            for t, m, ok in zip(r.temperatures, r.msd, r.resolved, strict=True)
        )
        ea = (
            "unknown"
            if r.activation_energy is None
            else f"{r.activation_energy:.2f} ± {r.activation_energy_std:.2f}"
        )
        s300 = (
            "unknown"
            if not r.extrapolated
            else f"{r.conductivity_300k:.2g} [{r.conductivity_300k_low:.2g}, {r.conductivity_300k_high:.2g}]"
        )
        print(
            f"| {label} | {kind} | {published} | {r.n_atoms} ({r.n_mobile}) "
            f"| {', '.join(f'{t:.0f}' for t in r.mean_temperatures)} "
            f"| {r.diffusivity[-1]:.2g} ± {r.diffusivity_std[-1]:.1g} "
            f"| {r.max_temperature_conductivity:.3g} | {msd} | {', '.join(f'{a:.2f} / {c}: {b:.2f}' for a, b, c in lind)} | {ea} | {s300} |"
        )
    print("\n(* not resolved: MSD below 1 Å², i.e. vibrations, no hops)")
    print("\nSources of the published values:")
    for label, _, _, source, _, _ in rows:
        print(f"- {label}: {source}")
    if len({kind for _, kind, *_ in rows}) == 2:
        fast = [r for _, kind, _, _, r, _ in rows if kind == "fast"]
        poor = [r for _, kind, _, _, r, _ in rows if kind == "poor"]
        by_top = min(r.diffusivity[-1] for r in fast) > max(r.diffusivity[-1] for r in poor)

        def key_300(r: ConductivityResult) -> float:
            return -1.0 if r.conductivity_300k is None else r.conductivity_300k

        by_300 = min(key_300(r) for r in fast) > max(key_300(r) for r in poor)
        print(f"\nevery fast conductor above every poor one by D at {top:g} K: {by_top}")
        print(f"every fast conductor above every poor one by σ(300 K) (unknown last): {by_300}")


if __name__ == "__main__":
    main()
