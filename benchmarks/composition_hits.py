"""Composition hits: asked for exactly the composition of a known stable phase, how often does a generator make it?

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.composition_hits --n 8 --retry-n 16

Per target phase (a Materials Project id among the bundled crystals, `generator.seeds.load_seeds`; by default Ti2O,
Na2O, NaO2, Na2O2, KO2, TiAl and TiAl2), each generator (`random_search`, `diffusion` with the shipped checkpoint,
`interstitial`, which makes only metal-rich compounds of a transition metal and a light non-metal) is
asked for `--n` structures of exactly the target's reduced composition, the way a campaign's generate stage asks
(`loop.work.generation.generate_candidates`: a `GenerationContext` whose `compositions` lists the formula, the
target's chemical system, no known crystals; the product's default settings, `max_atoms` 20, with
`structures_per_composition` raised to `--n` so that one composition gets all of them; seed `--seed` * 1000 plus a
number of the target id, so targets of the same formula type do not share one sequence of random draws). Every
structure is relaxed as screening relaxes it (the emulator's relaxation, `emulator.force_field`: pretrained CHGNet
0.3.0, cell and positions, FIRE, fmax 0.1 eV/Å, 300 steps, one torch thread) and matched to the target with pymatgen
`StructureMatcher` at its default tolerances (as `benchmarks/rediscovery.py` counts a rediscovery) before and after
the relaxation. The target itself is relaxed the same way as a control: if it does not match itself afterwards, no
relaxed structure can. Random search is asked again for `--retry-n` structures (same seed, so the first `--n` are the
same ones, relaxed once) on targets it missed, while the run is inside `--budget-minutes`; the diffusion generator is
skipped for the remaining targets once one target's sampling takes longer than `--diffusion-max-seconds`.

Prints one JSON line per (target, generator, n) with the target's id, formula, space group and atoms, the structures
made, how many match before and after relaxation, the relaxation time, the target's CHGNet energy, for random search
the chance that one draw is in the target's space group at its conventional cell size (`draw_probability`), and per
structure its atoms, space group (drawn by pyxtal, or found with symprec 0.1 for diffusion), space group after
relaxation and CHGNet energy; then a Markdown table. Units: eV/atom, s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

import generator  # noqa: F401  (registers the generators)
from emulator.chgnet_ensemble import ChgnetEnsemble
from emulator.force_field import load_force_field
from generator.base import GenerationContext, GeneratorError, KnownStructure, get_generator_class
from generator.chemistry import formula_unit
from generator.random_search import RandomSearchSettings, cell_options, formula_unit_probabilities
from generator.seeds import load_seeds

DEFAULT_TARGETS = ("mp-1215", "mp-2352", "mp-1901", "mp-2340", "mp-1866", "mp-1953", "mp-567705")
GENERATORS = ("random_search", "diffusion", "interstitial")
RELAX_FMAX = 0.1  # eV/Å, `training.relax_fmax` of the campaign config
RELAX_STEPS = 300  # `training.relax_steps`
MAX_ATOMS = 20
SYMPREC = 0.1  # Å, as the bundled data's space-group labels


@dataclass(frozen=True)
class Relaxed:
    """One screening relaxation: the relaxed structure, its CHGNet energy (eV/atom), steps, convergence, seconds."""

    structure: Structure
    energy_per_atom: float
    n_steps: int
    converged: bool
    seconds: float


@dataclass
class Row:
    """One (target, generator, n) outcome, printed as a JSON line."""

    target: str
    formula: str
    space_group: int | None
    atoms: int
    generator: str
    asked: int
    made: int = 0
    matched_before: int = 0
    matched_after: int = 0
    relax_seconds: float = 0.0
    generate_seconds: float = 0.0
    target_self_match_after_relax: bool | None = None
    target_energy_per_atom: float | None = None
    p_draw_target_group: float | None = None
    structures: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None


class Relaxer:
    """The emulator's relaxation on pretrained CHGNet 0.3.0, remembering each structure it relaxed."""

    def __init__(self) -> None:
        self.model: ChgnetEnsemble = load_force_field(checkpoint=None)
        self._done: dict[str, Relaxed] = {}

    def relax(self, structure: Structure) -> Relaxed:
        """Relax `structure` (once; a structure seen before returns its first result, seconds included)."""
        key = hashlib.sha256(json.dumps(structure.as_dict(), sort_keys=True).encode()).hexdigest()
        if key not in self._done:
            started = time.perf_counter()
            result = self.model.relax([structure], fmax=RELAX_FMAX, steps=RELAX_STEPS)[0]
            self._done[key] = Relaxed(
                structure=result.structure,
                energy_per_atom=float(result.energy_per_atom),
                n_steps=int(result.n_steps),
                converged=bool(result.converged),
                seconds=time.perf_counter() - started,
            )
        return self._done[key]


