"""Campaign configuration: YAML validated by pydantic models that mirror the object tree.

One section per room (generator, emulator, oracle, acquisition, tracking, execution). Each room's own settings
model lives beside the code it configures (e.g. `oracle.gpaw_dft.GPAWSettings`); this module composes them and turns
validation errors into one line that names the key path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pymatgen.core import Composition, Element

import emulator as _emulator_pkg  # noqa: F401  (registers emulators)
import generator as _generator_pkg  # noqa: F401  (registers generators)
import oracle as _oracle_pkg  # noqa: F401  (registers oracles)
from emulator.base import member_settings_models
from emulator.base import settings_models as emulator_settings_models
from generator.base import GeneratorSettings, generator_names
from generator.base import settings_models as generator_settings_models
from generator.seeds import Withholding, bundled_formulas
from loop.design.requirements import DesignConfig
from loop.errors import InputError
from loop.runtime.execution import ExecutionConfig
from loop.runtime.provider_crystals import OptimadeSettings
from loop.runtime.screening_tiers import TiersConfig
from loop.science.acquisition import AcquisitionConfig
from loop.science.funnel import FunnelConfig
from loop.science.verdicts import StabilityRule
from loop.tracking.runs import TrackingConfig
from loop.validation import discriminated_union, format_validation_error
from oracle.base import get_oracle_class
from oracle.base import settings_models as oracle_settings_models


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


OracleConfig = discriminated_union(oracle_settings_models())
EmulatorConfig = discriminated_union(emulator_settings_models())
CommitteeMemberConfig = discriminated_union(member_settings_models())

GeneratorSettingsConfig = discriminated_union(generator_settings_models())
ALL_COMPOUNDS = "all_compounds"
_MATERIAL_ID = re.compile(r"^(mp|mvc)-\d+$")


class GeneratorConfig(StrictModel):
    """How a round generates candidates.

    In YAML each generator's settings sit under its name (`generator.diffusion.steps`); a generator left out
    gets its defaults. A new generator needs no change here: registering it (`generator.base.register`) makes its
    name valid in `mix` and as a settings section.

    Attributes:
        mix: Candidates requested per round from each generator, by name (0 switches one off), in order: what one
            cannot make passes to the next generator that is on (`loop.work.generation.generate_candidates`).
        settings: Each registered generator's settings, by name (a union told apart by `kind`).
        funnel: Validity, charge balance, dedup, novelty and design-requirement filters.
        fine_tune_weight: Copies of each stable or near-stable structure of the campaign's oracle hull in the
            generator's fine-tuning set, which also mixes in original training crystals (0 switches it off).
        fine_tune_steps: Optimiser steps of one generator fine-tune.
        fine_tune_max_minutes: Wall-time bound of one generator fine-tune, minutes (a run that hits it is no
            longer reproducible step for step).
        fine_tune_check_samples: Crystals each checkpoint samples per request when a generator fine-tune is checked
            for narrowing (`loop.work.retraining.generator_breadth_check`: two requests, two checkpoints, so four
            times this many samples); 0 deploys every fine-tune unchecked.
        extra_decorations: Decoration candidates per round beyond the substitution generator's share of `mix`
            (structure types decorated with allowed compositions, further down the list that share starts,
            `loop.work.generation.substitution_candidates`). They make the round large enough to be screened in
            tiers, so only their promising share is relaxed: set `screening.per_formula` with them, or every
            candidate below the margin is relaxed. 0: off.
    """

    mix: dict[str, int] = Field(
        default_factory=lambda: {"diffusion": 16, "substitution": 24, "interstitial": 4, "random_search": 4}
    )
    settings: dict[str, GeneratorSettingsConfig] = Field(default_factory=dict)  # type: ignore[valid-type]
    funnel: FunnelConfig = Field(default_factory=FunnelConfig)
    fine_tune_weight: float = Field(default=4.0, ge=0.0)
    fine_tune_steps: int = Field(default=200, ge=1)
    fine_tune_max_minutes: float = Field(default=1.0, gt=0.0)
    fine_tune_check_samples: int = Field(default=16, ge=0)
    extra_decorations: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _sections_by_name(cls, data: Any) -> Any:
        """Gather the per-generator sections (and a dumped `settings` mapping) into `settings`, tagged by name."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        sections = dict(data.pop("settings", None) or {})
        for name in generator_names():
            if name in data:
                sections[name] = data.pop(name)
        for name in generator_names():
            section = sections.get(name)
            section = {} if section is None else section
            if isinstance(section, dict):
                sections[name] = {"kind": name, **section}
            else:
                sections[name] = section
        data["settings"] = sections
        return data

    @field_validator("mix")
    @classmethod
    def _known_generators(cls, mix: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(mix) - set(generator_names()))
        if unknown:
            raise ValueError(f"unknown generator(s) {unknown}; choose from {generator_names()}")
        if any(v < 0 for v in mix.values()):
            raise ValueError("candidate counts must be >= 0")
        if sum(mix.values()) == 0:
            raise ValueError("at least one generator needs a positive count")
        return mix

    @field_validator("settings")
    @classmethod
    def _kind_is_name(cls, settings: dict[str, GeneratorSettings]) -> dict[str, GeneratorSettings]:
        for name, section in settings.items():
            if section.kind != name:
                raise ValueError(
                    f"the {name} section has kind {section.kind!r}; drop `kind` or write {name!r}"
                )
        return settings

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump each generator's section under its name again, as the YAML has it."""
        data = handler(self)
        settings = data.pop("settings")
        return {"mix": data.pop("mix"), **settings, **data}

    def settings_for(self, name: str) -> GeneratorSettings:
        """The settings of generator `name` (its defaults when the config left it out)."""
        return self.settings[name]

    def __getattr__(self, name: str) -> Any:
        # `config.generator.diffusion` reads as the YAML does; any registered name works the same way.
        settings = self.__dict__.get("settings")
        if settings is not None and name in settings:
            return settings[name]
        return super().__getattr__(name)  # type: ignore[misc]


