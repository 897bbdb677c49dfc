"""Seed data: the bundled Materials Project crystals, and ASE's elemental reference states.

Two bundled data sets (Materials Project, CC BY 4.0; see `data/*/ATTRIBUTION.md`):

* `mp_20` (train, val): crystals of at most 20 atoms, some with DFT properties; the diffusion model trains on it;
* `mpts_52` (train, val, test): crystals of at most 52 atoms, structures only.

Together they are the campaign's "known" crystals: references of the oracle hull, substitution parents, and the
novelty index. A material present in both sets is kept once (its mp_20 row). Rows are filtered on the cheap
`elements` column before any CIF is parsed, because parsing all ~45k CIFs takes about a minute.

Energies in eV/atom, band gaps in eV, lengths in Å.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Lattice, Structure

from generator.base import GeneratorError, KnownStructure
from generator.chemistry import parse_chemical_system, parse_element
from generator.prototypes import equivalent_prototypes, structure_prototype, without_sites

DATA_ROOT = Path(__file__).resolve().parent / "data"
DATASETS: dict[str, tuple[str, ...]] = {"mp_20": ("train", "val"), "mpts_52": ("train", "val", "test")}
SPLITS: tuple[str, ...] = tuple(f"{name}/{split}" for name, splits in DATASETS.items() for split in splits)
"""Every bundled split as "dataset/split"; the default everywhere (the complete known set)."""
_ELEMENT_RE = re.compile(r"[A-Z][a-z]?")
_FLOAT_PROPERTIES = ("band_gap", "e_above_hull", "formation_energy_per_atom")
REFERENCE_STATE_PREFIX = "ase-ref:"


class SeedDataError(GeneratorError):
    """A bad seed-data request (unknown split, element or chemical system)."""


def _split_path(split: str) -> Path:
    dataset, _, name = split.partition("/")
    if name not in DATASETS.get(dataset, ()):
        raise SeedDataError(f"unknown bundled split {split!r}; choose from {', '.join(SPLITS)}")
    return DATA_ROOT / dataset / f"{name}.csv.gz"


INDEX_PATH = DATA_ROOT / "known_index.csv.gz"
_FORMULA_SUM_RE = re.compile(r"_chemical_formula_sum\s+'?([^'\n]+)'?")


def _cell_composition(cif: str) -> Composition:
    """The cell's composition from the CIF header (pymatgen writes the full cell there), without parsing sites."""
    match = _FORMULA_SUM_RE.search(cif)
    if match is None:
        raise SeedDataError("a bundled CIF lacks _chemical_formula_sum; rebuild the data")
    return Composition(match.group(1))


def _index_row(item: tuple[str, str, str]) -> tuple[str, str, str, str, int, str]:
    ident, split, cif = item
    comp = _cell_composition(cif)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen's CIF notes on rounded occupancies
        prototype = structure_prototype(Structure.from_str(cif, fmt="cif"))
    return ident, split, comp.reduced_formula, comp.anonymized_formula, round(comp.num_atoms), prototype


def build_index(*, processes: int = 1) -> pd.DataFrame:
    """Derive the index of every bundled row: material_id, split, reduced_formula, anonymous_formula, n_sites
    and prototype (`generator.prototypes.structure_prototype`, one key per structure type:
    `generator.prototypes.equivalent_prototypes` joins a type's descriptions).

    Reduced formulas come from pymatgen, so they match the funnel's formula buckets exactly; prototypes need
    every CIF parsed (about 20 ms a crystal, so ~15 min for ~45k rows on one core) and joining a type's settings
    takes ~9 min more, hence the shipped `known_index.csv.gz` (rebuild: `python -m generator.seeds [processes]`).
    """
    items = []
    for split in SPLITS:
        frame = pd.read_csv(_split_path(split), usecols=["material_id", "cif"])
        items.extend((str(i), split, c) for i, c in zip(frame["material_id"], frame["cif"], strict=True))
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            rows = pool.map(_index_row, items, chunksize=256)
    else:
        rows = [_index_row(item) for item in items]
    frame = pd.DataFrame(
        rows,
        columns=["material_id", "split", "reduced_formula", "anonymous_formula", "n_sites", "prototype"],
    )
    frame["prototype"] = frame["prototype"].replace(_prototype_aliases(frame, [c for *_, c in items]))
    return frame


