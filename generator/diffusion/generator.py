"""The "diffusion" generator: sample crystals from the shipped (or a fine-tuned) checkpoint.

Public entry points: `DiffusionSettings`, `DiffusionGenerator`, `sample_structures`, `iter_sample_batches`
and `parse_conditions` (re-exported from `generator.diffusion.conditions`). Lengths in Å.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from pymatgen.core import Element, Structure

from generator.base import (
    Candidate,
    GenerationContext,
    Generator,
    GeneratorError,
    GeneratorSettings,
    register,
)
from generator.chemistry import formula_unit
from generator.diffusion.charge import CompositionConstraint
from generator.diffusion.conditions import (
    Condition,
    check_supported,
    checkpoint_conditions,
    validate_conditions,
)
from generator.diffusion.data import to_structure
from generator.diffusion.denoiser import Denoiser
from generator.diffusion.metrics import charge_balanced, structurally_valid
from generator.diffusion.noise import make_noise_processes
from generator.diffusion.sampler import SamplingOptions, draw_num_atoms, sample_raw
from generator.diffusion.symmetry import build_template, template_rows, templates_for
from generator.diffusion.training import fine_tune_checkpoint, load_checkpoint

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "diffusion_mp20.pt"
MAX_ATOMS = 20


class DiffusionSettings(GeneratorSettings):
    """Settings of the diffusion generator.

    Attributes:
        checkpoint: Sampling checkpoint; None = the shipped mp_20 model.
        steps: Predictor steps (each adds one corrector step; guidance doubles the evaluations).
        guidance_scale: Classifier-free guidance scale used when conditions are given (1 = no extra guidance).
        batch_size: Crystals denoised together.
        conditions: Default conditions, e.g. {"band_gap": "1.5:3.0", "chemical_system": "Li-Fe-O"}.
        num_atoms: Fixed atom count per crystal (1-20); None draws counts from the training distribution.
        corrector_snr: Langevin corrector step as a fraction of σ² (0 = predictor only).
        min_distance: Atom pairs closer than this (Å) are pushed apart late in sampling (0 = off).
        filter_invalid: Drop crystals that fail the sanity rule (`generator.sanity`: atoms too close, absurd volume).
        charge_balance: Constrained type decoding that keeps every composition charge-balanced (SMACT-style;
            all-metal compositions pass); False samples the model's types unconstrained (≈ 40 % pass).
        space_group_templates: Honour a space_group condition exactly by sampling inside Wyckoff templates of
            training crystals of that group; False leaves it to guidance alone.
        species_prior: Cap each crystal's number of elements at a draw from the training distribution.
        require_charge_balance: Also drop compositions that are not charge-balanced in `generate` (only
            matters with `charge_balance` off; then it oversamples threefold).
        max_atoms: Largest crystal sampled (1-20 atoms, the model's training range); a campaign lowers it to its
            funnel's `max_atoms`.
        structures_per_composition: Crystals sampled for each composition of `GenerationContext.compositions`
            before the next one (their types decoded to that composition exactly).
    """

    kind: Literal["diffusion"] = "diffusion"
    checkpoint: Path | None = None
    steps: int = Field(default=SamplingOptions.steps, ge=2, le=2000)
    guidance_scale: float = Field(default=SamplingOptions.guidance_scale, ge=0.0, le=20.0)
    batch_size: int = Field(default=SamplingOptions.batch_size, ge=1, le=5000)
    conditions: dict[str, Any] = Field(default_factory=dict)
    num_atoms: int | None = Field(default=None, ge=1, le=MAX_ATOMS)
    corrector_snr: float = Field(default=SamplingOptions.corrector_snr, ge=0.0, le=2.0)
    min_distance: float = Field(default=SamplingOptions.min_distance, ge=0.0, le=2.0)
    filter_invalid: bool = True
    charge_balance: bool = SamplingOptions.charge_balance
    space_group_templates: bool = SamplingOptions.space_group_templates
    species_prior: bool = SamplingOptions.species_prior
    require_charge_balance: bool = False
    structures_per_composition: int = Field(default=4, ge=1)
    max_atoms: int = Field(default=MAX_ATOMS, ge=1, le=MAX_ATOMS)

    def sampling_options(self) -> SamplingOptions:
        """The sampler's share of these settings."""
        return SamplingOptions(
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            batch_size=self.batch_size,
            corrector_snr=self.corrector_snr,
            min_distance=self.min_distance,
            charge_balance=self.charge_balance,
            space_group_templates=self.space_group_templates,
            species_prior=self.species_prior,
            max_atoms=self.max_atoms,
        )


_MODELS: dict[tuple[str, float], tuple[Denoiser, dict[str, Any]]] = {}


def _load(checkpoint: Path | str | None) -> tuple[Denoiser, dict[str, Any]]:
    path = Path(checkpoint) if checkpoint is not None else SHIPPED_CHECKPOINT
    if not path.is_file():
        raise GeneratorError(f"diffusion checkpoint {path} not found; pass an existing --checkpoint file")
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _MODELS:
        try:
            _MODELS[key] = load_checkpoint(path)
        except Exception as exc:
            raise GeneratorError(
                f"{path} is not a loadable diffusion checkpoint ({exc.__class__.__name__})"
            ) from None
    return _MODELS[key]


def _check_request(conditions: dict[str, Condition], num_atoms: int | None, payload: dict[str, Any]) -> int:
    """Validate a request against the model; returns the minimum atom count."""
    check_supported(conditions, checkpoint_conditions(payload))
    minimum = 1
    if "chemical_system" in conditions:
        els = conditions["chemical_system"].elements
        unseen = [Element.from_Z(z).symbol for z in els if z not in set(payload["stats"]["allowed_z"])]
        if unseen:
            raise GeneratorError(
                f"chemical_system: {', '.join(unseen)} never occur in the training data; choose other elements"
            )
        minimum = len(els)
        if minimum > MAX_ATOMS:
            raise GeneratorError(
                f"chemical_system has {minimum} elements; at most {MAX_ATOMS} fit in one crystal"
            )
    if num_atoms is not None:
        if not 1 <= num_atoms <= MAX_ATOMS:
            raise GeneratorError(
                f"num_atoms={num_atoms} is outside 1-{MAX_ATOMS}, the model's training range"
            )
        if num_atoms < minimum:
            raise GeneratorError(
                f"num_atoms={num_atoms} is too small for a {minimum}-element chemical system; use ≥ {minimum}"
            )
    return minimum


def iter_sample_batches(
    *,
    n: int,
    conditions: dict[str, Any] | None = None,
    checkpoint: Path | str | None = None,
    num_atoms: int | None = None,
    seed: int = 0,
    options: SamplingOptions | None = None,
    formula: str | None = None,
) -> Iterator[list[Structure]]:
    """Sample `n` crystals (unfiltered) from a diffusion checkpoint, yielding them batch by batch.

    Args:
        n: Number of crystals.
        conditions: {property: "VALUE" or "LO:HI"}; properties: chemical_system, space_group, band_gap (eV),
            e_above_hull (eV/atom), hhi. Unknown properties, unknown elements or impossible ranges raise
            `GeneratorError`.
        checkpoint: Sampling checkpoint (default: the shipped mp_20 model).
        num_atoms: Atoms per crystal (1-20); default draws from the training distribution (or, with a space
            group, from its templates).
        seed: Random seed (same seed, same crystals).
        options: How to sample (`SamplingOptions`; default: its defaults, which are `DiffusionSettings`'s).
        formula: Sample this composition exactly (a reduced formula such as "Ti2O3"): whole formula units
            (atom counts that are multiples of the formula unit), types decoded to it; the chemical_system
            condition becomes its elements.
    """
    options = options or SamplingOptions()
    if n < 0:
        raise GeneratorError(f"n={n} is negative; ask for at least one crystal")
    target = None
    if formula is not None:
        target = formula_unit(formula)
        system = "-".join(sorted(el.symbol for el in target.elements))
        conditions = {**(conditions or {}), "chemical_system": system}
        options = replace(options, mask_system=True)
    conds = validate_conditions(conditions)
    model, payload = _load(checkpoint)
    minimum = _check_request(conds, num_atoms, payload)
    stats = payload["stats"]
    noise = make_noise_processes(density=stats["density"], sigma_l=payload["train_config"]["sigma_l"])
    gen = torch.Generator().manual_seed(int(seed))
    chem = conds.get("chemical_system") if options.mask_system else None
    # one constraint for the whole request: it vets atom counts and templates here, then decodes the types
    constraint = (
        CompositionConstraint(
            allowed_z=chem.elements if chem else stats["allowed_z"],
            required=chem.elements if chem else (),
            charge_balance=options.charge_balance,
            formula={el.Z: round(a) for el, a in target.items()} if target is not None else None,
        )
        if options.charge_balance or chem
        else None
    )
    what = f"{conds['chemical_system'].describe()} " if chem else ""
    if target is not None:
        what = f"{target.reduced_formula} "
    rows = None
    hist = list(stats["num_atoms_hist"])[: options.max_atoms + 1]
    if "space_group" in conds and options.space_group_templates:
        rows = templates_for(
            int(conds["space_group"].value or 0),
            num_atoms=num_atoms,
            min_orbits=minimum,
            n_species=len(chem.elements) if chem else None,
            max_atoms=min(MAX_ATOMS, options.max_atoms),
        )
        if constraint is not None:
            rows = [r for r in rows if constraint.feasible({}, _multiplicities(r))]
            if not rows:
                raise GeneratorError(
                    f"no Wyckoff template of space group {int(conds['space_group'].value or 0)} admits a "
                    f"charge-balanced {what}composition; drop a condition or use --no-charge-balance"
                )
    elif constraint is not None:
        sizes = [num_atoms] if num_atoms is not None else range(1, len(hist))
        ok = [k for k in sizes if constraint.feasible({}, [1] * k)]
        if not ok:
            if target is not None:
                raise GeneratorError(
                    f"no crystal of 1-{options.max_atoms} atoms (num_atoms {num_atoms}) holds whole formula units of "
                    f"{target.reduced_formula}; choose a smaller formula or another num_atoms"
                )
            raise GeneratorError(
                f"no charge-balanced {what}composition has {num_atoms} atoms; choose another num_atoms "
                "or use --no-charge-balance"
            )
        hist = [p if k in ok else 0.0 for k, p in enumerate(hist)]
    done = 0
    while done < n:
        m = min(options.batch_size, n - done)
        templates = None
        if rows is not None:
            pick = torch.randint(len(rows), (m,), generator=gen).tolist()
            templates = [build_template(rows[i]["sg"], rows[i]["wyckoff"], rows[i]["z"]) for i in pick]
            counts = [tpl.num_atoms for tpl in templates]
        elif num_atoms is not None:
            counts = [num_atoms] * m
        else:
            counts = draw_num_atoms(hist, m, minimum=minimum, generator=gen)
        caps = (
            _draw_species_caps(counts, minimum, gen) if options.species_prior and templates is None else None
        )
        raw = sample_raw(
            model=model,
            noise=noise,
            num_atoms=counts,
            allowed_z=stats["allowed_z"],
            conditions=conds,
            options=options,
            constraint=constraint,
            templates=templates,
            max_species=caps,
            generator=gen,
        )
        done += m
        yield [to_structure(r.z, r.frac, r.lattice) for r in raw]


@functools.lru_cache(maxsize=1)
def _species_table() -> dict[int, list[float]]:
    """P(number of elements | atom count) of the training crystals, from the shipped template table."""
    counts: dict[int, list[float]] = {}
    for row in template_rows():
        k = len(set(row["z"]))
        hist = counts.setdefault(int(row["n"]), [0.0] * 9)
        hist[min(k, 8)] += 1.0
    return counts


def _draw_species_caps(num_atoms: Sequence[int], minimum: int, generator: torch.Generator) -> list[int]:
    table = _species_table()
    overall = [sum(h[k] for h in table.values()) for k in range(9)]
    caps = []
    for n in num_atoms:
        hist = torch.tensor(table.get(int(n), overall))
        hist[min(int(n), 8) + 1 :] = 0.0  # no more elements than atoms
        if hist.sum() <= 0:
            caps.append(max(minimum, 1))
            continue
        k = int(torch.multinomial(hist / hist.sum(), 1, generator=generator))
        caps.append(max(k, minimum))
    return caps


def _multiplicities(row: dict) -> list[int]:
    return [orb.multiplicity for orb in build_template(row["sg"], row["wyckoff"], row["z"]).orbits]


def sample_structures(
    *,
    n: int,
    conditions: dict[str, Any] | None = None,
    checkpoint: Path | str | None = None,
    num_atoms: int | None = None,
    seed: int = 0,
    options: SamplingOptions | None = None,
    on_batch: Callable[[list[Structure]], None] | None = None,
    formula: str | None = None,
    **changes: Any,
) -> list[Structure]:
    """Sample crystals (unfiltered) and return them in sampling order.

    Args:
        n, conditions, checkpoint, num_atoms, seed, options, formula: As in `iter_sample_batches`.
        on_batch: Called with each finished batch (e.g. to append it to a file).
        **changes: `SamplingOptions` fields to change from `options` (e.g. steps=20), for short scripts.
    """
    options = replace(options or SamplingOptions(), **changes)
    out: list[Structure] = []
    request = {
        "n": n,
        "conditions": conditions,
        "checkpoint": checkpoint,
        "num_atoms": num_atoms,
        "seed": seed,
        "formula": formula,
    }
    for batch in iter_sample_batches(**request, options=options):
        if on_batch is not None:
            on_batch(batch)
        out.extend(batch)
    return out


@register
class DiffusionGenerator(Generator):
    """Crystal diffusion model (mask D3PM types, wrapped-VE coordinates, VP symmetric lattice)."""

    name: ClassVar[str] = "diffusion"
    Settings: ClassVar[type[GeneratorSettings]] = DiffusionSettings
    supports_conditions: ClassVar[bool] = True
    supports_fine_tune: ClassVar[bool] = True

    def __init__(self, settings: DiffusionSettings | None = None) -> None:
        self.settings = settings or DiffusionSettings()

    def generate(self, *, n: int, context: GenerationContext, seed: int = 0) -> list[Candidate]:
        """Propose up to `n` structurally valid crystals honouring `context` (conditions, chemical systems).

        Context conditions override the settings' defaults; several chemical systems share `n` round-robin.
        With `context.compositions`, `structures_per_composition` crystals of each composition in turn (most
        needed first), decoded to it exactly; compositions the model cannot make (more than 20 atoms, an
        element it never saw) are passed over.
        """
        s = self.settings
        base = {**s.conditions, **dict(context.conditions)}
        if context.compositions:
            return self._per_composition(n=n, formulas=context.compositions, base=base, seed=seed)
        systems = list(context.chemical_systems) or [None]
        shares = [n // len(systems) + (1 if i < n % len(systems) else 0) for i in range(len(systems))]
        out: list[Candidate] = []
        for k, (system, share) in enumerate(zip(systems, shares, strict=True)):
            conds = dict(base)
            if system is not None:
                conds["chemical_system"] = system
            got: list[Candidate] = []
            attempt = 0
            while len(got) < share and attempt < 3:
                want = share - len(got)
                if s.require_charge_balance:
                    ask = 3 * want + 2
                else:
                    ask = int(want * 1.1) + 2 if s.filter_invalid else want
                structures = sample_structures(
                    n=ask,
                    conditions=conds,
                    checkpoint=s.checkpoint,
                    num_atoms=s.num_atoms,
                    seed=seed * 1000 + k * 10 + attempt,
                    options=s.sampling_options(),
                )
                for st in structures:
                    if s.filter_invalid and not structurally_valid(st):
                        continue
                    if s.require_charge_balance and not charge_balanced(st.composition):
                        continue
                    got.append(self._candidate(st, conds, seed))
                attempt += 1
            out.extend(got[:share])
        return out

    def _per_composition(
        self, *, n: int, formulas: Sequence[str], base: dict[str, Any], seed: int
    ) -> list[Candidate]:
        s = self.settings
        out: list[Candidate] = []
        for k, formula in enumerate(formulas):
            want = min(s.structures_per_composition, n - len(out))
            if want <= 0:
                break
            try:
                structures = sample_structures(
                    n=int(want * 1.1) + 1 if s.filter_invalid else want,
                    conditions=base,
                    checkpoint=s.checkpoint,
                    seed=seed * 1000 + k,
                    options=s.sampling_options(),
                    formula=formula,
                )
            except GeneratorError:
                continue  # this composition is beyond the model (size, elements, template); the next one is not
            kept = [st for st in structures if not s.filter_invalid or structurally_valid(st)][:want]
            out.extend(self._candidate(st, {**base, "formula": formula}, seed) for st in kept)
        return out

    def _candidate(self, structure: Structure, conds: dict[str, Any], seed: int) -> Candidate:
        s = self.settings
        return Candidate(
            structure=structure,
            source=self.name,
            info={
                "conditions": {key: str(v) for key, v in conds.items()},
                "steps": s.steps,
                "guidance_scale": s.guidance_scale,
                "checkpoint": Path(s.checkpoint).name if s.checkpoint else SHIPPED_CHECKPOINT.name,
                "seed": seed,
            },
        )

    def fine_tune(
        self,
        structures: Sequence[Structure],
        *,
        checkpoint_out: Path | str,
        steps: int = 200,
        max_minutes: float = 10.0,
        mix_original: int = 2000,
        batch_size: int = 32,
        lr: float = 1e-4,
        seed: int = 0,
        work_dir: Path | str | None = None,
        exclude_ids: Collection[str] = (),
        **_: Any,
    ) -> dict[str, float]:
        """Continue training on `structures` mixed with `mix_original` mp_20 crystals; save to `checkpoint_out`.

        Crystals whose material id is in `exclude_ids` are never mixed in (a campaign's withheld crystals).

        The generator samples from the new checkpoint afterwards. Bounded by `steps` and `max_minutes`.
        Returns the final losses (train/val per field) and the number of steps.
        """
        parent = Path(self.settings.checkpoint) if self.settings.checkpoint else SHIPPED_CHECKPOINT
        _load(parent)
        out = Path(checkpoint_out)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = fine_tune_checkpoint(
                checkpoint=parent,
                structures=structures,
                out=out,
                work_dir=Path(work_dir) if work_dir is not None else Path(tmp),
                steps=steps,
                max_minutes=max_minutes,
                mix_original=mix_original,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                exclude_ids=exclude_ids,
            )
        self.settings = self.settings.model_copy(update={"checkpoint": out})
        return metrics
