"""Build the GPAW-labelled Li-Al set that `benchmarks.emulator_update` replays.

Structures (ordered as a campaign would meet them, each tagged with a `round`):
* round 0, references: the bundled mp_20 Li-Al crystals, the Li-Al rows of an mpts_52 copy given with
  `--mpts52` (read here only; the shipped set does not depend on it), ASE's fcc/bcc/hcp Li and Al, and B32 LiAl;
* rounds 1..: candidates from the project's generators (substitution, random search, diffusion) relaxed with
  the pretrained CHGNet ensemble, interleaved with strained and rattled copies of references.

Each structure is labelled with the project's GPAW oracle (PW 400 eV, k-point density 4 Å⁻¹,
Marzari-Vanderbilt 0.1 eV, single points) and appended to an extxyz file as soon as it is done, so an interrupted
build keeps what it finished and a rerun skips it (the oracle also caches each result in its work dir).

Usage:
    python -m benchmarks.emulator_gpaw_set --workdir WORK --out WORK/lial_gpaw.extxyz [--mpts52 DIR]
    python -m benchmarks.emulator_gpaw_set --workdir WORK --out WORK/tail.extxyz --from-last WORK/lial_gpaw.extxyz
    python -m benchmarks.emulator_gpaw_set --workdir WORK --out benchmarks/data/lial_gpaw.extxyz.gz \
        --merge WORK/lial_gpaw.extxyz WORK/tail.extxyz

Units: energy eV, forces eV/Å, stress GPa (Voigt, ASE sign), lengths Å.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from benchmarks.lib.cells import b32_lial

LI_AL = frozenset({"Li", "Al"})
PLAN_MAX_ATOMS = 10
ORACLE = {
    "kind": "gpaw",
    "cutoff": 400.0,
    # 4 Å⁻¹, not the converged 6: the set was built on a shared, heavily loaded machine. It is internally
    # consistent, which is all the emulator comparison needs.
    "kpoint_density": 4.0,
    "smearing": "marzari-vanderbilt",
    "smearing_width": 0.1,
    "timeout_s": 3600.0,
}


def _elements(formula: str) -> set[str]:
    return set(re.findall(r"[A-Z][a-z]?", formula))


def _primitive(structure: Structure) -> Structure:
    prim = structure.get_primitive_structure(tolerance=0.05)
    return prim.get_reduced_structure("niggli")


def _csv_rows(path: Path, source: str) -> list[tuple[str, str, Structure]]:
    table = pd.read_csv(path)
    rows = []
    for ident, formula, cif in zip(table["material_id"], table["pretty_formula"], table["cif"], strict=True):
        if _elements(str(formula)) and _elements(str(formula)) <= LI_AL:
            rows.append((f"{source}:{ident}", source, _primitive(Structure.from_str(cif, fmt="cif"))))
    return rows


def references(mpts52: Path | None) -> list[tuple[str, str, Structure]]:
    """Bundled and elemental Li-Al crystals (id, source, structure), primitive and Niggli-reduced."""
    from ase.build import bulk

    bundled = Path(__file__).resolve().parent.parent / "generator" / "data" / "mp_20"
    rows = []
    for split in ("train", "val"):
        rows += _csv_rows(bundled / f"{split}.csv.gz", "mp_20")
    if mpts52 is not None:
        for split in ("train", "val", "test"):
            rows += _csv_rows(mpts52 / f"{split}.csv.gz", "mpts_52")
    adaptor = AseAtomsAdaptor()
    # Lattice constants (Å) near the PBE equilibrium of each polymorph; ASE knows only the ground states.
    lattices = {
        ("Li", "bcc"): {"a": 3.44},
        ("Li", "fcc"): {"a": 4.33},
        ("Li", "hcp"): {"a": 3.08, "c": 5.03},
        ("Al", "fcc"): {"a": 4.04},
        ("Al", "bcc"): {"a": 3.24},
        ("Al", "hcp"): {"a": 2.86, "c": 4.67},
    }
    for (element, kind), params in lattices.items():
        atoms = bulk(element, kind, **params)
        rows.append((f"ase:{element}-{kind}", "ase", adaptor.get_structure(atoms)))
    rows.append(("proto:LiAl-B32", "prototype", _primitive(b32_lial(6.37))))
    return rows


def generated(known: list[tuple[str, str, Structure]], *, seed: int) -> list[tuple[str, str, Structure]]:
    """Candidates of the project's three generators for Li-Al (unrelaxed)."""
    from generator.base import GenerationContext, KnownStructure
    from generator.random_search import RandomSearchGenerator, RandomSearchSettings
    from generator.seeds import load_seeds
    from generator.substitution import SubstitutionGenerator, SubstitutionSettings

    parents = load_seeds(chemical_systems=["Li-Al"], max_foreign_elements=2, limit=200, seed=seed)
    parents += [KnownStructure(id=i, structure=s) for i, _, s in known]
    context = GenerationContext(known=parents, chemical_systems=["Li-Al"])
    out = []
    subst = SubstitutionGenerator(settings=SubstitutionSettings(max_candidates_per_parent=2))
    for k, cand in enumerate(subst.generate(n=14, context=context, seed=seed)):
        out.append((f"substitution:{k}:{cand.parent}", "substitution", cand.structure))
    rs = RandomSearchGenerator(settings=RandomSearchSettings(max_atoms=8, max_formula_atoms=8))
    for k, cand in enumerate(rs.generate(n=8, context=context, seed=seed)):
        out.append((f"random_search:{k}", "random_search", cand.structure))
    try:
        from generator.diffusion.generator import DiffusionGenerator, DiffusionSettings

        diff = DiffusionGenerator(DiffusionSettings(steps=60))
        for k, cand in enumerate(diff.generate(n=6, context=context, seed=seed)):
            out.append((f"diffusion:{k}", "diffusion", cand.structure))
    except Exception as err:  # the set is still useful without diffusion samples
        print(f"diffusion skipped: {err}", flush=True)
    return out


