"""Small crystal cells the benchmark scripts build: simple metal prototypes, B32 LiAl, strained and rattled
copies, and the known crystals bundled with the generator (looked up by Materials Project id).

Bundled crystals: Materials Project entries (CC BY 4.0; see generator/data/*/ATTRIBUTION.md) in the mp_20 and
mpts_52 splits under generator/data. Lengths in Å.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Lattice, Structure

ROOT = Path(__file__).resolve().parents[2]
SPLITS = [
    ROOT / "generator" / "data" / name / f"{part}.csv.gz"
    for name, parts in (("mp_20", ("train", "val")), ("mpts_52", ("train", "val", "test")))
    for part in parts
]
FCC_SITES = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]  # fractional, conventional fcc cell


@cache
def _index() -> dict[str, str]:
    cifs: dict[str, str] = {}
    for path in SPLITS:
        frame = pd.read_csv(path, usecols=["material_id", "cif"])
        cifs.update(zip(frame["material_id"], frame["cif"], strict=True))
    return cifs


def bundled(material_id: str) -> Structure:
    """The bundled crystal `material_id` (e.g. "mp-149"), as its primitive cell; KeyError when not bundled."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(_index()[material_id], fmt="cif")
        return structure.get_primitive_structure(tolerance=0.01)


def fcc(element: str, a: float) -> Structure:
    """The conventional 4-atom fcc cell of `element`, cubic constant `a` (Å)."""
    return Structure(Lattice.cubic(a), [element] * 4, FCC_SITES)


def bcc(element: str, a: float) -> Structure:
    """The conventional 2-atom bcc cell of `element`, cubic constant `a` (Å)."""
    return Structure(Lattice.cubic(a), [element] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])


def hcp(element: str, a: float, *, c_over_a: float = 1.633) -> Structure:
    """The 2-atom hcp cell of `element`, in-plane constant `a` (Å)."""
    return Structure(
        Lattice.hexagonal(a, a * c_over_a), [element] * 2, [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
    )


def b32_lial(a: float = 6.37) -> Structure:
    """B32 (NaTl-type) LiAl, conventional 16-atom cell: two interpenetrating diamond lattices, Li on one and Al on
    the other, cubic constant `a` (Å)."""
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def li_al_cells() -> dict[str, Structure]:
    """The Li-Al convergence cells, primitive and Niggli-reduced, near their PBE equilibrium volumes (Å): fcc, hcp
    and bcc Al; bcc, fcc and cI16 Li; B32 LiAl; the bundled Li3Al2 (mp-16506) and LiAl3 (mp-975906)."""
    from oracle.ase_runner import niggli_reduce

    built = {
        "Al_fcc": fcc("Al", 4.04),
        "Al_hcp": hcp("Al", 2.86, c_over_a=1.63),
        "Al_bcc": bcc("Al", 3.23),
        "Li_bcc": bcc("Li", 3.44),
        "Li_fcc": fcc("Li", 4.33),
        "LiAl_B32": b32_lial(6.37),
    }
    # Bundled cells are primitive already; the default tolerance would fold cI16 Li onto bcc.
    out = {k: v.get_primitive_structure() for k, v in built.items()}
    out |= {"Li_cI16": bundled("mp-567337"), "Li3Al2": bundled("mp-16506"), "LiAl3": bundled("mp-975906")}
    return {k: niggli_reduce(v.get_reduced_structure("niggli")) for k, v in out.items()}


def strained_al(n: int) -> list[Structure]:
    """`n` one-atom fcc Al cells, 4.04 Å conventional constant strained by 0.5 % steps (distinct hashes)."""
    return [fcc("Al", 4.04 * (1 + 0.005 * i)).get_primitive_structure() for i in range(n)]


def rattled_cu_au(n: int, *, seed: int = 0) -> list[Structure]:
    """`n` rattled, strained 4-atom fcc Cu-Au orderings (Vegard lattice constant ± 3 %, 0.05 Å rattle)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        n_au = i % 5
        species = ["Au"] * n_au + ["Cu"] * (4 - n_au)
        a = (3.61 + (4.08 - 3.61) * n_au / 4) * (1 + rng.uniform(-0.03, 0.03))
        coords = np.asarray(FCC_SITES) + rng.normal(0, 0.05 / a, size=(4, 3))
        out.append(Structure(Lattice.cubic(a), species, coords))
    return out
