"""`matloop screen`: screen structures from files, or freshly sampled ones, in tiers; write one row per structure.

The tiers are the campaign's (`loop.runtime.screening_tiers`, `loop.work.screening`): the funnel (validity, charge balance,
dedup, novelty against the bundled crystals and, with a workdir, everything the campaign stored), the cheap
batched estimate, and the emulator relaxation of the promising share, placed on a hull:

* `--workdir`: the campaign's oracle hull, its config and its current emulator (the emulator is refit to the
  oracle's level of theory, so its energies and that hull compare);
* `--config`: no oracle has labelled anything, so the hull is the emulator's own: the known crystals of the
  chemical systems (the round-0 reference pool, `loop.work.references.reference_pool`) relaxed by the same
  emulator, which cancels the emulator's offsets from any other level of theory (the committee rule).

The committee (other model families) is not run here: E_hull ± σ is the emulator's.

Units: energies eV/atom, times s.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from loop.config import CampaignConfig, load_config, validate_config
from loop.errors import InputError
from loop.science.structures import read_structures

TABLE_SUFFIXES = (".csv", ".json")
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".extxyz", ".xyz", ".json")
SAMPLE_BATCH = 100


@dataclass(frozen=True)
class ScreenRow:
    """One structure's way through the tiers. Energies eV/atom; None where a tier did not reach it.

    Attributes:
        name: File name (`#i` for a frame of a multi-frame file) or the sample's index and formula.
        tier: The last tier reached: "funnel" (rejected there), "cheap" (estimated, not relaxed) or "relaxed".
        funnel: "passed", or the funnel's filter and reason.
        cheap_e_hull, cheap_e_hull_std: The cheap tier's estimate at the input geometry.
        relaxed_because: Why the relaxation tier took it ("margin", "top_fraction", "floor" or "all").
        e_hull, e_hull_std: After relaxation, against the hull.
        reason: Why a reached tier gave no number.
    """

    name: str
    formula: str
    n_atoms: int
    tier: str
    funnel: str
    cheap_e_hull: float | None = None
    cheap_e_hull_std: float | None = None
    relaxed_because: str | None = None
    energy_per_atom: float | None = None
    energy_per_atom_std: float | None = None
    e_hull: float | None = None
    e_hull_std: float | None = None
    n_steps: int | None = None
    converged: bool | None = None
    reason: str | None = None


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def check_out(out: Path) -> Path:
    """The table path, checked before any work.

    Raises:
        InputError: wrong suffix, already there, or its folder missing.
    """
    out = Path(out)
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(f"{out}: the table must end with .csv or .json")
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new --out (nothing is overwritten)")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such folder for --out; create it first")
    return out


def expand_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files as given, and the structure files of any folder (sorted by name).

    Raises:
        InputError: a folder holds no structure file.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file()
                and (
                    p.suffix.lower() in STRUCTURE_SUFFIXES or p.name.upper().startswith(("POSCAR", "CONTCAR"))
                )
            )
            if not found:
                raise InputError(f"{path}: the folder holds no CIF, POSCAR, extxyz or JSON structure file")
            out.extend(found)
        else:
            out.append(path)
    return out


def campaign_setting(*, config_path: Path | None, workdir: Path | None) -> tuple[CampaignConfig, Path | None]:
    """The campaign config, from `--config` or from the campaign in `--workdir` (exactly one of them).

    Raises:
        InputError: neither or both given, no campaign in the workdir, or an invalid config.
    """
    if (config_path is None) == (workdir is None):
        raise InputError(
            "give --config FILE (the emulator's own hull of known crystals) or --workdir DIR (a campaign's hull)"
        )
    if config_path is not None:
        return load_config(config_path), None
    # deferred: each path loads only what it uses (the store, the diffusion model, torch for screening)
    from loop.store import CampaignStore

    assert workdir is not None
    if not CampaignStore.exists_in(workdir):
        raise InputError(
            f"{workdir}: holds no matloop campaign; give a campaign's --workdir or --config FILE"
        )
    store = CampaignStore.in_workdir(workdir)
    try:
        stored = store.get_meta("config")
    finally:
        store.close()
    if not stored:
        raise InputError(f"{workdir}: the campaign has no stored config yet; run it first or give --config")
    return validate_config(stored, source=f"{workdir} (stored config)"), Path(workdir)


def sample(config: CampaignConfig, *, n: int, seed: int) -> list[tuple[str, Structure]]:
    """`n` crystals from the shipped diffusion model, split evenly over the config's chemical systems (the
    campaign-free path of `matloop generate`)."""
    # deferred: each path loads only what it uses (the store, the diffusion model, torch for screening)
    from generator.diffusion import iter_sample_batches, parse_conditions
    from generator.diffusion.sampler import SamplingOptions
    from loop.runtime.progress import progress

    systems = config.chemical_systems
    out: list[tuple[str, Structure]] = []
    with progress(total=n, what="generate") as bar:
        for k, system in enumerate(systems):
            share = n // len(systems) + (1 if k < n % len(systems) else 0)
            batches = iter_sample_batches(
                n=share,
                conditions=parse_conditions([f"chemical_system={system}"]),
                seed=seed + k,
                options=SamplingOptions(batch_size=SAMPLE_BATCH),
            )
            for batch in batches:
                for s in batch:
                    out.append((f"{len(out):06d}_{s.composition.reduced_formula}", s))
                bar.update(len(batch))
    return out


def emulator_hull(config: CampaignConfig, *, executor: Any) -> Any:
    """The emulator's own hull: the known crystals of the chemical systems relaxed by the pretrained emulator."""
    # deferred: each path loads only what it uses (the store, the diffusion model, torch for screening)
    from loop.runtime.progress import progress
    from loop.science.hull import HullEntry, OracleHull
    from loop.work.references import reference_pool
    from loop.work.screening import relax_structures

    known = reference_pool(config)
    with progress(total=len(known), what="relax known crystals (hull)") as bar:
        results = relax_structures(
            config,
            structures=[k.structure for k in known],
            checkpoint=None,
            executor=executor,
            progress=bar.update,
        )
    return OracleHull.from_entries(
        HullEntry(entry_id=k.id, composition=k.structure.composition, energy_per_atom=r["energy_per_atom"])
        for k, r in zip(known, results, strict=True)
        if not r["collapsed"] and math.isfinite(r["energy_per_atom"])
    )