def relaxed_with_emulator(rows: list[tuple[str, str, Structure]]) -> list[tuple[str, str, Structure]]:
    from emulator.chgnet_ensemble import ChgnetEnsemble, ChgnetEnsembleSettings

    emu = ChgnetEnsemble(settings=ChgnetEnsembleSettings(n_members=2, design="bootstrap_only"))
    out = []
    for ident, source, s in rows:
        try:
            result = emu.relax([s], fmax=0.1, steps=60)[0]
        except Exception as err:
            print(f"skip {ident}: {err}", flush=True)
            continue
        out.append((ident, source, _primitive(result.structure)))
    return out


def perturbed(refs: list[tuple[str, str, Structure]], *, seed: int) -> list[tuple[str, str, Structure]]:
    """Strained (isotropic ±4 %, one shear) and rattled (σ 0.06 Å) copies of small references."""
    rng = np.random.default_rng(seed)
    out = []
    for ident, _, s in refs:
        if len(s) > 6:
            continue
        strain = float(rng.choice([-0.04, 0.04]))
        out.append((f"strain{strain:+.2f}:{ident}", "strained", s.copy().apply_strain(strain, inplace=False)))
        if len(s) >= 2:
            rattled = s.copy()
            rattled.perturb(0.06)
            out.append((f"rattle:{ident}", "rattled", rattled))
    return out


def _dedup(rows: list[tuple[str, str, Structure]], max_atoms: int) -> list[tuple[str, str, Structure]]:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    kept: list[tuple[str, str, Structure]] = []
    for row in rows:
        s = row[2]
        if len(s) > max_atoms or not set(s.composition.chemical_system.split("-")) <= LI_AL:
            continue
        if row[1] in {"strained", "rattled"} or not any(
            k[1] not in {"strained", "rattled"}
            and k[2].composition.reduced_formula == s.composition.reduced_formula
            and matcher.fit(k[2], s)
            for k in kept
        ):
            kept.append(row)
    return kept