def _prototype_aliases(frame: pd.DataFrame, cifs: Sequence[str]) -> dict[str, str]:
    """`generator.prototypes.equivalent_prototypes` of the compounds' keys that share all but their Wyckoff sites,
    one crystal (the first listed) representing each key."""
    coarse = frame["prototype"].map(without_sites)
    compound = frame["anonymous_formula"] != "A"
    shared = coarse.map(frame[compound].groupby(coarse[compound])["prototype"].nunique()).fillna(0) > 1
    first = frame[compound & shared].drop_duplicates(subset="prototype")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        representatives = {
            key: Structure.from_str(cifs[i], fmt="cif")
            for i, key in zip(first.index, first["prototype"], strict=True)
        }
    return equivalent_prototypes(representatives)


@lru_cache(maxsize=1)
def _index() -> pd.DataFrame:
    return pd.read_csv(INDEX_PATH, keep_default_na=False)


@lru_cache(maxsize=8)
def _read_split(split: str) -> pd.DataFrame:
    frame = pd.read_csv(_split_path(split))
    index = _index()
    index = index[index["split"] == split]
    if index["material_id"].tolist() != frame["material_id"].tolist():
        raise SeedDataError(
            f"{INDEX_PATH.name} is out of date for {split}; rebuild it: python -m generator.seeds"
        )
    for column in ("reduced_formula", "anonymous_formula", "n_sites", "prototype"):
        frame[column] = index[column].to_numpy()
    frame["element_set"] = [frozenset(_ELEMENT_RE.findall(text)) for text in frame["elements"]]
    frame["split"] = split
    return frame


@lru_cache(maxsize=8)
def _seed_table(splits: tuple[str, ...]) -> pd.DataFrame:
    table = pd.concat([_read_split(s) for s in splits], ignore_index=True)
    # the same material in two data sets is one known crystal; the first split listed wins
    return table.drop_duplicates(subset="material_id", keep="first").reset_index(drop=True)