@dataclass(frozen=True)
class Screened:
    """The rows of `screen_structures`, in input order, and the wall time of each step (s): "hull", "funnel",
    "cheap", "relax"."""

    rows: list[ScreenRow]
    seconds: dict[str, float]


def screen_structures(
    named: Sequence[tuple[str, Structure]],
    *,
    config: CampaignConfig,
    workdir: Path | None,
    relax_all: bool,
    executor: Any,
) -> Screened:
    """Every structure of `named` through the funnel, the cheap tier and the relaxation of the promising share
    (`config.screening`; `relax_all` relaxes every funnel survivor)."""
    # deferred: each path loads only what it uses (the store, the diffusion model, torch for screening)
    from generator.base import Candidate
    from loop.runtime.progress import progress
    from loop.runtime.screening_tiers import cheap_estimates, relaxed_share
    from loop.science.funnel import Funnel, KnownIndex
    from loop.views.known_index import known_index
    from loop.views.oracle_hull import current_hull
    from loop.work.screening import relax_structures

    checkpoint: Path | None = None
    seconds: dict[str, float] = {}
    started = time.time()
    if workdir is not None:
        # deferred: each path loads only what it uses (the store, the diffusion model, torch for screening)
        from loop.store import CampaignStore

        store = CampaignStore.in_workdir(workdir)
        try:
            known = known_index(config, store=store, before_round=1 << 30)
            hull = current_hull(config, store)
            stored = store.get_meta("emulator_checkpoint")
            checkpoint = None if stored is None else workdir / stored
        finally:
            store.close()
        if not hull.stable_ids():
            raise InputError(
                f"{workdir}: the campaign has no oracle labels yet (round 0 unfinished); run it first"
            )
    else:
        known = KnownIndex.from_seed_data(
            matcher=config.generator.funnel.matcher, withhold=config.withholding
        )
        hull = emulator_hull(config, executor=executor)
    seconds["hull"], started = time.time() - started, time.time()
    batch = [Candidate(structure=s, source="input", parent=None) for _, s in named]
    with progress(total=len(batch), what="funnel") as bar:
        _, report = Funnel(config.generator.funnel, known=known, design=config.design).run(
            batch, chemical_systems=config.chemical_systems, progress=bar.update
        )
    seconds["funnel"], started = time.time() - started, time.time()
    rejected = {rej.index: f"{rej.filter}: {rej.reason}" for rej in report.rejections}
    passed = [i for i in range(len(named)) if i not in rejected]
    structures = [named[i][1] for i in passed]
    settings = config.screening
    with progress(total=len(structures), what="cheap tier") as bar:
        estimates = cheap_estimates(
            structures,
            hull=hull,
            emulator_settings=config.emulator.model_dump(),
            checkpoint=checkpoint,
            executor=executor,
            progress=bar.update,
            steps=settings.steps,
            fmax=config.emulator_training.relax_fmax,
        )
    seconds["cheap"], started = time.time() - started, time.time()
    if relax_all or not settings.enabled:
        why = {k: "all" for k, e in enumerate(estimates) if e.placed}
    else:
        # files have no generator: polymorphs compete per formula (`screening.per_formula`)
        groups = [("input", s.composition.reduced_formula) for s in structures]
        why = relaxed_share(estimates, settings=settings, groups=groups).why
    chosen = sorted(why)
    with progress(total=len(chosen), what="relax") as bar:
        relaxed = relax_structures(
            config,
            structures=[structures[k] for k in chosen],
            checkpoint=checkpoint,
            executor=executor,
            progress=bar.update,
        )
    seconds["relax"] = time.time() - started
    ev = hull.evaluate(
        [structures[k].composition for k in chosen],
        [r["energy_per_atom"] for r in relaxed],
        [r["energy_per_atom_std"] for r in relaxed],
    )
    after = {k: j for j, k in enumerate(chosen)}
    rows = []
    position = {i: k for k, i in enumerate(passed)}
    for i, (name, s) in enumerate(named):
        base = {"name": name, "formula": s.composition.reduced_formula, "n_atoms": len(s)}
        if i in rejected:
            rows.append(ScreenRow(**base, tier="funnel", funnel=rejected[i]))
            continue
        k = position[i]
        est = estimates[k]
        cheap = {
            "cheap_e_hull": _finite(est.e_hull),
            "cheap_e_hull_std": _finite(est.e_hull_std),
        }
        if k not in after:
            rows.append(ScreenRow(**base, tier="cheap", funnel="passed", **cheap, reason=est.reason))
            continue
        j = after[k]
        r = relaxed[j]
        e_hull = float(ev.e_above_hull[j])
        reason = ev.reasons[j] if ev.reasons else None
        if r["collapsed"]:
            e_hull, reason = float("nan"), "relaxation collapsed (atoms closer than 0.5 Å)"
        rows.append(
            ScreenRow(
                **base,
                tier="relaxed",
                funnel="passed",
                **cheap,
                relaxed_because=why[k],
                energy_per_atom=_finite(r["energy_per_atom"]),
                energy_per_atom_std=_finite(r["energy_per_atom_std"]),
                e_hull=_finite(e_hull),
                e_hull_std=_finite(float(ev.e_above_hull_std[j])) if math.isfinite(e_hull) else None,
                n_steps=int(r["n_steps"]),
                converged=bool(r["converged"]),
                reason=None if math.isfinite(e_hull) else reason or r.get("quarantined"),
            )
        )
    return Screened(rows=rows, seconds={k: round(v, 2) for k, v in seconds.items()})


