"""Build a labelled candidate pool of one chemical system for the acquisition benchmark.

    OMP_NUM_THREADS=1 python -m benchmarks.build_pool --system Li-Al --n 300 --oracle mlff \
        --workdir /tmp/pools/li-al-mlff --out benchmarks/pools/li-al_mlff.json.gz

What a campaign's rounds would see, computed once with the project's own stages on a campaign store:

1. references: every bundled known crystal of the system and its subsystems (`loop.work.references.reference_pool`), up to
   ``--max-atoms`` sites, labelled by the oracle;
2. candidates, batch after batch until ``--n`` distinct emulator-relaxed structures exist: the generator mix
   (`loop.work.generation`), the funnel (`loop.work.funnel`, which also removes copies of earlier
   batches), and the emulator screening relaxation (`loop.work.screening`, pretrained CHGNet ensemble);
3. every emulator-relaxed candidate labelled by the oracle (`loop.runtime.labelling.label_hashes`: one result per structure
   and settings in the store, so a stopped build resumes where it was, without computing anything twice);
4. ground truth: E_hull of every reference and candidate against the hull of all of them at the oracle's level of
   theory, and the verdicts of `loop.science.verdicts.StabilityRule` (stable / near-stable / hit) with ``--near-stable``.

``--from-pool FILE`` (or ``--from-workdir DIR`` of a build still running) labels the first ``--n`` candidates of
another pool with another oracle (e.g. GPAW on 60 candidates of the SevenNet pool) instead of generating new ones;
the references are labelled again with that oracle.

The pool file (gzipped JSON, `benchmarks.lib.pools`) holds, per reference and candidate: the structure the oracle labelled (the
emulator-relaxed geometry for candidates), the oracle-relaxed structure when the oracle relaxes, oracle energy
(eV/atom), forces (eV/Å) and stress (GPa), the pretrained emulator's per-member energies (eV/atom) at both
geometries, the source generator and its provenance, E_hull (eV/atom) and verdict; plus the settings, counts and
prevalence. Units: eV, eV/atom, eV/Å, GPa, Å.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from benchmarks.lib.pools import (
    POOL_FORMAT,
    compact_structure,
    pool_candidates,
    read_pool,
    structure_from_compact,
    write_pool,
)

DEFAULT_MIX = "diffusion=24,substitution=32,random_search=16"

log = logging.getLogger("build_pool")


def oracle_settings(kind: str, overrides: list[str], *, config_path: str | None = None) -> Any:
    """Validated oracle settings: `kind`'s defaults, or the `oracle` section of the campaign config `config_path`
    (e.g. `configs/demo.yaml`, the converged Li-Al GPAW settings), then KEY=VALUE overrides (YAML values)."""
    import yaml

    from loop.errors import InputError
    from loop.validation import validate_oracle_settings

    data: dict[str, Any] = {"kind": kind}
    if config_path is not None:
        try:
            section = (yaml.safe_load(Path(config_path).read_text()) or {}).get("oracle") or {}
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            raise InputError(
                f"--oracle-config {config_path}: cannot read an oracle section ({exc})"
            ) from None
        if section.get("kind", kind) != kind:
            raise InputError(
                f"--oracle-config {config_path} configures oracle kind {section['kind']!r}, not --oracle {kind!r}"
            )
        data.update(section)
    for item in overrides:
        key, _, value = item.partition("=")
        data[key.strip()] = yaml.safe_load(value)
    return validate_oracle_settings(data, source="--oracle-setting")


def pool_config(args: argparse.Namespace, settings: Any) -> Any:
    """The campaign config whose stages build the pool (inline execution, no tracking)."""
    from loop.config import validate_config

    mix = {k: int(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    elements = args.system.split("-")
    metals_only = all(_is_metal(e) for e in elements)
    data = {
        "name": f"pool-{args.system}-{settings.kind}",
        "seed": args.seed,
        "chemical_systems": [args.system],
        "near_stable": args.near_stable,
        "references": {"max_compounds": 0, "max_atoms": args.ref_max_atoms or args.max_atoms},
        "generator": {
            "mix": mix,
            "diffusion": {"steps": args.diffusion_steps},
            "substitution": {"max_parent_sites": args.max_atoms},
            "random_search": {"max_atoms": args.max_atoms},
            "funnel": {
                "max_atoms": args.max_atoms,
                "charge_balance": "off" if metals_only else "pymatgen",
            },
        },
        "emulator": {"kind": "chgnet_ensemble", "n_members": args.members},
        "emulator_training": {"relax_fmax": 0.1, "relax_steps": args.relax_steps},
        # A pool is the truth the tiers are measured against (benchmarks.tier_recall): relax every candidate.
        "screening": {"enabled": False},
        "oracle": settings.model_dump(),
        "tracking": {"enabled": False},
        "execution": {"kind": "inline"},
    }
    return validate_config(data, source="build_pool")


def _is_metal(symbol: str) -> bool:
    from pymatgen.core import Element

    return bool(Element(symbol).is_metal)


def add_references(config: Any, store: Any) -> list[str]:
    """Every bundled known crystal of the system (round 0, source "seed"); returns their hashes."""
    from loop.work.references import reference_pool

    if store.stage_done(0, "references"):
        return list(store.stage_result(0, "references")["hashes"])
    hashes = []
    with store.transaction():
        for known in reference_pool(config):
            hashes.append(
                store.add_structure(
                    known.structure,
                    source="seed",
                    parent=known.id,
                    round=0,
                    provenance={"material_id": known.id, "role": "reference", **known.properties},
                )
            )
        store.mark_stage_done(0, "references", {"hashes": hashes})
    return hashes


def run_batch(config: Any, store: Any, batch: int) -> None:
    """Generate, funnel and screen one batch (round `batch` of the store) with the campaign's own stages; each step
    resumes once done."""
    from loop.campaign import run_stage
    from loop.stages import funnel, generate, screen
    from loop.stages.base import StageContext

    ctx = StageContext(config=config, store=store, workdir=Path(store.path).parent, round=batch)
    for stage in (generate.STAGE, funnel.STAGE, screen.STAGE):
        if not store.stage_done(batch, stage.name):
            run_stage(stage, ctx)


def label_all(
    config: Any, store: Any, hashes: list[str], *, workdir: Path, what: str, workers: int = 1
) -> dict[str, Any]:
    """Label `hashes` with the pool's oracle through the store (resumes), logging progress; with `workers` > 1 on
    a local Dask cluster of that many single-threaded workers, as a campaign's label stage does."""
    from loop.runtime.execution import ExecutionConfig, make_executor
    from loop.runtime.labelling import label_hashes

    settings_hash = config.oracle.settings_hash()
    todo = [h for h in hashes if store.get_oracle_result(h, settings_hash) is None]
    done = [len(hashes) - len(todo)]
    started = time.time()

    def progress() -> None:
        done[0] += 1
        if done[0] % 10 == 0 or done[0] == len(hashes):
            log.info("%s: %d/%d labelled (%.0f s)", what, done[0], len(hashes), time.time() - started)

    execution = ExecutionConfig(kind="local" if workers > 1 and todo else "inline", n_workers=max(workers, 1))
    with make_executor(execution) as ex:
        return label_hashes(
            store,
            hashes,
            settings=config.oracle,
            workdir=workdir,
            round=None,
            submit=None if ex.inline else ex.submit,
            as_completed=None if ex.inline else ex.as_completed,
            on_commit=progress,
        )


