"""Reading, writing and hashing crystal structures (pymatgen `Structure` is the currency between rooms)."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from loop.errors import InputError


def structure_hash(structure: Structure) -> str:
    """A stable 16-hex-digit id for one concrete structure.

    The same input always hashes the same; a translated copy, a Niggli-equivalent cell or a permutation of sites
    hashes the same too (the cell is Niggli-reduced, sites are wrapped, the origin is put on a site of the lowest-Z
    species chosen canonically, and sites are sorted). Symmetry-equivalent but differently-placed copies are the funnel's business
    (StructureMatcher), not the hash's.
    """
    reduced = structure.get_reduced_structure("niggli")
    z = np.array([site.specie.Z for site in reduced], dtype=int)
    frac = np.array(reduced.frac_coords, dtype=float)
    best: list | None = None
    # Try every site of the rarest-lowest species as the origin and keep the smallest listing: translation-invariant.
    for anchor in frac[z == z.min()]:
        shifted = np.round((frac - anchor) % 1.0, 4) % 1.0
        order = np.lexsort((shifted[:, 2], shifted[:, 1], shifted[:, 0], z))
        listing = [[int(z[i]), *shifted[i].tolist()] for i in order]
        if best is None or listing < best:
            best = listing
    payload = {"lattice": np.round(reduced.lattice.parameters, 3).tolist(), "sites": best}
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()[:16]


def structure_to_json(structure: Structure) -> str:
    return json.dumps(structure.as_dict(), separators=(",", ":"))


def structure_from_json(text: str) -> Structure:
    return Structure.from_dict(json.loads(text))


def _check_sane(structure: Structure, where: str) -> Structure:
    if len(structure) == 0:
        raise InputError(f"{where}: the structure has no atoms")
    if not (np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()):
        raise InputError(
            f"{where}: the lattice or atomic coordinates hold NaN or infinite numbers; fix them in the file"
        )
    if not structure.is_ordered:
        raise InputError(
            f"{where}: partial occupancies are not supported; give an ordered cell (e.g. a supercell)"
        )
    if structure.volume <= 1e-3 or not np.isfinite(structure.volume):
        raise InputError(f"{where}: the cell has zero volume")
    return structure


def _check_cif_numbers(path: Path) -> None:
    """Name a NaN or infinite cell parameter or coordinate in a CIF (pymatgen drops such a block and then reports
    only that the file holds no structure)."""
    # CIF and ASE readers/writers only in the file commands: this module is on `matloop status`'s path (~1 s).
    from pymatgen.io.cif import CifFile

    try:
        blocks = CifFile.from_file(str(path)).data.values()
    except Exception:  # not even CIF syntax: the caller's message stands
        return
    for block in blocks:
        for key, value in block.data.items():
            if not key.startswith(("_cell_length", "_cell_angle", "_atom_site_fract", "_atom_site_cartn")):
                continue
            for item in value if isinstance(value, list) else [value]:
                try:
                    number = float(str(item).split("(")[0])
                except ValueError:
                    continue
                if not np.isfinite(number):
                    raise InputError(
                        f"{path}: {key} holds {item!r} (NaN or infinite); fix the number in the file"
                    )


def read_structures(paths: Iterable[str | Path]) -> list[tuple[str, Structure]]:
    """Read every structure in `paths` (CIF, POSCAR/.vasp, pymatgen JSON, extxyz/xyz/traj with several frames).

    Returns:
        (label, structure) pairs; the label is the file name, with `#i` appended for multi-frame files.

    Raises:
        InputError: a file is missing, empty, or not a readable crystal (one line, naming the file).
    """
    out: list[tuple[str, Structure]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise InputError(
                f"{path}: no such file; give the path of a CIF, POSCAR, extxyz or pymatgen JSON file"
            )
        suffix = path.suffix.lower()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if suffix in (".extxyz", ".xyz", ".traj"):
                    # ASE only for extxyz/traj files (see `_check_cif_numbers`).
                    from ase.io import read as ase_read
                    from pymatgen.io.ase import AseAtomsAdaptor

                    frames = ase_read(str(path), index=":")
                    structures = [AseAtomsAdaptor.get_structure(a) for a in frames]
                elif suffix == ".json":
                    structures = [Structure.from_dict(json.loads(path.read_text()))]
                else:
                    structures = [Structure.from_file(str(path))]
        except InputError:
            raise
        except Exception as exc:  # parsers raise anything from ValueError to IndexError on garbage
            if suffix == ".cif":
                _check_cif_numbers(path)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"{path}: not a readable crystal structure ({reason[:120]}); check the file format"
            ) from None
        if not structures:
            raise InputError(f"{path}: the file holds no structure")
        for i, s in enumerate(structures):
            label = path.name if len(structures) == 1 else f"{path.name}#{i}"
            out.append((label, _check_sane(s, label)))
    return out


def write_structures(
    structures: Sequence[Structure], out: Path, *, names: Sequence[str] | None = None
) -> None:
    """Write structures to an extxyz file (`out` ends with .extxyz/.xyz) or into a folder of CIFs (anything else)."""
    out = Path(out)
    if out.suffix.lower() in (".extxyz", ".xyz"):
        append_extxyz(structures, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:05d}_{s.composition.reduced_formula}" for i, s in enumerate(structures)]
    for name, s in zip(names, structures, strict=True):
        s.to(filename=str(out / f"{name}.cif"))


def append_extxyz(structures: Sequence[Structure], path: Path) -> None:
    """Append structures to an extxyz file (used for incremental, kill-safe writes of batches)."""
    # ASE only for extxyz output (see `_check_cif_numbers`).
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    ase_write(str(path), atoms, format="extxyz", append=True)


SYMPREC = 0.1
"""Å: the symmetry tolerance of every space group the campaign reports (status, report, audits), loose enough for
relaxed cells."""


def space_group(structure: Structure | None, *, with_number: bool = True) -> str:
    """Hermann-Mauguin symbol, with its number in parentheses unless `with_number` is False, at `SYMPREC`; "?" when
    there is no structure or spglib cannot decide."""
    if structure is None:
        return "?"
    try:
        sga = SpacegroupAnalyzer(structure, symprec=SYMPREC)
        symbol = sga.get_space_group_symbol()
        return f"{symbol} ({sga.get_space_group_number()})" if with_number else symbol
    except Exception:  # spglib fails on a broken cell; a table still prints the row
        return "?"