def write_table(rows: Sequence[ScreenRow], out: Path) -> None:
    """The rows as CSV or JSON (by `out`'s suffix), written whole or not at all (a temporary file renamed)."""
    records = [asdict(r) for r in rows]
    if out.suffix.lower() == ".json":
        text = json.dumps(records, indent=1)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(ScreenRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in rec.items()} for rec in records)
        text = buffer.getvalue()
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_text(text)
    os.replace(tmp, out)


def run_screen(
    *,
    files: Sequence[Path],
    generate: int | None,
    config_path: Path | None,
    workdir: Path | None,
    out: Path,
    relax_all: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """`matloop screen`: check every input, screen, write the table; returns counts and times.

    Raises:
        InputError: bad input of any kind (before anything is computed or written).
    """
    if bool(files) == (generate is not None):
        raise InputError("give structure FILES (or folders) or --generate N, not both and not neither")
    out = check_out(out)
    config, workdir = campaign_setting(config_path=config_path, workdir=workdir)
    started = time.time()
    named = read_structures(expand_inputs(files)) if files else []
    # deferred: each path loads only what it uses (the store, the diffusion model, torch for screening)
    from loop.runtime.execution import make_executor

    seconds = {}
    with make_executor(config.execution) as executor:
        if generate is not None:
            named = sample(config, n=generate, seed=seed)
            seconds["generate"] = round(time.time() - started, 2)
        screened = screen_structures(
            named,
            config=config,
            workdir=workdir,
            relax_all=relax_all,
            executor=None if executor.inline else executor,
        )
    rows = screened.rows
    write_table(rows, out)
    counts = {tier: sum(1 for r in rows if r.tier == tier) for tier in ("funnel", "cheap", "relaxed")}
    return {
        "out": str(out),
        "n_in": len(rows),
        "n_funnel_rejected": counts["funnel"],
        "n_cheap_only": counts["cheap"],
        "n_relaxed": counts["relaxed"],
        "hull": "campaign oracle hull" if workdir is not None else "emulator hull of the known crystals",
        "seconds": round(time.time() - started, 1),
        "seconds_by_step": {**seconds, **screened.seconds},
    }


__all__ = ["ScreenRow", "Screened", "run_screen", "screen_structures", "write_table"]