def plan(*, mpts52: Path | None, max_atoms: int, seed: int) -> list[dict]:
    """All structures with their round: references first, then rounds of 6 mixed candidates.

    Structures are drawn and ordered with a 10-atom bound, then those above `max_atoms` are dropped (keeping the
    order), so a smaller bound gives a subset of the same sequence.
    """
    refs = _dedup(references(mpts52), PLAN_MAX_ATOMS)
    cands = _dedup(refs + relaxed_with_emulator(generated(refs, seed=seed)), PLAN_MAX_ATOMS)[len(refs) :]
    extra = perturbed(refs, seed=seed)
    rng = np.random.default_rng(seed)
    later = cands + extra
    ordered = [later[i] for i in rng.permutation(len(later))]
    refs = [r for r in refs if len(r[2]) <= max_atoms]
    ordered = [r for r in ordered if len(r[2]) <= max_atoms]
    rows = [{"id": i, "source": src, "round": 0, "structure": s.as_dict()} for i, src, s in refs]
    for position, (ident, src, s) in enumerate(ordered):
        rows.append({"id": ident, "source": src, "round": 1 + position // 6, "structure": s.as_dict()})
    return rows


def label_all(rows: list[dict], *, workdir: Path, out: Path, done_elsewhere: Path | None = None) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from oracle import GPAWSettings, make_oracle

    oracle = make_oracle(GPAWSettings(**ORACLE))
    done = set()
    if out.exists():
        from ase.io import iread

        done = {atoms.info["id"] for atoms in iread(str(out), index=":")}
    for row in rows:
        if row["id"] in done or _labelled_in(done_elsewhere, row["id"]):
            continue
        s = Structure.from_dict(row["structure"])
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", row["id"])
        t0 = time.perf_counter()
        result = oracle.label(s, workdir=workdir / "oracle" / safe)
        wall = time.perf_counter() - t0
        if not result.ok:
            print(f"FAILED {row['id']}: {result.reason}", flush=True)
            continue
        atoms = AseAtomsAdaptor().get_atoms(s)
        atoms.info.update(
            {
                "id": row["id"],
                "source": row["source"],
                "round": int(row["round"]),
                "stress_gpa": np.asarray(result.stress, dtype=float),
                "wall_time_s": round(float(result.wall_time), 1),
            }
        )
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(result.energy), forces=np.asarray(result.forces, dtype=float)
        )
        write(str(out), atoms, format="extxyz", append=True)
        print(
            f"{row['id']:40s} n={len(s):2d} E={result.energy_per_atom:.4f} eV/atom "
            f"fmax={np.abs(result.forces).max():.3f} eV/Å t={wall:.0f}s",
            flush=True,
        )


def _labelled_in(path: Path | None, ident: str) -> bool:
    """Whether another labelling process already wrote `ident` to its extxyz file."""
    if path is None or not path.exists():
        return False
    from ase.io import iread

    return any(atoms.info["id"] == ident for atoms in iread(str(path), index=":"))


def merge(parts: list[Path], *, rows: list[dict], out: Path) -> int:
    """Write the frames of several labelling processes to gzipped `out`, in plan order; returns the count."""
    from ase.io import iread, write

    frames = {
        atoms.info["id"]: atoms for part in parts if part.exists() for atoms in iread(str(part), index=":")
    }
    ordered = [frames[row["id"]] for row in rows if row["id"] in frames]
    with gzip.open(out, "wt") as handle:
        write(handle, ordered, format="extxyz")
    return len(ordered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, required=True, help="extxyz file (appended to; gzip it afterwards)"
    )
    parser.add_argument(
        "--mpts52", type=Path, default=None, help="folder with mpts_52 {train,val,test}.csv.gz"
    )
    parser.add_argument("--max-atoms", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--merge", type=Path, nargs="*", default=None, help="only merge these extxyz files into gzipped --out"
    )
    parser.add_argument(
        "--from-last",
        type=Path,
        default=None,
        help="label the candidates last-round-first into --out, skipping those in this other process's file",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    plan_file = args.workdir / "plan.json"
    if plan_file.exists():
        rows = json.loads(plan_file.read_text())
    else:
        rows = plan(mpts52=args.mpts52, max_atoms=args.max_atoms, seed=args.seed)
        plan_file.write_text(json.dumps(rows))
    print(f"{len(rows)} structures planned", flush=True)
    if args.merge:
        print(f"{merge(args.merge, rows=rows, out=args.out)} labelled structures written to {args.out}")
        return
    if args.from_last is not None:
        rows = [row for row in reversed(rows) if row["round"] > 0]
    label_all(rows, workdir=args.workdir, out=args.out, done_elsewhere=args.from_last)
    with open(args.out, "rb") as src, gzip.open(f"{args.out}.gz", "wb") as dst:
        dst.write(src.read())


if __name__ == "__main__":
    main()
