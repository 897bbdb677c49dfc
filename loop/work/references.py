"""Round 0, references: the known crystals the oracle labels to build the hull in its own level of theory.

Energies eV/atom.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element

from emulator.graphs import graph_problem
from generator.base import KnownStructure
from generator.seeds import load_seeds, reference_states
from loop.config import CampaignConfig
from loop.errors import InputError
from loop.runtime.provider_crystals import fetch_provider_crystals
from loop.runtime.tasks import predict_energies
from loop.science.elemental_cells import simple_cells
from loop.science.hull import HullEntry, OracleHull
from loop.views.withholding import provider_crystals, withheld_records

log = logging.getLogger("matloop")


# Elements whose standard state is a molecule (or an atom): a close-packed atomic cell of them is no phase anyone
# places on a hull, and their molecular crystals come from the known data.
_MOLECULAR = frozenset({"H", "N", "O", "F", "Cl", "Br", "I"})


def _simple_cells_of(elements: Sequence[str], known: Sequence[KnownStructure]) -> list[KnownStructure]:
    """`simple_cells` of every non-molecular element at the volume of its ASE reference state, else the median
    volume per atom of its known elemental crystals (none known: no cells; `reference_pool` then refuses)."""
    out: list[KnownStructure] = []
    for el in elements:
        if el in _MOLECULAR or Element(el).is_noble_gas:
            continue
        mine = [k.structure for k in known if k.structure.composition.reduced_formula == el]
        ase = [k.structure for k in reference_states([el])]
        volumes = [s.volume / len(s) for s in (ase or mine)]
        if volumes:
            out.extend(simple_cells(el, volume_per_atom=statistics.median(volumes)))
    return out


def graphable(known: Sequence[KnownStructure]) -> list[KnownStructure]:
    """`known` without the crystals the emulator cannot graph (`emulator.graphs`), each noted in the log: such a
    seed (e.g. mp-689577, one Na atom in 350 Å³) could be neither ranked nor trained on."""
    kept = []
    for k in known:
        if (problem := graph_problem(k.structure)) is None:
            kept.append(k)
        else:
            log.info("reference %s (%s) skipped: %s", k.id, k.structure.composition.reduced_formula, problem)
    return kept


def reference_pool(
    config: CampaignConfig, *, providers: Sequence[KnownStructure] = ()
) -> list[KnownStructure]:
    """The known crystals round 0 may label: every elemental polymorph of the target elements up to
    `references.max_element_atoms` atoms (bundled crystals and ASE's reference states) and their fcc, bcc and hcp
    cells (`simple_cells`; hcp has 2 atoms, so `max_element_atoms: 1` leaves it out), the same crystal given
    twice kept once (bundled first, then ASE's, then the simple cells, then the providers'), and every bundled
    compound of the target systems and their subsystems up to `references.max_atoms` atoms, minus the withheld
    ones, then the providers' compounds.

    Args:
        providers: Crystals of the OPTIMADE providers not withheld (`provider_crystals`), as `KnownStructure`s.

    Raises:
        InputError: an element of the target systems has no elemental crystal at all, so the hull could not be
            built in the oracle's level of theory.
    """
    refs = config.references
    bundled = graphable(load_seeds(chemical_systems=config.chemical_systems, withhold=config.withholding))
    providers = graphable(providers)
    elements = [
        k
        for k in [
            *sorted(bundled, key=lambda k: (len(k.structure), k.id)),
            *reference_states(config.elements),
        ]
        if len(k.structure.composition) == 1 and len(k.structure) <= refs.max_element_atoms
    ]
    elements += [
        k
        for k in _simple_cells_of(config.elements, [k for k in bundled if len(k.structure.composition) == 1])
        if len(k.structure) <= refs.max_element_atoms
    ]
    elements += [
        k
        for k in providers
        if len(k.structure.composition) == 1 and len(k.structure) <= refs.max_element_atoms
    ]
    # Only the same crystal given twice is dropped (ASE's fcc Al, the fcc cell and the bundled one). The funnel's
    # matcher would also merge small distortions such as cI16 Li into bcc Li, whose oracle energies differ
    # (13 meV/atom in the demo's GPAW), and both are cheap to label.
    same = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1.0, primitive_cell=False, scale=True)
    polymorphs: list[KnownStructure] = []
    for k in elements:
        if not any(
            p.structure.composition.reduced_formula == k.structure.composition.reduced_formula
            and same.fit(p.structure, k.structure)
            for p in polymorphs
        ):
            polymorphs.append(k)
    have = {k.structure.composition.elements[0].symbol for k in polymorphs}
    missing = sorted(set(config.elements) - have)
    if missing:
        raise InputError(
            f"no elemental crystal with <= {refs.max_element_atoms} atoms for {', '.join(missing)} in the bundled"
            " data or ASE's reference states; raise references.max_element_atoms or choose another system"
        )
    compounds = [
        k
        for k in [*sorted(bundled, key=lambda k: k.id), *providers]
        if len(k.structure.composition) > 1 and len(k.structure) <= refs.max_atoms
    ]
    return [*polymorphs, *compounds]


@dataclass(frozen=True)
class ReferencePick:
    """A known crystal chosen as a reference, as an "element" or a "compound"."""

    known: KnownStructure
    role: str


def select_references(
    config: CampaignConfig, *, providers: Sequence[KnownStructure] = ()
) -> list[ReferencePick]:
    """Round 0: every elemental polymorph of the pool and the lowest-lying known compounds, one per composition,
    ranked by the pretrained emulator (only to choose what to label: the hull itself is built from oracle
    energies), at most `references.max_compounds`. Bundled and provider compounds compete on the same ranking, so
    a provider's polymorph is labelled where the emulator puts it below the bundled ones."""
    pool = reference_pool(config, providers=providers)
    picks = [ReferencePick(known=k, role="element") for k in pool if len(k.structure.composition) == 1]
    compounds = [k for k in pool if len(k.structure.composition) > 1]
    if not compounds or config.references.max_compounds == 0:
        return picks
    energies = predict_energies([k.structure for k in pool], settings=config.emulator, checkpoint=None)
    hull = OracleHull.from_entries(
        [
            HullEntry(entry_id=k.id, composition=k.structure.composition, energy_per_atom=e)
            for k, e in zip(pool, energies, strict=True)
        ]
    )
    by_id = dict(zip((k.id for k in pool), energies, strict=True))
    ev = hull.evaluate([k.structure.composition for k in compounds], [by_id[k.id] for k in compounds])
    order = sorted(
        range(len(compounds)),
        key=lambda i: (ev.e_above_hull[i], len(compounds[i].structure), compounds[i].id),
    )
    seen: set[str] = set()
    for i in order:
        k = compounds[i]
        formula = k.structure.composition.reduced_formula
        if formula in seen:  # one polymorph per composition: the hull needs the lowest only
            continue
        seen.add(formula)
        picks.append(ReferencePick(known=k, role="compound"))
        if len(seen) >= config.references.max_compounds:
            break
    return picks


@dataclass(frozen=True)
class References:
    """The references to label, the withheld crystals (rediscovery mode) the report matches discoveries to, and how
    many crystals each OPTIMADE provider gave (and how many of them were withheld)."""

    picks: list[ReferencePick]
    withheld: list[dict[str, Any]]
    providers: dict[str, dict[str, int]]


def gather_references(config: CampaignConfig, *, workdir: Path) -> References:
    """Fetch the providers' crystals (`references.source: optimade`, once: cached in `workdir`) and choose the
    references (`select_references`), with the withheld crystals and each provider's counts."""
    if config.references.source == "optimade":
        fetch_provider_crystals(
            config.references.optimade, chemical_systems=config.chemical_systems, workdir=workdir
        )
    crystals = provider_crystals(config, workdir=workdir)
    counts = {
        p: {
            "n": sum(1 for c in crystals if c.provider == p),
            "n_withheld": sum(1 for c in crystals if c.provider == p and c.withheld),
        }
        for p in (config.references.optimade.providers if crystals else {})
    }
    return References(
        picks=select_references(config, providers=[c.as_known() for c in crystals if not c.withheld]),
        withheld=withheld_records(config),
        providers=counts,
    )