def seed_table(*, splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """All seed rows (unparsed CIFs) of the given splits, one per material id.

    Extra columns: `element_set` (frozenset of symbols), `reduced_formula` (pymatgen's), `anonymous_formula`,
    `n_sites` (atoms in the cell), `prototype` (`generator.prototypes.structure_prototype`), `split`.
    """
    for split in splits:
        _split_path(split)
    return _seed_table(tuple(splits))


@dataclass(frozen=True)
class Withholding:
    """Known crystals hidden from a campaign, which must then find them again (rediscovery mode).

    A bundled row is withheld when its material id is listed, its reduced formula is listed, or it is a
    compound (two or more elements) inside one of `compounds_in`. Elemental crystals are never withheld by
    `compounds_in`: the hull needs every element's reference.

    Attributes:
        ids: Material ids, e.g. "mp-1234".
        formulas: Reduced formulas, e.g. "LiAl".
        compounds_in: Chemical systems (element sets) whose every compound is withheld ("all_compounds").
    """

    ids: frozenset[str] = frozenset()
    formulas: frozenset[str] = frozenset()
    compounds_in: tuple[frozenset[str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ids or self.formulas or self.compounds_in)

    def covers(self, *, material_id: str, reduced_formula: str, elements: Collection[str]) -> bool:
        """Whether one crystal is withheld."""
        if material_id in self.ids or reduced_formula in self.formulas:
            return True
        return len(elements) >= 2 and any(set(elements) <= system for system in self.compounds_in)

    def mask(self, table: pd.DataFrame) -> pd.Series:
        """Boolean mask of the withheld rows of a `seed_table`."""
        out = table["material_id"].isin(self.ids) | table["reduced_formula"].isin(self.formulas)
        if self.compounds_in:
            sets = table["element_set"]
            out |= sets.map(lambda s: len(s) >= 2 and any(s <= system for system in self.compounds_in))
        return out


def _parse_cif(cif: str) -> Structure:
    with warnings.catch_warnings():
        # pymatgen warns about rounding near-ideal fractional coordinates; harmless for these cells
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def seed_loaders(
    *, splits: Sequence[str] = SPLITS, withhold: Withholding | None = None
) -> list[tuple[str, str, Callable[[], Structure]]]:
    """(material_id, reduced formula, zero-argument CIF parser) for every seed row not withheld; parses nothing."""
    table = seed_table(splits=splits)
    if withhold:
        table = table[~withhold.mask(table)]
    return [
        (str(ident), formula, partial(_parse_cif, cif))
        for ident, formula, cif in zip(
            table["material_id"], table["reduced_formula"], table["cif"], strict=True
        )
    ]


def _row_to_known(row: pd.Series) -> KnownStructure:
    structure = _parse_cif(row["cif"])
    properties: dict[str, object] = {"formula": row["pretty_formula"], "split": row["split"]}
    for key in _FLOAT_PROPERTIES:
        value = row.get(key)
        if value is not None and pd.notna(value):
            properties[key] = float(value)
    if pd.notna(row["spacegroup.number"]):
        properties["spacegroup"] = int(row["spacegroup.number"])
    return KnownStructure(id=str(row["material_id"]), structure=structure, properties=properties)


def load_seeds(
    *,
    splits: Sequence[str] = SPLITS,
    elements: Iterable[str] | None = None,
    chemical_systems: Sequence[str] = (),
    max_foreign_elements: int = 0,
    min_elements: int = 1,
    max_elements: int | None = None,
    ids: Iterable[str] | None = None,
    exclude_ids: Iterable[str] = (),
    withhold: Withholding | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[KnownStructure]:
    """Load bundled crystals as `KnownStructure`s, filtering before parsing.

    Args:
        splits: Which bundled splits to read ("mp_20/train", ..., see `SPLITS`).
        elements: If given, every element of a crystal must be in this set.
        chemical_systems: If given, a crystal must lie inside one of these systems (e.g. "Li-Fe-P-O"),
            apart from at most `max_foreign_elements` elements outside it.
        max_foreign_elements: See `chemical_systems`.
        min_elements: Smallest number of distinct elements.
        max_elements: Largest number of distinct elements.
        ids: If given, only these material ids.
        exclude_ids: Material ids to skip.
        withhold: Crystals hidden from the caller (rediscovery mode).
        limit: Keep at most this many crystals. With `chemical_systems`, crystals closest to a target system
            (fewest foreign elements, then most shared elements) come first; ties, and the order without
            targets, are a shuffle reproducible for `seed`.
        seed: Seed of that shuffle.

    Returns:
        Crystals with id = material_id and properties formula, split, and where present band_gap (eV),
        e_above_hull (eV/atom), formation_energy_per_atom (eV/atom), spacegroup (number).

    Raises:
        SeedDataError: On an unknown split, element or chemical system, or a negative limit.
    """
    if limit is not None and limit < 0:
        raise SeedDataError(f"limit must be >= 0, got {limit}")
    if max_foreign_elements < 0:
        raise SeedDataError(f"max_foreign_elements must be >= 0, got {max_foreign_elements}")
    try:
        allowed = frozenset(parse_element(e) for e in elements) if elements is not None else None
        systems = [parse_chemical_system(s) for s in chemical_systems]
    except GeneratorError as exc:
        raise SeedDataError(str(exc)) from None
    table = seed_table(splits=splits)
    sets = table["element_set"]
    n_el = sets.map(len)
    mask = n_el >= min_elements
    if max_elements is not None:
        mask &= n_el <= max_elements
    if allowed is not None:
        mask &= sets.map(lambda s: s <= allowed)
    if ids is not None:
        mask &= table["material_id"].isin(set(ids))
    excluded = set(exclude_ids)
    if excluded:
        mask &= ~table["material_id"].isin(excluded)
    if withhold:
        mask &= ~withhold.mask(table)
    rng = np.random.default_rng(seed)
    order_key = rng.permutation(len(table))
    if systems:
        foreign = sets.map(lambda s: min(len(s - t) for t in systems))
        shared = sets.map(lambda s: max(len(s & t) for t in systems))
        fits = sets.map(lambda s: any(len(s) <= len(t) for t in systems))
        mask &= (foreign <= max_foreign_elements) & fits
        ranked = pd.DataFrame({"foreign": foreign, "shared": -shared, "tie": order_key})
        ranked = ranked[mask].sort_values(["foreign", "shared", "tie"])
    else:
        ranked = pd.DataFrame({"tie": order_key})[mask].sort_values("tie")
    index = ranked.index[:limit] if limit is not None else ranked.index
    return [_row_to_known(table.loc[i]) for i in index]


# -- ASE reference states ---------------------------------------------------------------------------------------------
def _reference_data(symbol: str) -> dict | None:
    # ase.data is a plain table of numbers (no Atoms), so the generator room may read it
    from ase.data import atomic_numbers, reference_states

    return reference_states[atomic_numbers[symbol]]


def reference_state(element: str) -> KnownStructure | None:
    """ASE's experimental reference state of an element (`ase.data.reference_states`) as a crystal.

    The structure is the cell `ase.build.bulk(element)` builds: fcc, bcc and diamond as primitive fcc/bcc cells,
    hcp with c/a, simple cubic, primitive body-centred tetragonal cells, and rhombohedral cells with their
    basis along the 3-fold axis. Orthorhombic, tetragonal and monoclinic states are skipped: ASE tabulates
    them without their basis. Lattice constants in Å as tabulated (experimental, so a
    calculator's own equilibrium differs by a few per cent until it relaxes).

    Returns:
        A `KnownStructure` with id "ase-ref:<El>-<symmetry>" and properties formula, symmetry, source, or None
        when ASE tabulates no crystal for the element (molecules, atoms, missing bases, monoclinic Pu, ...).

    Raises:
        SeedDataError: On an unknown element.
    """
    try:
        symbol = parse_element(element)
    except GeneratorError as exc:
        raise SeedDataError(str(exc)) from None
    data = _reference_data(symbol)
    if not data:
        return None
    kind = data.get("symmetry")
    a = data.get("a")
    basis: list[list[float]] = [[0.0, 0.0, 0.0]]
    if kind in ("fcc", "diamond"):
        lattice = Lattice(0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]))
        if kind == "diamond":
            basis = [[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]]
    elif kind == "bcc":
        lattice = Lattice(0.5 * a * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]]))
    elif kind == "sc":
        lattice = Lattice.cubic(a)
    elif kind == "hcp":
        lattice = Lattice.hexagonal(a, a * data["c/a"])
        basis = [[0.0, 0.0, 0.0], [1 / 3, 2 / 3, 0.5]]
    elif kind == "bct":
        c = a * data["c/a"]
        lattice = Lattice(0.5 * np.array([[-a, a, c], [a, -a, c], [a, a, -c]]))
        basis = [list(map(float, b)) for b in data.get("basis") or basis]
    elif kind == "rhombohedral" and "basis_x" in data:
        lattice = Lattice.from_parameters(a, a, a, data["alpha"], data["alpha"], data["alpha"])
        basis = [[float(x)] * 3 for x in np.atleast_1d(data["basis_x"])]
    else:
        return None
    structure = Structure(lattice, [symbol] * len(basis), basis)
    return KnownStructure(
        id=f"{REFERENCE_STATE_PREFIX}{symbol}-{kind}",
        structure=structure,
        properties={"formula": symbol, "symmetry": kind, "source": "ase.data.reference_states"},
    )


def reference_states(elements: Iterable[str]) -> list[KnownStructure]:
    """`reference_state` of each element that has one, in the order given."""
    return [k for k in (reference_state(e) for e in elements) if k is not None]


def bundled_formulas() -> dict[str, str]:
    """Material id -> reduced formula of every bundled crystal (from the index; parses no CIF)."""
    index = _index()
    return dict(zip(index["material_id"].astype(str), index["reduced_formula"], strict=True))


def _main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the shipped index of the bundled crystals.")
    parser.add_argument("processes", nargs="?", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("processes must be at least 1")
    frame = build_index(processes=args.processes)
    frame.to_csv(INDEX_PATH, index=False)
    print(f"wrote {INDEX_PATH.name}: {len(frame)} rows")


if __name__ == "__main__":
    _main()


__all__ = [
    "DATASETS",
    "SPLITS",
    "SeedDataError",
    "Withholding",
    "build_index",
    "bundled_formulas",
    "load_seeds",
    "reference_state",
    "reference_states",
    "seed_loaders",
    "seed_table",
]