def import_labels(store: Any, path: Path, *, settings_hash: str, oracle: str) -> int:
    """Store the labels of an earlier (partial) pool file made with the same oracle settings, for every structure of
    this build that it labelled, so a build can go on from a pool file alone (its workdir lost). Energies come back
    to the pool file's precision (1e-6 eV/atom). Returns the number of labels imported."""
    pool = read_pool(path)
    if pool["oracle"]["settings_hash"] != settings_hash:
        raise ValueError(f"{path}: labelled with other oracle settings ({pool['oracle']['settings_hash']})")
    n = 0
    for e in pool["entries"]:
        if e["oracle"]["status"] != "ok" or not store.has_structure(e["hash"]):
            continue
        if store.get_oracle_result(e["hash"], settings_hash) is not None:
            continue
        o = e["oracle"]
        relaxed = e.get("oracle_relaxed_structure")
        result = {
            "status": "ok",
            "energy": o["energy_per_atom"] * e["n_atoms"],
            "energy_per_atom": o["energy_per_atom"],
            "forces": o["forces"],
            "stress": o["stress"],
            "wall_time": o.get("wall_time") or 0.0,
            "final_structure": None if relaxed is None else structure_from_compact(relaxed).as_dict(),
            "metadata": {
                "relax_converged": o.get("relax_converged"),
                "relax_steps_taken": o.get("relax_steps"),
                "imported_from": path.name,
            },
        }
        store.add_oracle_result(e["hash"], oracle=oracle, settings_hash=settings_hash, result=result)
        n += 1
    return n