class ReferencesConfig(StrictModel):
    """Round 0: what the oracle labels to build the hull in its own level of theory.

    The known crystals are every bundled Materials Project crystal of the target systems and their subsystems
    (mp_20 and mpts_52) plus ASE's reference state of each element. Round 0 labels every elemental polymorph up to
    `max_element_atoms`, and always the fcc, bcc and hcp cells of every element whose standard state is not a
    molecule (1-2 atoms each: they are cheap, and the hull's end points decide every verdict), and the lowest-lying
    known compounds, one per composition, ranked by the pretrained emulator.

    With `source: optimade` the known crystals also include every structure of the target systems and their
    subsystems that the OPTIMADE providers serve (`loop.runtime.provider_crystals`; queried once, cached in the workdir):
    their elemental crystals up to `max_element_atoms` join the polymorphs, their compounds up to `max_atoms` the
    emulator's ranking, and all of them the funnel's novelty index, the substitution parents and the novelty
    verdicts.

    Attributes:
        source: "bundled" (offline, the default) or "optimade" (bundled plus the providers' crystals).
        optimade: The providers and how to ask them (used with `source: optimade`).
        max_compounds: Known compounds labelled in round 0 (at most one per composition).
        max_atoms: Largest compound cell (atoms) taken as a reference, to bound round-0 cost.
        max_element_atoms: Largest elemental cell (atoms) labelled in round 0.
    """

    source: Literal["bundled", "optimade"] = "bundled"
    optimade: OptimadeSettings = Field(default_factory=OptimadeSettings)
    max_compounds: int = Field(default=4, ge=0)
    max_atoms: int = Field(default=12, ge=1)
    max_element_atoms: int = Field(default=8, ge=1)


class EmulatorTrainingConfig(StrictModel):
    """Screening and retraining settings of the emulator.

    Attributes:
        relax_fmax: Force threshold of the screening relaxation, eV/Å.
        relax_steps: Step cap of the screening relaxation.
        fine_tune_epochs: Epochs per retraining.
        fine_tune_max_minutes: Wall-time bound of one retraining, minutes.
    """

    relax_fmax: float = Field(default=0.1, gt=0)
    # An unconverged screening relaxation leaves a candidate above its minimum, i.e. its E_hull an upper bound that
    # hides hits: at 60 steps most random-search and diffusion oxides stopped short, up to 0.3 eV/atom high on
    # average; converging them took at most 232 more steps on the Li-Co-O pool (BENCHMARKS.md).
    relax_steps: int = Field(default=300, ge=0)
    fine_tune_epochs: int = Field(default=3, ge=0)
    fine_tune_max_minutes: float = Field(default=2.0, gt=0)


