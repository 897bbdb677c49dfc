"""Quality of the shipped diffusion checkpoint: speed, validity, uniqueness, novelty, SUN-like rate.

    OMP_NUM_THREADS=1 python -m benchmarks.generator_quality --n 1000 --threads 2 --sun-subset 150

Structural validity: all periodic distances > 0.5 Å and 0.1-200 Å³/atom. Compositional validity: SMACT-style
charge balance over common oxidation states (all-metal compositions count as valid); by default the sampler's
constrained type decoding is on, `--no-charge-balance` measures the raw model. Uniqueness: among valid
samples, StructureMatcher within reduced-formula buckets. Novelty: no StructureMatcher match among mp_20 train
crystals of the same reduced formula. SUN-like: on a random subset of valid samples, relax briefly with
CHGNet 0.3.0 (cell + positions, `--relax-steps` FIRE steps), then E_hull against a CHGNet hull (static CHGNet
energies of known crystals); counts samples that are
unique, novel and ≤ 0.1 eV/atom above that hull. Prints one JSON object.

The hull uses the mp_20 train+val crystals (both bundled) in each sample's chemical (sub)systems; elements with
no elemental crystal there get a CHGNet-relaxed simple-prototype reference (see `_prototype_energy`), which
makes the hull incomplete (E_hull optimistic) — MP's full hull is not available offline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import subprocess
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.lib.cells import bcc, fcc, hcp
from benchmarks.lib.timing import Stopwatch, load_average
from generator.diffusion.sampler import DEFAULT_GUIDANCE

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sun-subset", type=int, default=150, help="0 skips the CHGNet part")
    parser.add_argument("--relax-steps", type=int, default=60)
    parser.add_argument("--min-distance", type=float, default=0.7, help="Å; 0 = raw model coordinates")
    parser.add_argument("--corrector-snr", type=float, default=0.1)
    parser.add_argument("--type-temperature", type=float, default=1.0)
    parser.add_argument(
        "--guidance", type=float, default=DEFAULT_GUIDANCE, help="guidance scale (matters with --condition)"
    )
    parser.add_argument(
        "--no-species-prior", action="store_true", help="do not cap the number of elements per crystal"
    )
    parser.add_argument(
        "--condition", action="append", default=[], help="KEY=VALUE or KEY=LO:HI (repeatable); default none"
    )
    parser.add_argument(
        "--no-charge-balance", action="store_true", help="raw model types (no constrained type decoding)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the samples (extxyz) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pymatgen.analysis.structure_matcher import StructureMatcher

    from generator.diffusion import sample_structures
    from generator.diffusion.metrics import charge_balanced, novel_mask, structurally_valid, unique_mask

    result: dict[str, object] = {
        "load_before": load_average(),
        "n": args.n,
        "steps": args.steps,
        "threads": args.threads,
        "min_distance": args.min_distance,
        "corrector_snr": args.corrector_snr,
        "charge_balance_decoding": not args.no_charge_balance,
        "type_temperature": args.type_temperature,
        "conditions": args.condition,
        "guidance": args.guidance,
        "species_prior": not args.no_species_prior,
    }
    watch = Stopwatch()
    from generator.diffusion import parse_conditions

    samples = sample_structures(
        n=args.n,
        conditions=parse_conditions(args.condition),
        checkpoint=args.checkpoint,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        min_distance=args.min_distance,
        corrector_snr=args.corrector_snr,
        charge_balance=not args.no_charge_balance,
        type_temperature=args.type_temperature,
        species_prior=not args.no_species_prior,
        guidance_scale=args.guidance,
    )
    result["sampling_s"] = round(watch.wall_s(), 1)
    result["sampling_cpu_s"] = round(watch.cpu_s(), 1)
    result["load_after"] = load_average()
    if args.out:
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        write(args.out, [AseAtomsAdaptor.get_atoms(s) for s in samples], format="extxyz")

    valid = [structurally_valid(s) for s in samples]
    comp = [charge_balanced(s.composition) for s in samples]
    result["structural_validity"] = sum(valid) / len(samples)
    result["compositional_validity"] = sum(comp) / len(samples)
    result["n_valid"] = sum(valid)
    vs = [s for s, ok in zip(samples, valid, strict=True) if ok]
    t1 = time.monotonic()
    matcher = StructureMatcher()
    uniq = unique_mask(vs, matcher=matcher)
    result["uniqueness_of_valid"] = sum(uniq) / max(1, len(vs))
    wanted = {s.composition.reduced_formula for s in vs}
    ref = mp20_structures("train")
    hull_ref = ref + mp20_structures("val")
    ref_in = [s for s in ref if s.composition.reduced_formula in wanted]
    novel = novel_mask(vs, ref_in, matcher=matcher)
    result["novelty_of_valid"] = sum(novel) / max(1, len(vs))
    result["valid_unique_novel"] = sum(u and n for u, n in zip(uniq, novel, strict=True)) / len(samples)
    result["matching_s"] = round(time.monotonic() - t1, 1)
    sizes = defaultdict(int)
    for s in samples:
        sizes[len(s.composition.elements)] += 1
    result["n_elements_histogram"] = dict(sorted(sizes.items()))

    if args.sun_subset > 0:
        result.update(sun_like(vs, uniq, novel, hull_ref, args))
    result["git_commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(json.dumps(result, indent=1))


def _prototype_energy(element: str, opt) -> float:
    """Lowest CHGNet energy per atom (eV) over relaxed fcc/bcc/hcp cells of `element` (cached on disk).

    Used only for elements with no elemental crystal in mp_20 train+val; for elements whose ground state is
    not a close-packed/bcc metal (B, S, Mn) this reference is too high, which biases E_hull low.
    """
    from pymatgen.core import Element

    from generator.diffusion.data import cache_dir

    cache = cache_dir() / "prototype_references.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if element in known:
        return float(known[element])
    r = float(Element(element).atomic_radius or 1.5)
    # Touching spheres of the atomic radius: fcc a = 2√2 r, bcc a = 4r/√3, hcp a = 2r (ideal c/a).
    cells = [fcc(element, 2 * 2**0.5 * r), bcc(element, 4 * r / 3**0.5), hcp(element, 2 * r, c_over_a=1.635)]
    best = float("inf")
    for cell in cells:
        try:
            res = opt.relax(cell.get_primitive_structure(), steps=80, fmax=0.05, verbose=False)
            best = min(best, float(res["trajectory"].energies[-1]) / len(res["final_structure"]))
        except Exception:
            continue
    known[element] = best
    cache.write_text(json.dumps(known))
    return best


def mp20_structures(split: str) -> list:
    """The bundled mp_20 crystals of `split` as pymatgen structures."""
    from generator.diffusion.data import load_mp20, to_structure

    data = load_mp20(split)
    off = data.offsets.tolist()
    return [
        to_structure(data.z[a:b].tolist(), data.frac[a:b].numpy(), data.lattice[i].numpy())
        for i, (a, b) in enumerate(itertools.pairwise(off))
    ]


def relax_briefly(structures, *, opt, steps: int) -> list:
    """Relax each structure with CHGNet (cell + positions, fmax 0.1 eV/Å, at most `steps` FIRE steps).

    Returns per structure (relaxed structure, energy per atom in eV), or None where the relaxation failed.
    """
    out = []
    for s in structures:
        try:
            r = opt.relax(s, steps=steps, fmax=0.1, verbose=False)
            final = r["final_structure"]
            out.append((final, float(r["trajectory"].energies[-1]) / len(final)))
        except Exception:  # a sample CHGNet cannot relax simply gets no verdict
            out.append(None)
    return out


def hull_distances(relaxed, references, *, model, opt) -> tuple[list[float], dict[str, object]]:
    """Energy above a CHGNet hull (eV/atom) for (structure, energy per atom) pairs.

    The hull holds static CHGNet energies of the `references` inside the samples' chemical (sub)systems, plus
    `_prototype_energy` references for elements with no elemental crystal there; a sample whose elements
    still lack a reference gets NaN. Also returns how many reference crystals were used and which elements
    needed a prototype.
    """
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    def elements(s) -> frozenset[str]:
        return frozenset(e.symbol for e in s.composition.elements)

    systems = [elements(s) for s, _ in relaxed]
    need = [r for r in references if any(elements(r) <= sys_ for sys_ in set(systems))]
    preds = model.predict_structure(need, task="e", batch_size=4) if need else []
    preds = [preds] if isinstance(preds, dict) else preds  # CHGNet returns a bare dict for one structure
    entries = [PDEntry(s.composition, float(p["e"]) * len(s)) for s, p in zip(need, preds, strict=True)]
    have = {e.composition.elements[0].symbol for e in entries if len(e.composition.elements) == 1}
    missing = sorted(set().union(*systems) - have) if systems else []
    for el in missing:
        energy = _prototype_energy(el, opt)
        if math.isfinite(energy):
            entries.append(PDEntry(Composition(el), energy))
    out = []
    for (s, e_pa), els in zip(relaxed, systems, strict=True):
        local = [e for e in entries if {x.symbol for x in e.composition.elements} <= els]
        if {e.composition.elements[0].symbol for e in local if len(e.composition.elements) == 1} != els:
            out.append(float("nan"))
            continue
        pd = PhaseDiagram(local)
        out.append(float(pd.get_e_above_hull(PDEntry(s.composition, e_pa * len(s)), allow_negative=True)))
    return out, {"n_references": len(need), "prototype_elements": missing}


def sun_like(vs, uniq, novel, ref, args) -> dict[str, object]:
    """Relax a subset with CHGNet and place it on a CHGNet hull of the training crystals."""
    from chgnet.model import CHGNet, StructOptimizer

    torch.set_num_threads(1)
    t0 = time.monotonic()
    rng = random.Random(args.seed)
    idx = sorted(rng.sample(range(len(vs)), min(args.sun_subset, len(vs))))
    model = CHGNet.load(verbose=False)
    opt = StructOptimizer(model=model)
    results = relax_briefly([vs[i] for i in idx], opt=opt, steps=args.relax_steps)
    relaxed = {i: r for i, r in zip(idx, results, strict=True) if r is not None}
    t_relax = time.monotonic() - t0
    e_hulls, info = hull_distances(list(relaxed.values()), ref, model=model, opt=opt)
    n_stable = n_sun = 0
    for i, e_hull in zip(relaxed, e_hulls, strict=True):
        if e_hull <= 0.1:  # NaN (no elemental reference) compares False
            n_stable += 1
            if uniq[i] and novel[i]:
                n_sun += 1
    known = sorted(e for e in e_hulls if math.isfinite(e))
    k = len(idx)
    return {
        "sun_subset": k,
        "sun_relaxed": len(relaxed),
        "sun_no_elemental_reference": len(e_hulls) - len(known),
        "stable_like_rate": n_stable / k,
        "sun_like_rate": n_sun / k,
        "median_e_hull": known[len(known) // 2] if known else None,
        "sun_reference_crystals": info["n_references"],
        "prototype_elemental_references": info["prototype_elements"],
        "sun_s": round(time.monotonic() - t0, 1),
        "relax_s": round(t_relax, 1),
    }


if __name__ == "__main__":
    main()