def member_energies(config: Any, structures: list[Structure]) -> list[list[float]]:
    """Pretrained emulator energies per member, eV/atom: one list of K values per structure."""
    from loop.runtime.tasks import load_emulator

    if not structures:
        return []
    model = load_emulator(config.emulator, None)
    pred = model.predict(structures, forces=False, stress=False)
    return np.round(np.asarray(pred.member_energy_per_atom, dtype=float).T, 6).tolist()


def oracle_relaxed(store: Any, h: str, stored: Any) -> Structure | None:
    """The structure the oracle's energy of `h` belongs to when it is not `h` itself (the oracle relaxed it)."""
    final = stored.final_hash
    return store.get_structure(final) if stored.ok and final and final != h else None


def ground_truth(entries: list[dict[str, Any]], *, near_stable: float) -> dict[str, Any]:
    """E_hull (eV/atom) and verdict of every entry against the hull of all labelled entries; summary counts."""
    from loop.science.hull import HullEntry, OracleHull
    from loop.science.verdicts import StabilityRule, Verdict

    rule = StabilityRule(near_stable=near_stable)
    ok = [e for e in entries if e["oracle"]["status"] == "ok"]
    hull = OracleHull.from_entries(
        HullEntry(
            entry_id=e["hash"], composition=e["formula"], energy_per_atom=e["oracle"]["energy_per_atom"]
        )
        for e in ok
    )
    e_hull = hull.entry_e_above_hull()
    for e in entries:
        value = e_hull.get(e["hash"])
        e["e_hull"] = None if value is None or not math.isfinite(value) else round(float(value), 6)
        e["verdict"] = str(rule.classify(e["e_hull"]))
    cands = [e for e in entries if e["role"] == "candidate"]
    placed = [e for e in cands if e["verdict"] != Verdict.UNPLACED]
    n_stable = sum(1 for e in placed if e["verdict"] == Verdict.STABLE)
    n_near = sum(1 for e in placed if e["verdict"] == Verdict.NEAR_STABLE)
    by_source: dict[str, dict[str, int]] = {}
    for e in placed:
        d = by_source.setdefault(e["source"], {"candidates": 0, "hits": 0})
        d["candidates"] += 1
        d["hits"] += int(rule.is_hit(e["e_hull"]))
    return {
        "near_stable": near_stable,
        "hit_threshold": rule.hit_threshold,
        "n_candidates": len(cands),
        "n_labelled": len(placed),
        "n_failed": len(cands) - len(placed),
        "n_stable": n_stable,
        "n_near_stable": n_near,
        "n_hits": n_stable + n_near,
        "prevalence": (n_stable + n_near) / len(placed) if placed else None,
        "hull_phases": sorted(
            {e["formula"] for e in entries if e["verdict"] == Verdict.STABLE}, key=lambda f: (len(f), f)
        ),
        "hits_by_source": by_source,
    }


