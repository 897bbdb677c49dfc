"""Seed data: the bundled mp_20 crystals (Materials Project, CC BY 4.0; see data/mp_20/ATTRIBUTION.md).

Rows are filtered on the cheap `elements` column before any CIF is parsed, because parsing all ~22k CIFs
takes tens of seconds. Energies in eV/atom, band gaps in eV.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure

from generator.base import GeneratorError, KnownStructure
from generator.chemistry import parse_chemical_system, parse_element

DATA_DIR = Path(__file__).resolve().parent / "data" / "mp_20"
SPLITS = ("train", "val")
_ELEMENT_RE = re.compile(r"[A-Z][a-z]?")
_FLOAT_PROPERTIES = ("band_gap", "e_above_hull", "formation_energy_per_atom")


class SeedDataError(GeneratorError):
    """A bad seed-data request (unknown split, element or chemical system)."""


@lru_cache(maxsize=4)
def _read_split(split: str) -> pd.DataFrame:
    if split not in SPLITS:
        raise SeedDataError(f"unknown mp_20 split {split!r}; choose from {', '.join(SPLITS)}")
    frame = pd.read_csv(DATA_DIR / f"{split}.csv.gz")
    frame["element_set"] = [frozenset(_ELEMENT_RE.findall(text)) for text in frame["elements"]]
    frame["split"] = split
    return frame


def seed_table(*, splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """All seed rows (unparsed CIFs) of the given splits, with an extra `element_set` column."""
    return pd.concat([_read_split(s) for s in splits], ignore_index=True)


def _parse_cif(cif: str) -> Structure:
    with warnings.catch_warnings():
        # pymatgen warns about rounding near-ideal fractional coordinates; harmless for these cells
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def seed_loaders(*, splits: Sequence[str] = SPLITS) -> list[tuple[str, str, Callable[[], Structure]]]:
    """(material_id, reduced formula, zero-argument CIF parser) for every seed row; parses nothing now."""
    table = seed_table(splits=splits)
    formulas = {f: Composition(f).reduced_formula for f in table["pretty_formula"].unique()}
    return [
        (str(ident), formulas[formula], partial(_parse_cif, cif))
        for ident, formula, cif in zip(
            table["material_id"], table["pretty_formula"], table["cif"], strict=True
        )
    ]


def _row_to_known(row: pd.Series) -> KnownStructure:
    structure = _parse_cif(row["cif"])
    properties: dict[str, object] = {"formula": row["pretty_formula"], "split": row["split"]}
    for key in _FLOAT_PROPERTIES:
        value = row[key]
        if pd.notna(value):
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
    exclude_ids: Iterable[str] = (),
    limit: int | None = None,
    seed: int = 0,
) -> list[KnownStructure]:
    """Load mp_20 crystals as `KnownStructure`s, filtering before parsing.

    Args:
        splits: Which bundled splits to read ("train", "val").
        elements: If given, every element of a crystal must be in this set.
        chemical_systems: If given, a crystal must lie inside one of these systems (e.g. "Li-Fe-P-O"),
            apart from at most `max_foreign_elements` elements outside it. Use `max_foreign_elements>0` to
            fetch substitution parents for a target system (e.g. LiMnPO4 for "Li-Fe-P-O").
        max_foreign_elements: See `chemical_systems`.
        min_elements: Smallest number of distinct elements.
        max_elements: Largest number of distinct elements.
        exclude_ids: Material ids to skip.
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
    excluded = set(exclude_ids)
    if excluded:
        mask &= ~table["material_id"].isin(excluded)
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