def space_group(structure: Structure) -> int | None:
    """International space-group number at `SYMPREC` (None when spglib finds none)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number())
    except Exception:  # spglib gives up on some badly distorted cells; the number is only reported
        return None


def draw_probability(structure: Structure, *, exponent: float) -> float:
    """Probability that one random-search draw for `structure`'s composition is in its space group with its
    conventional cell's atom count (`generator.random_search`: Z among the counts up to `MAX_ATOMS` that some
    group of 2-230 accepts, weighted Z^-exponent, then the group uniform among those; pyxtal counts atoms in the
    conventional cell). The Wyckoff placement still has to come out right, or a relaxation has to carry another
    draw there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer = SpacegroupAnalyzer(structure, symprec=SYMPREC)
        group = analyzer.get_space_group_number()
        cell = len(analyzer.get_conventional_standard_structure())
    comp = formula_unit(structure.composition)
    unit = [round(comp[el]) for el in comp.elements]
    options = dict(cell_options(unit, max_atoms=MAX_ATOMS, groups=tuple(range(2, 231))))
    z = cell // sum(unit)
    if group not in options.get(z, ()):
        return 0.0
    zs = list(options)
    return float(formula_unit_probabilities(zs, exponent=exponent)[zs.index(z)]) / len(options[z])


def seed_for(target: str, *, seed: int) -> int:
    """A seed of its own per target: with one seed, every composition of the same formula type (AB2, ...) gets the
    same sequence of formula units and space groups from the random search, so the targets would not be
    independent samples."""
    return seed * 1000 + zlib.crc32(target.encode()) % 1000


def generate(
    *, name: str, formula: str, system: str, n: int, seed: int, overrides: dict[str, Any] | None = None
) -> list[tuple[Structure, int | None]]:
    """`n` structures of exactly `formula` from generator `name`, asked as a campaign's generate stage asks, each
    with the space group it was made in (pyxtal's draw, or found at `SYMPREC`); `overrides` are further settings."""
    cls = get_generator_class(name)
    settings = cls.Settings(max_atoms=MAX_ATOMS, structures_per_composition=n, **(overrides or {}))
    context = GenerationContext(
        known=(),
        chemical_systems=[system],
        conditions=dict(settings.conditions) if cls.supports_conditions else {},
        compositions=[formula],
    )
    made = cls(settings=settings).generate(n=n, context=context, seed=seed)
    return [(c.structure, c.info.get("space_group") or space_group(c.structure)) for c in made]


def evaluate(
    *,
    target: KnownStructure,
    name: str,
    n: int,
    seed: int,
    relaxer: Relaxer,
    control: Relaxed,
    overrides: dict[str, Any] | None = None,
) -> Row:
    """Generate, relax and match one (target, generator, n); `overrides` are further generator settings."""
    reference = target.structure
    comp = reference.composition
    formula = comp.reduced_formula
    system = "-".join(sorted(el.symbol for el in comp.elements))
    matcher = StructureMatcher()
    row = Row(
        target=target.id,
        formula=formula,
        space_group=target.properties.get("spacegroup") or space_group(reference),
        atoms=len(reference),
        generator=name,
        asked=n,
        target_self_match_after_relax=bool(matcher.fit(control.structure, reference)),
        target_energy_per_atom=round(control.energy_per_atom, 4),
        p_draw_target_group=round(
            draw_probability(
                reference,
                exponent=(overrides or {}).get(
                    "formula_unit_exponent", RandomSearchSettings().formula_unit_exponent
                ),
            ),
            5,
        )
        if name == "random_search"
        else None,
    )
    started = time.perf_counter()
    made = generate(
        name=name,
        formula=formula,
        system=system,
        n=n,
        seed=seed_for(target.id, seed=seed),
        overrides=overrides,
    )
    row.generate_seconds = round(time.perf_counter() - started, 1)
    row.made = len(made)
    seconds = 0.0
    for structure, group in made:
        before = bool(matcher.fit(structure, reference))
        relaxed = relaxer.relax(structure)
        after = bool(matcher.fit(relaxed.structure, reference))
        seconds += relaxed.seconds
        row.matched_before += before
        row.matched_after += after
        row.structures.append(
            {
                "atoms": len(structure),
                "space_group": group,
                "space_group_relaxed": space_group(relaxed.structure),
                "energy_per_atom": round(relaxed.energy_per_atom, 4),
                "n_steps": relaxed.n_steps,
                "converged": relaxed.converged,
                "match_before": before,
                "match_after": after,
            }
        )
    row.relax_seconds = round(seconds, 1)
    return row


