"""Round 0, references: the known crystals the oracle labels to build the hull in its own level of theory.

Energies eV/atom.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Lattice, Structure

from emulator.graphs import graph_problem
from generator.base import KnownStructure
from generator.seeds import load_seeds, reference_states, seed_table
from loop.config import CampaignConfig
from loop.errors import InputError
from loop.runtime.provider_crystals import ProviderCrystal, cached_provider_crystals, fetch_provider_crystals
from loop.runtime.tasks import predict_energies
from loop.science.hull import HullEntry, OracleHull
from loop.stages.base import StageContext
from loop.store import Query

log = logging.getLogger("matloop")


def withheld_records(config: CampaignConfig) -> list[dict[str, Any]]:
    """The bundled crystals this campaign withholds (rediscovery mode), as JSON-ready records.

    Each record: material_id, formula (reduced), spacegroup, split, structure (pymatgen `Structure.as_dict()`).
    Ids listed in `withhold` are recorded wherever they lie; formulas and "all_compounds" only match inside the
    target systems by construction.
    """
    withhold = config.withholding
    if not withhold:
        return []
    table = seed_table()
    ids = table["material_id"][withhold.mask(table)]
    inside = [
        k
        for k in load_seeds(ids=ids)
        if k.id in withhold.ids
        or any(
            {el.symbol for el in k.structure.composition.elements} <= set(s.split("-"))
            for s in config.chemical_systems
        )
    ]
    return [
        {
            "material_id": k.id,
            "formula": k.structure.composition.reduced_formula,
            "spacegroup": k.properties.get("spacegroup"),
            "split": k.properties.get("split"),
            "structure": k.structure.as_dict(),
        }
        for k in sorted(inside, key=lambda k: k.id)
    ]


SIMPLE_CELL_PREFIX = "cell:"
"""Id prefix of the simple elemental cells round 0 adds ("cell:Li-fcc")."""
# Elements whose standard state is a molecule (or an atom): a close-packed atomic cell of them is no phase anyone
# places on a hull, and their molecular crystals come from the known data.
_MOLECULAR = frozenset({"H", "N", "O", "F", "Cl", "Br", "I"})


def simple_cells(element: str, *, volume_per_atom: float) -> list[KnownStructure]:
    """The fcc, bcc and hcp cells (1, 1 and 2 atoms, hcp at the ideal c/a) of one element at one volume per atom.

    Many elements' ground state at a given level of theory is one of these three even where the data hold only
    others (the bundled data hold no fcc Li and no hcp Al cell; at the demo's GPAW settings the three Li polymorphs
    lie within 1 meV/atom, so any of them can be the end), and they cost almost nothing to label, so round 0 always labels them: a hull end is then never a polymorph lying above
    another one. The oracle relaxes them from this volume.

    Args:
        element: The element symbol.
        volume_per_atom: The cells' volume, Å^3/atom (the element's known crystal's).

    Returns:
        The three cells, ids "cell:<El>-fcc" etc., properties formula, symmetry, source "simple cell".
    """
    v = float(volume_per_atom)
    c_over_a = float(np.sqrt(8 / 3))
    a_fcc = (4 * v) ** (1 / 3)
    a_bcc = (2 * v) ** (1 / 3)
    a_hcp = (2 * v / (np.sqrt(3) / 2 * c_over_a)) ** (1 / 3)
    lattices = {
        "fcc": (Lattice(0.5 * a_fcc * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), [[0.0, 0.0, 0.0]]),
        "bcc": (Lattice(0.5 * a_bcc * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]])), [[0.0, 0.0, 0.0]]),
        "hcp": (Lattice.hexagonal(a_hcp, a_hcp * c_over_a), [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]),
    }
    return [
        KnownStructure(
            id=f"{SIMPLE_CELL_PREFIX}{element}-{kind}",
            structure=Structure(lattice, [element] * len(coords), coords),
            properties={"formula": element, "symmetry": kind, "source": "simple cell"},
        )
        for kind, (lattice, coords) in lattices.items()
    ]


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


def provider_crystals(config: CampaignConfig, *, workdir: Path) -> list[ProviderCrystal]:
    """The OPTIMADE providers' cached crystals of the target systems (`loop.runtime.provider_crystals`), each marked
    withheld when its id or formula is, or when it is the same crystal (the funnel's matcher) as a withheld bundled
    one. Empty with `references.source: bundled`; never queries."""
    refs = config.references
    if refs.source != "optimade":
        return []
    crystals = cached_provider_crystals(
        refs.optimade, chemical_systems=config.chemical_systems, workdir=workdir
    )
    withhold = config.withholding
    if not withhold:
        return crystals
    held: dict[str, list[Structure]] = {}
    for r in withheld_records(config):
        held.setdefault(r["formula"], []).append(Structure.from_dict(r["structure"]))
    matcher = config.generator.funnel.matcher.matcher()
    out = []
    for c in crystals:
        comp = c.structure.composition
        covered = withhold.covers(
            material_id=c.id,
            reduced_formula=comp.reduced_formula,
            elements=[el.symbol for el in comp.elements],
        ) or any(matcher.fit(c.structure, w) for w in held.get(comp.reduced_formula, []))
        out.append(replace(c, withheld=covered))
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


class ReferencesStage:
    """Fetch the providers' crystals (`references.source: optimade`, once: cached in the workdir), store the
    references as round-0 structures and queue them for the oracle."""

    name = "references"

    def compute(self, ctx: StageContext) -> References:
        config = ctx.config
        if config.references.source == "optimade":
            fetch_provider_crystals(
                config.references.optimade, chemical_systems=config.chemical_systems, workdir=ctx.workdir
            )
        crystals = provider_crystals(config, workdir=ctx.workdir)
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

    def commit(self, ctx: StageContext, result: References) -> dict[str, Any]:
        store = ctx.store
        store.set_meta("withheld", result.withheld)
        hashes = [
            store.add_structure(
                p.known.structure,
                source="seed",
                parent=p.known.id,
                round=0,
                provenance={"material_id": p.known.id, "role": p.role, **p.known.properties},
            )
            for p in result.picks
        ]
        store.add_queries(
            0, [Query(hash=h, strategy="references", rank=i, score=None) for i, h in enumerate(hashes)]
        )
        return {
            "n_references": len(hashes),
            "n_elements": sum(1 for p in result.picks if p.role == "element"),
            "n_compounds": sum(1 for p in result.picks if p.role == "compound"),
            "n_withheld": len(result.withheld),
            "n_provider_references": sum(1 for p in result.picks if "provider" in p.known.properties),
            "providers": result.providers,
        }


STAGE = ReferencesStage()
