"""The generator protocol: propose candidate crystals, each with its provenance.

Lengths in Å; energies (where a generator is conditioned on them) in eV/atom.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pymatgen.core import Structure


class GeneratorError(Exception):
    """Bad request to a generator (unknown property, unknown element, impossible range)."""


class GeneratorSettings(BaseModel):
    """Settings common to every generator; implementations subclass with `kind: Literal[...]`."""

    model_config = ConfigDict(extra="forbid")

    kind: str


@dataclass
class KnownStructure:
    """A known crystal offered to generators as a parent/prototype (e.g. a Materials Project entry)."""

    id: str
    structure: Structure
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationContext:
    """What a round asks of the generators.

    Attributes:
        known: Known crystals (seed data plus the campaign's discoveries) to substitute on or learn from.
        chemical_systems: Target chemical systems such as "Li-Fe-P-O"; empty means unrestricted.
        conditions: Property conditions for conditional generators, e.g. {"band_gap": (1.5, 3.0)}.
        compositions: Reduced formulas the round needs, most needed first (`generator.compositions`); generators
            that make a given composition (random search, diffusion) work down this list, several structures per
            composition; empty leaves the choice to each generator.
    """

    known: Sequence[KnownStructure] = ()
    chemical_systems: Sequence[str] = ()
    conditions: dict[str, Any] = field(default_factory=dict)
    compositions: Sequence[str] = ()


@dataclass
class Candidate:
    """A generated structure with provenance.

    Attributes:
        structure: The candidate crystal.
        source: Generator name ("diffusion", "substitution", "random_search").
        parent: Id of the parent crystal, if any.
        info: What was done (substitution applied, space group drawn, conditions, ...); JSON-serialisable.
    """

    structure: Structure
    source: str
    parent: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Generator(ABC):
    """Proposes candidates. Capabilities are class attributes, which the loop reads instead of names.

    Attributes:
        supports_conditions: `generate` honours `GenerationContext.conditions` (property targets).
        supports_fine_tune: `fine_tune` continues training on the campaign's discoveries.
        supports_prototype_search: `generate` substitutes into the known crystals of its context, so the loop
            searches structure types for it: parents from the campaign's discoveries, the providers' crystals and
            one bundled crystal per structure type not yet spent, and children the campaign already knows
            dropped, round after round (one context of discoveries alone would repeat the same parents).
        hands_on_compositions: A generator that makes `GenerationContext.compositions` works down the list in order
            and the next generator of the mix starts after the last composition it made; False for one that makes
            only some kinds of composition and passes over the rest, after which the next starts where it did.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[GeneratorSettings]]
    supports_conditions: ClassVar[bool] = False
    supports_fine_tune: ClassVar[bool] = False
    supports_prototype_search: ClassVar[bool] = False
    hands_on_compositions: ClassVar[bool] = True

    @abstractmethod
    def generate(self, *, n: int, context: GenerationContext, seed: int = 0) -> list[Candidate]:
        """Propose up to `n` candidates for `context`, reproducibly for a given `seed`."""

    def fine_tune(self, structures: Sequence[Structure], **kwargs: Any) -> dict[str, float]:
        """Continue training on new structures (only where `supports_fine_tune`)."""
        raise NotImplementedError(f"{self.name} does not learn from data")


_REGISTRY: dict[str, type[Generator]] = {}


def register(cls: type[Generator]) -> type[Generator]:
    """Class decorator: make a generator available by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def get_generator_class(name: str) -> type[Generator]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown generator {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}") from None


def generator_names() -> list[str]:
    """Registered generator names, sorted."""
    return sorted(_REGISTRY)


def settings_models() -> tuple[type[GeneratorSettings], ...]:
    """Every registered generator's settings model (each tagged by its `kind`)."""
    return tuple(_REGISTRY[name].Settings for name in generator_names())