def table(rows: list[Row]) -> str:
    """The Markdown summary of all rows."""
    lines = [
        "| target | formula | space group | atoms | generator | made | matched before relax | matched after relax "
        "| relax s | target relaxes onto itself | lowest E - target E (eV/atom) | P(draw target group) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.skipped:
            lines.append(
                f"| {r.target} | {r.formula} | {r.space_group} | {r.atoms} | {r.generator} | skipped: {r.skipped} "
                "| | | | | | |"
            )
            continue
        energies = [s["energy_per_atom"] for s in r.structures]
        gap = (
            f"{min(energies) - r.target_energy_per_atom:+.3f}"
            if energies and r.target_energy_per_atom is not None
            else ""
        )
        lines.append(
            f"| {r.target} | {r.formula} | {r.space_group} | {r.atoms} | {r.generator} | {r.made}/{r.asked} "
            f"| {r.matched_before} | {r.matched_after} | {r.relax_seconds:.0f} "
            f"| {'yes' if r.target_self_match_after_relax else 'no'} | {gap} "
            f"| {'' if r.p_draw_target_group is None else f'{r.p_draw_target_group:.4f}'} |"
        )
    return "\n".join(lines)


def run(
    *,
    ids: list[str],
    targets: dict[str, KnownStructure],
    generators: list[str],
    n: int,
    retry_n: int,
    seed: int,
    budget_minutes: float,
    diffusion_max_seconds: float,
    random_search: dict[str, Any] | None = None,
) -> list[Row]:
    """Every (target, generator) at `n`, then random search at `retry_n` on the targets it missed, within budget;
    `targets` are the bundled crystals of `ids`, loaded once by the caller."""
    started = time.perf_counter()
    relaxer = Relaxer()
    controls = {i: relaxer.relax(targets[i].structure) for i in ids}
    rows: list[Row] = []
    slow_diffusion: str | None = None

    def emit(row: Row) -> None:
        rows.append(row)
        print(json.dumps(asdict(row)), flush=True)

    for i in ids:
        for name in generators:
            if name == "diffusion" and slow_diffusion:
                k = targets[i]
                emit(
                    Row(
                        target=i,
                        formula=k.structure.composition.reduced_formula,
                        space_group=k.properties.get("spacegroup"),
                        atoms=len(k.structure),
                        generator=name,
                        asked=n,
                        skipped=slow_diffusion,
                    )
                )
                continue
            row = evaluate(
                target=targets[i],
                name=name,
                n=n,
                seed=seed,
                relaxer=relaxer,
                control=controls[i],
                overrides=random_search if name == "random_search" else None,
            )
            emit(row)
            if name == "diffusion" and row.generate_seconds > diffusion_max_seconds:
                slow_diffusion = f"sampling took {row.generate_seconds:.0f} s on {i}"
    if retry_n > n and "random_search" in generators:
        missed = [r.target for r in rows if r.generator == "random_search" and r.matched_after == 0]
        for i in missed:
            if time.perf_counter() - started > 60 * budget_minutes:
                print(f"budget of {budget_minutes} min spent; no retry for {i}", file=sys.stderr)
                continue
            emit(
                evaluate(
                    target=targets[i],
                    name="random_search",
                    n=retry_n,
                    seed=seed,
                    relaxer=relaxer,
                    control=controls[i],
                    overrides=random_search,
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated Materials Project ids (bundled)"
    )
    parser.add_argument(
        "--generators", default=",".join(GENERATORS), help=f"comma-separated, from: {','.join(GENERATORS)}"
    )
    parser.add_argument("--n", type=int, default=8, help="structures asked per target and generator")
    parser.add_argument(
        "--retry-n", type=int, default=16, help="random search again with this many on a miss (0: no)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="no retry starts after this")
    parser.add_argument("--diffusion-max-seconds", type=float, default=60.0)
    parser.add_argument(
        "--formula-unit-exponent",
        type=float,
        default=None,
        help="random search's formula_unit_exponent (default: the product's; 0: every cell size alike)",
    )
    args = parser.parse_args()
    ids = [t.strip() for t in args.targets.split(",") if t.strip()]
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    if args.n < 1 or not ids:
        parser.exit(2, "composition_hits: give --n >= 1 and at least one target id\n")
    if unknown := sorted(set(generators) - set(GENERATORS)):
        parser.exit(
            2,
            f"composition_hits: unknown generator {', '.join(unknown)}; choose from {', '.join(GENERATORS)}\n",
        )
    found = {k.id: k for k in load_seeds(ids=ids)}
    if missing := [i for i in ids if i not in found]:
        parser.exit(
            2, f"composition_hits: {', '.join(missing)} not among the bundled crystals (generator/data)\n"
        )
    if big := [i for i in ids if len(found[i].structure) > MAX_ATOMS]:
        parser.exit(
            2, f"composition_hits: {', '.join(big)} has more than {MAX_ATOMS} atoms; no generator makes it\n"
        )
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    try:
        rows = run(
            ids=ids,
            targets=found,
            generators=generators,
            n=args.n,
            retry_n=args.retry_n,
            seed=args.seed,
            budget_minutes=args.budget_minutes,
            diffusion_max_seconds=args.diffusion_max_seconds,
            random_search=None
            if args.formula_unit_exponent is None
            else {"formula_unit_exponent": args.formula_unit_exponent},
        )
    except GeneratorError as exc:
        parser.exit(2, f"composition_hits: {exc}\n")
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