class StopRule(StrictModel):
    """When a campaign (or daemon) stops.

    Attributes:
        max_rounds: Rounds after round 0.
        max_oracle_calls: Oracle calls of the discovery rounds (`loop.views.oracle_calls`: round 0's reference labels
            are not calls).
        max_hours: Wall-clock hours since the campaign started.
        patience: Stop after this many consecutive rounds without a new stable or near-stable discovery.
    """

    max_rounds: int = Field(default=3, ge=0)
    max_oracle_calls: int | None = Field(default=None, ge=1)
    max_hours: float | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, ge=1)


class CheckpointRetention(StrictModel):
    """How many rounds of retrained checkpoints stay in the workdir (each round adds ~9 MiB at the demo's sizes).

    Attributes:
        keep_rounds: The checkpoint folders (`checkpoints/round_NNN`) of the newest `keep_rounds` rounds stay;
            older ones are deleted once their round is logged to MLflow, which keeps a copy of every checkpoint
            as a registered model version. The checkpoints in use are never deleted, and nothing is deleted
            while tracking is off or a round's logging is still pending. None keeps every round.
    """

    keep_rounds: int | None = Field(default=3, ge=1)


class CampaignConfig(StrictModel):
    """A whole campaign.

    Attributes:
        name: Campaign name (also the MLflow experiment name unless tracking says otherwise).
        seed: Master random seed.
        chemical_systems: Target chemical systems, e.g. ["Cu-Au"]; elements joined by "-".
        near_stable: Threshold (eV/atom above the oracle hull) at or under which a labelled structure is a hit
            (near-stable, or stable when on the hull); acquisition targets it too (see `loop.science.verdicts`).
        withhold: Known crystals hidden from the campaign so that it must find them again (rediscovery mode):
            material ids ("mp-1234"), reduced formulas of compounds inside the target systems ("LiAl"), or
            "all_compounds" (every known compound of the target systems). They are left out of the references,
            the novelty index, the substitution parents and the generator's fine-tuning data.
        committee: Frozen potentials of other model families screened beside the emulator (e.g.
            `[{kind: sevennet}]`). Each relaxes every candidate and the oracle hull's phases and places the
            candidate against its own energies of those phases; a candidate's E_hull is then the mean over the
            families and its std adds their spread to the emulator's calibrated std (`loop.work.screening`).
        checkpoints: Which rounds' checkpoints stay on disk.
        design: The target application's requirements (`loop.design.requirements`): the funnel applies the
            composition rules to every candidate, the assess stage judges every hit against all of them and
            keeps the shortlist (`loop.runtime.shortlist`).
        screening: Which funnel survivors the screening relaxes: a cheap batched estimate for all, relaxation for
            the promising share (`loop.runtime.screening_tiers`).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    chemical_systems: list[str] = Field(min_length=1)
    near_stable: float = Field(default=0.05, ge=0.0)
    withhold: list[str] = Field(default_factory=list)
    references: ReferencesConfig = Field(default_factory=ReferencesConfig)
    stop: StopRule = Field(default_factory=StopRule)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    emulator: EmulatorConfig = Field(default_factory=lambda: {"kind": "chgnet_ensemble"})  # type: ignore[valid-type]
    emulator_training: EmulatorTrainingConfig = Field(default_factory=EmulatorTrainingConfig)
    screening: TiersConfig = Field(default_factory=TiersConfig)
    committee: list[CommitteeMemberConfig] = Field(default_factory=list)  # type: ignore[valid-type]
    oracle: OracleConfig = Field(default_factory=lambda: {"kind": "gpaw"})  # type: ignore[valid-type]
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    checkpoints: CheckpointRetention = Field(default_factory=CheckpointRetention)
    design: DesignConfig = Field(default_factory=DesignConfig)

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("chemical_systems")
    @classmethod
    def _known_elements(cls, systems: list[str]) -> list[str]:
        out = []
        for system in systems:
            elements = [e.strip() for e in system.split("-") if e.strip()]
            for e in elements:
                if not Element.is_valid_symbol(e):
                    raise ValueError(f"unknown element {e!r} in chemical system {system!r}")
            out.append("-".join(sorted(set(elements))))
        return out

    @model_validator(mode="after")
    def _committee_is_not_the_oracle(self) -> CampaignConfig:
        own = self.oracle.potential
        for member in self.committee:
            if own is not None and member.potential == own:
                raise ValueError(
                    f"committee: {member.kind} ({own}) is the oracle's own model (oracle.kind {self.oracle.kind}),"
                    " so it would screen candidates with the model that labels them; remove it from committee or"
                    " choose another oracle"
                )
        return self

    @model_validator(mode="after")
    def _emulator_knows_the_oracles_convention(self) -> CampaignConfig:
        # The emulator cannot see the oracle (the leaves do not import each other): the campaign tells it whether
        # the oracle's energies carry corrections, so its round-0 model starts from the right offsets.
        if "convention_prior" in type(self.emulator).model_fields and self.emulator.convention_prior is None:
            uncorrected = get_oracle_class(self.oracle.kind).energy_convention == "uncorrected"
            self.emulator = self.emulator.model_copy(update={"convention_prior": uncorrected})
        return self

    @field_validator("design")
    @classmethod
    def _oracle_answers_the_design(cls, design: DesignConfig, info: ValidationInfo) -> DesignConfig:
        oracle = info.data.get("oracle")
        if oracle is not None:
            design.check_oracle(oracle.kind, get_oracle_class(oracle.kind).implemented_properties)
        return design

    @model_validator(mode="after")
    def _withheld_compounds_only(self) -> CampaignConfig:
        systems = [frozenset(s.split("-")) for s in self.chemical_systems]
        ids = [w for w in self.withhold if _MATERIAL_ID.match(w)]
        known = bundled_formulas() if ids else {}
        for item in self.withhold:
            if item == ALL_COMPOUNDS:
                continue
            if _MATERIAL_ID.match(item):
                if item not in known:
                    raise ValueError(f"withhold: {item} is not a bundled material id; check the id")
                formula = known[item]
            else:
                try:
                    formula = Composition(item).reduced_formula
                except (ValueError, KeyError):
                    raise ValueError(
                        f"withhold: {item!r} is neither a material id (mp-1234), a formula (LiAl) nor "
                        f"{ALL_COMPOUNDS!r}"
                    ) from None
            elements = {el.symbol for el in Composition(formula).elements}
            if len(elements) < 2:
                raise ValueError(
                    f"withhold: {item} is an element; the hull needs every element's reference, so withhold "
                    "compounds only"
                )
            if not _MATERIAL_ID.match(item) and not any(elements <= s for s in systems):
                raise ValueError(
                    f"withhold: {item} lies outside the chemical systems {self.chemical_systems}"
                )
        return self

    @property
    def elements(self) -> list[str]:
        return sorted({e for s in self.chemical_systems for e in s.split("-")})

    @property
    def stability_rule(self) -> StabilityRule:
        """What stable, near-stable and a hit mean in this campaign (the one vocabulary, `loop.science.verdicts`)."""
        return StabilityRule(near_stable=self.near_stable)

    @property
    def withholding(self) -> Withholding:
        """The `withhold` list as a filter on bundled crystals."""
        return Withholding(
            ids=frozenset(w for w in self.withhold if _MATERIAL_ID.match(w)),
            formulas=frozenset(
                Composition(w).reduced_formula
                for w in self.withhold
                if w != ALL_COMPOUNDS and not _MATERIAL_ID.match(w)
            ),
            compounds_in=tuple(frozenset(s.split("-")) for s in self.chemical_systems)
            if ALL_COMPOUNDS in self.withhold
            else (),
        )


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> CampaignConfig:
    """Read and validate a campaign YAML.

    Raises:
        InputError: missing file, YAML syntax error, unknown key or wrong type (one line with the key path).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file; start from configs/default.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise InputError(
            f"{path}: not a text file; give a campaign YAML (see configs/default.yaml)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}: invalid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: the config must be a mapping of sections (name, chemical_systems, oracle, ...)"
        )
    for key, value in (overrides or {}).items():
        data[key] = value
    return validate_config(data, source=str(path))


def validate_config(data: dict[str, Any], *, source: str = "config") -> CampaignConfig:
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, source=source)) from None
