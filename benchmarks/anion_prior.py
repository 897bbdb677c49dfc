"""Round 1 with only elemental references, for anions other than O: does the MP2020 prior hold for them?

CHGNet 0.3.0's energies carry the Materials Project 2020 anion corrections (each Cl atom of a chloride 0.614 eV lower,
S of a sulfide 0.503, F 0.462, N 0.361, ...); a raw-energy oracle's do not, and a refit on elemental labels cannot
absorb them (the elements themselves are not corrected). This measures the campaign's round-0 update on real
compounds of each anion, labelled by the `mlff` oracle (SevenNet-0, relaxed, as a campaign labels), with the prior on
O only (the code before the anion columns) and with the anion columns' prior too (`emulator.convention_features`).

Compounds (the rule was written before any measurement): for each anion of `--anions`, the bundled `mp_20` crystals
(train, val) on the Materials Project hull (`e_above_hull` 0) with two or three elements, at most 8 atoms, no O,
no U element of MP2020 (Co, Cr, Fe, Mn, Mo, Ni, V, W: their corrections get no prior) and no second anion, in
which MP2020 counts the anion as one; the first `--per-anion` by material number. References: every bundled
elemental crystal of their elements with at most 8 atoms (`references.max_element_atoms`) and ASE's reference
state, as a campaign's round 0 labels them. The update is `emulator.update.update_emulator` on the reference labels
(refit and leave-one-out calibration, no fine-tune), from the round-0 ensemble a campaign builds (4 members,
distilled heads); its calibrated predictions of the compounds are scored as `benchmarks.convention_prior` scores
them (mean error = oracle minus prediction, MAE, within 1σ and 2σ, median σ, mean NLL; eV/atom).

    OMP_NUM_THREADS=1 python -m benchmarks.anion_prior --anions Cl,F,S,N,Br,I,Se,H --per-anion 5
    OMP_NUM_THREADS=1 python -m benchmarks.anion_prior --anions Cl,F,S,N,Br,I,Se,H --per-anion 5 --skip 5
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.convention_prior import row
from emulator import ChgnetEnsemble, ChgnetEnsembleSettings, LabelledStructure
from emulator.convention_features import ANIONS, U_ELEMENTS, _anions
from emulator.graphs import graph_problem
from emulator.update import update_emulator
from generator.base import KnownStructure
from generator.seeds import load_seeds, reference_states, seed_table
from oracle.mlff import MLFFOracle, MLFFSettings

MAX_ATOMS = 8
MP20 = ("mp_20/train", "mp_20/val")


def compounds(anion: str, *, n: int, skip: int = 0) -> list[KnownStructure]:
    """The compounds `skip` .. `skip + n - 1` of `anion` (by material number) by the rule of the module docstring."""
    table = seed_table(splits=MP20)
    others = set(ANIONS) - {anion} | set(U_ELEMENTS) | {"O"}
    rows = table[
        (table["e_above_hull"] == 0)
        & table["element_set"].map(lambda s: anion in s and 2 <= len(s) <= 3 and not s & others)
        & (table["n_sites"] <= MAX_ATOMS)
    ]
    ids = sorted(rows["material_id"], key=lambda m: int(m.split("-")[1]))
    out: dict[str, KnownStructure] = {}
    for known in load_seeds(splits=MP20, ids=ids):
        if anion in _anions(known.structure):
            out.setdefault(known.id, known)
    ordered = sorted(out.values(), key=lambda k: int(k.id.split("-")[1]))
    return ordered[skip : skip + n]


def elemental(elements: set[str]) -> list[KnownStructure]:
    """Every bundled elemental crystal of `elements` with at most `MAX_ATOMS` atoms, and ASE's reference states."""
    bundled = [k for k in load_seeds(elements=elements, max_elements=1) if len(k.structure) <= MAX_ATOMS]
    return [*bundled, *reference_states(sorted(elements))]


def label(oracle: MLFFOracle, known: list[KnownStructure], workdir: Path) -> list[LabelledStructure]:
    """Oracle labels (relaxed structure and energy) of the crystals that label cleanly and that the emulator can
    graph (a campaign skips the others, `loop.work.references.graphable`)."""
    out = []
    for k in known:
        result = oracle.label(k.structure, workdir=workdir / k.id.replace(":", "_"))
        problem = graph_problem(result.final_structure) if result.ok else result.reason
        if problem is None:
            s = result.final_structure
            out.append(LabelledStructure(structure=s, energy=float(result.energy)))
        else:
            print(f"# {k.id} ({k.structure.composition.reduced_formula}) skipped: {problem}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anions", default="Cl,F,S,N,Br,I,Se,H")
    parser.add_argument("--per-anion", type=int, default=5)
    parser.add_argument(
        "--skip", type=int, default=0, help="compounds of each anion passed over first (a second set)"
    )
    args = parser.parse_args()
    anions = [a.strip() for a in args.anions.split(",") if a.strip()]
    unknown = sorted(set(anions) - set(ANIONS))
    if unknown:
        parser.error(f"not an anion column: {', '.join(unknown)}; choose from {', '.join(ANIONS)}")
    torch.set_num_threads(1)
    start = time.process_time()
    chosen = {a: compounds(a, n=args.per_anion, skip=args.skip) for a in anions}
    for a, ks in chosen.items():
        print(f"# {a}: {', '.join(f'{k.id} {k.structure.composition.reduced_formula}' for k in ks)}")
    elements = {el.symbol for ks in chosen.values() for k in ks for el in k.structure.composition.elements}
    oracle = MLFFOracle(MLFFSettings())
    with tempfile.TemporaryDirectory() as tmp:
        refs = label(oracle, elemental(elements), Path(tmp))
        labelled = {a: label(oracle, ks, Path(tmp)) for a, ks in chosen.items()}
    print(
        f"# {len(refs)} elemental labels of {len(elements)} elements; CPU {time.process_time() - start:.0f} s"
    )
    with_anions = ChgnetEnsemble(settings=ChgnetEnsembleSettings(convention_prior=True))
    o_only = copy.deepcopy(with_anions)
    for key in ("convention_prior", "convention_shift"):
        o_only.state[key] = {k: v for k, v in o_only.state[key].items() if not k.startswith("anion:")}
    print(
        "| prior | anion | compounds | mean error | MAE | within 1σ | within 2σ | median σ | mean NLL |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for name, base in (("O only", o_only), ("O and anions", with_anions)):
        variants, _ = update_emulator(
            None, refs, fresh=lambda base=base: copy.deepcopy(base), round=0, epochs=0, max_minutes=1.0
        )
        pooled: dict[str, list[np.ndarray]] = {"target": [], "predicted": [], "std": []}
        for a, lab in labelled.items():
            if not lab:
                continue
            pred = variants.model.predict([x.structure for x in lab], forces=False, stress=False)
            s = {
                "target": np.array([x.energy_per_atom for x in lab]),
                "predicted": pred.energy_per_atom,
                "std": pred.energy_per_atom_std,
            }
            for k, v in s.items():
                pooled[k].append(v)
            print(f"| {name} | {row(a, s)} |")
        print(f"| {name} | {row('all', {k: np.concatenate(v) for k, v in pooled.items()})} |")
    print(f"# CPU {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()