def _entry(
    *,
    h: str,
    role: str,
    structure: Structure,
    stored: Any,
    relaxed: Structure | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    oracle: dict[str, Any] = {"status": stored.status, "reason": stored.reason, "wall_time": stored.wall_time}
    entry: dict[str, Any] = {
        "hash": h,
        "role": role,
        "formula": structure.composition.reduced_formula,
        "n_atoms": len(structure),
        "structure": compact_structure(structure),
        **meta,
        "oracle": oracle,
    }
    if stored.ok:
        oracle.update(
            energy_per_atom=round(float(stored.energy_per_atom), 6),
            forces=np.round(np.asarray(stored.forces, dtype=float), 4).tolist(),
            stress=np.round(np.asarray(stored.stress, dtype=float), 4).tolist(),
            relax_converged=stored.metadata.get("relax_converged"),
            relax_steps=stored.metadata.get("relax_steps_taken"),
        )
        if relaxed is not None:
            entry["oracle_relaxed_structure"] = compact_structure(relaxed)
    return entry


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def build(args: argparse.Namespace) -> dict[str, Any]:
    from loop.store import CampaignStore

    settings = oracle_settings(args.oracle, args.oracle_setting, config_path=args.oracle_config)
    config = pool_config(args, settings)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store = CampaignStore.in_workdir(workdir)
    started = time.time()

    def label(hashes: list[str], *, what: str) -> dict[str, Any]:
        return label_all(config, store, hashes, workdir=workdir, what=what, workers=args.workers)

    try:
        ref_hashes = add_references(config, store)
        log.info("%d references", len(ref_hashes))
        borrowed = None
        cands: list[dict[str, Any]] = []
        if args.from_pool or args.from_workdir:
            cands, found, borrowed = borrowed_candidates(args)
            import_candidates(store, cands, found)

        def import_earlier() -> None:
            # Before every labelling: a batch generated again brings structures the earlier file has labels for.
            if args.labels_from:
                n = import_labels(
                    store,
                    Path(args.labels_from),
                    settings_hash=config.oracle.settings_hash(),
                    oracle=settings.kind,
                )
                log.info("%d labels imported from %s", n, args.labels_from)

        import_earlier()
        if not args.finish:
            label(ref_hashes, what="references")
        settings_hash = config.oracle.settings_hash()
        if args.finish:
            # A short pool: what is labelled so far, nothing generated or computed (besides the emulator energies).
            ref_hashes = [h for h in ref_hashes if store.get_oracle_result(h, settings_hash) is not None]
            everything = cands if borrowed is not None else pool_candidates(store)
            cands = [c for c in everything if store.get_oracle_result(c["hash"], settings_hash) is not None]
            cands = cands[: args.n]
        elif borrowed is None:
            batch = 1
            while True:
                cands = pool_candidates(store)
                import_earlier()
                # Label as batches come, so a build stopped early still leaves labelled candidates behind.
                label([c["hash"] for c in cands], what="candidates")
                if len(cands) >= args.n or batch > args.max_batches:
                    break
                if not store.stage_done(batch, "screen"):
                    log.info("batch %d: generating (have %d of %d candidates)", batch, len(cands), args.n)
                run_batch(config, store, batch)
                batch += 1
            cands = cands[: args.n]
        log.info("%d candidates", len(cands))
        results = label([c["hash"] for c in cands], what="candidates")
        ref_results = label(ref_hashes, what="references")
        if args.finish:
            log.info(
                "short pool (--finish): %d references, %d candidates labelled", len(ref_hashes), len(cands)
            )

        structures = store.get_structures([*ref_hashes, *[c["hash"] for c in cands]])
        entries = []
        ref_rows = {r.hash: r for r in store.structure_rows(where="source = 'seed'")}
        for h in ref_hashes:
            entries.append(
                _entry(
                    h=h,
                    role="reference",
                    structure=structures[h],
                    stored=ref_results[h],
                    relaxed=oracle_relaxed(store, h, ref_results[h]),
                    meta={"source": "seed", "provenance": ref_rows[h].provenance},
                )
            )
        for c in cands:
            meta = {k: c[k] for k in ("source", "parent", "provenance", "batch", "screen") if k in c}
            entries.append(
                _entry(
                    h=c["hash"],
                    role="candidate",
                    structure=structures[c["hash"]],
                    stored=results[c["hash"]],
                    relaxed=oracle_relaxed(store, c["hash"], results[c["hash"]]),
                    meta=meta,
                )
            )
        log.info("emulator member energies of %d structures", len(entries))
        at_input = member_energies(config, [structure_from_compact(e["structure"]) for e in entries])
        ok = [e for e in entries if "oracle_relaxed_structure" in e]
        at_relaxed = member_energies(
            config, [structure_from_compact(e["oracle_relaxed_structure"]) for e in ok]
        )
        for e, m in zip(entries, at_input, strict=True):
            e["emulator"] = {"member_energy_per_atom": m}
        for e, m in zip(ok, at_relaxed, strict=True):
            e["emulator"]["member_energy_per_atom_at_oracle_geometry"] = m
        summary = ground_truth(entries, near_stable=args.near_stable)
    finally:
        store.close()
    oracle_cls = _oracle_class(settings.kind)
    pool = {
        "format": POOL_FORMAT,
        "system": args.system,
        "created": datetime.date.today().isoformat(),
        "oracle": {
            "kind": settings.kind,
            "settings": settings.model_dump(),
            "settings_hash": settings.settings_hash(),
            "level_of_theory": oracle_cls.level_of_theory,
            "is_dft": oracle_cls.is_dft,
        },
        "emulator": {"settings": config.emulator.model_dump(), "model": "pretrained"},
        "build": {
            # Machine paths stay out of shipped files: the workdir and the output folder are placeholders.
            "command": "python -m benchmarks.build_pool "
            + " ".join(sys.argv[1:])
            .replace(str(workdir), "WORKDIR")
            .replace(str(Path(args.out).parent), "OUT"),
            "commit": _git_commit(),
            "generator_mix": config.generator.mix,
            "max_atoms": args.max_atoms,
            "ref_max_atoms": args.ref_max_atoms or args.max_atoms,
            "screen_relax_steps": args.relax_steps,
            "candidates_from": borrowed,
            "wall_time_s": round(time.time() - started, 1),
            "complete": not args.finish,
        },
        "summary": summary,
        "entries": entries,
    }
    write_pool(pool, Path(args.out))
    return summary


def _oracle_class(kind: str) -> Any:
    from oracle.base import get_oracle_class

    return get_oracle_class(kind)


def import_candidates(
    store: Any, cands: list[dict[str, Any]], structures: dict[str, Structure]
) -> list[dict[str, Any]]:
    """Add another build's candidates (dicts as from `pool_candidates`) to this store, as they were."""
    with store.transaction():
        for c in cands:
            store.add_structure(
                structures[c["hash"]],
                source="relaxed",
                parent=c.get("parent"),
                round=c.get("batch"),
                provenance={"pool_source": c["source"]},
                hash=c["hash"],
            )
    return cands


def borrowed_candidates(
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], dict[str, Structure], dict[str, Any]]:
    """The first `--n` candidates with at most `--max-atoms` sites, in generation order, of another pool file or
    of another build's workdir.

    Batches are independent draws of the same generator mix, so the first n are a fair sample of the pool, and a
    build that resumes after the other build grew takes the same ones plus the new ones.
    """
    from loop.store import CampaignStore

    if args.from_pool:
        pool = read_pool(Path(args.from_pool))
        cands = [e for e in pool["entries"] if e["role"] == "candidate" and e["n_atoms"] <= args.max_atoms][
            : args.n
        ]
        keys = ("hash", "source", "parent", "provenance", "batch", "screen")
        structures = {e["hash"]: structure_from_compact(e["structure"]) for e in cands}
        origin = {"pool": Path(args.from_pool).name, "oracle": pool["oracle"]["kind"]}
        return [{k: e[k] for k in keys if k in e} for e in cands], structures, origin
    other = CampaignStore.in_workdir(Path(args.from_workdir))
    try:
        everything = pool_candidates(other)
        found = other.get_structures([c["hash"] for c in everything])
        cands = [c for c in everything if len(found[c["hash"]]) <= args.max_atoms][: args.n]
        structures = {c["hash"]: found[c["hash"]] for c in cands}
    finally:
        other.close()
    return cands, structures, {"workdir_of": "another build_pool run of the same system"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", required=True, help="chemical system, e.g. Li-Al")
    p.add_argument("--n", type=int, default=300, help="candidates in the pool")
    p.add_argument("--oracle", default="mlff", help="oracle kind (mlff, gpaw, ...)")
    p.add_argument(
        "--oracle-config", help="take the oracle settings from this campaign config's oracle section"
    )
    p.add_argument("--oracle-setting", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="pool file to write (.json.gz)")
    p.add_argument("--workdir", required=True, help="campaign store and oracle files (resumable)")
    p.add_argument(
        "--from-pool", help="label the first --n candidates of this pool file instead of generating"
    )
    p.add_argument("--from-workdir", help="label the first --n candidates of another build's workdir instead")
    p.add_argument(
        "--labels-from",
        help="reuse the labels of an earlier (partial) pool file with the same oracle settings",
    )
    p.add_argument(
        "--near-stable", type=float, default=0.05, help="eV/atom above the hull that still is a hit"
    )
    p.add_argument("--mix", default=DEFAULT_MIX, help="candidates per generator and batch")
    p.add_argument("--max-atoms", type=int, default=16, help="largest candidate cell, sites")
    p.add_argument("--ref-max-atoms", type=int, help="largest reference cell, sites (default: --max-atoms)")
    p.add_argument(
        "--max-batches", type=int, default=40, help="stop generating after this many batches (a short pool)"
    )
    p.add_argument("--members", type=int, default=4, help="emulator ensemble members")
    p.add_argument("--relax-steps", type=int, default=300, help="emulator screening relaxation steps")
    p.add_argument("--diffusion-steps", type=int, default=100, help="diffusion sampler steps")
    p.add_argument(
        "--finish",
        action="store_true",
        help="write the pool from what is labelled so far, without generating or labelling more",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="oracle labels in parallel (local Dask workers)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    from loop.errors import InputError

    try:
        summary = build(args)
    except InputError as exc:
        print(f"build_pool: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
