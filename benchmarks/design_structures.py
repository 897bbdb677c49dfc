"""Known crystals for the design-check validations, read from the structure data bundled with the generator.

Materials Project entries (CC BY 4.0; see generator/data/*/ATTRIBUTION.md), looked up by material id in the mp_20
and mpts_52 splits under generator/data. Lengths in Å.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import pandas as pd
from pymatgen.core import Structure

ROOT = Path(__file__).resolve().parents[1]
SPLITS = [
    ROOT / "generator" / "data" / name / f"{part}.csv.gz"
    for name, parts in (("mp_20", ("train", "val")), ("mpts_52", ("train", "val", "test")))
    for part in parts
]


@cache
def _index() -> dict[str, str]:
    cifs: dict[str, str] = {}
    for path in SPLITS:
        frame = pd.read_csv(path, usecols=["material_id", "cif"])
        cifs.update(zip(frame["material_id"], frame["cif"], strict=True))
    return cifs


def bundled(material_id: str) -> Structure:
    """The bundled crystal `material_id` (e.g. "mp-149"), as its primitive cell."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(_index()[material_id], fmt="cif")
        return structure.get_primitive_structure(tolerance=0.01)
