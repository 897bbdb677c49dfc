"""The pool file format of the acquisition benchmarks: one gzipped JSON file per labelled pool.

A pool (written by `benchmarks.build_pool`, extended by `benchmarks.rescreen_pool`) holds, per reference and
candidate: the structure the oracle labelled (compact: lattice in Å, species, fractional coordinates), the
oracle-relaxed structure when the oracle relaxes, the oracle label (eV/atom, eV/Å, GPa), the pretrained emulator's
per-member energies (eV/atom), the ground-truth E_hull (eV/atom) and verdict; plus the build's settings and summary.
This module reads and writes that format (one implementation), and loads a pool as arrays for a replay (`Pool`).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

POOL_FORMAT = 1


def compact_structure(structure: Structure) -> dict[str, Any]:
    """Lattice (Å), species and fractional coordinates, rounded: a few hundred bytes per small cell."""
    return {
        "lattice": np.round(structure.lattice.matrix, 6).tolist(),
        "species": [site.specie.symbol for site in structure],
        "frac": np.round(structure.frac_coords, 6).tolist(),
    }


def structure_from_compact(data: dict[str, Any]) -> Structure:
    """Inverse of `compact_structure`."""
    return Structure(Lattice(data["lattice"]), data["species"], data["frac"])


def read_pool(path: Path) -> dict[str, Any]:
    """A pool file as `write_pool` writes it; a pool of another format version is refused (ValueError)."""
    with gzip.open(path, "rt") as fh:
        pool = json.load(fh)
    if pool.get("format") != POOL_FORMAT:
        raise ValueError(f"{path}: pool format {pool.get('format')} is not {POOL_FORMAT}; rebuild it")
    return pool


def write_pool(pool: dict[str, Any], path: Path) -> None:
    """Write `pool` to `path` (gzipped JSON) whole or not at all: a stopped write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with gzip.open(tmp, "wt") as fh:
        json.dump(pool, fh, separators=(",", ":"))
    os.replace(tmp, path)


def pool_candidates(store: Any) -> list[dict[str, Any]]:
    """Distinct emulator-relaxed candidates in generation order: (relaxed hash, parent hash, source, batch)."""
    source_of = {}
    for row in store.structure_rows(where="source NOT IN ('seed', 'relaxed')"):
        source_of[row.hash] = (row.source, row.parent, row.provenance, row.round)
    seen: set[str] = set()
    out = []
    for p in (p for preds in store.predictions_by_round().values() for p in preds):
        h = p.relaxed_hash
        if not h or h in seen or p.e_hull is None:
            continue  # collapsed or unplaceable relaxations are not candidates a campaign would query
        seen.add(h)
        source, parent, provenance, batch = source_of[p.hash]
        out.append(
            {
                "hash": h,
                "generated_hash": p.hash,
                "source": source,
                "parent": parent,
                "provenance": provenance,
                "batch": batch,
                "screen": {
                    "energy_per_atom": p.energy_per_atom,
                    "energy_per_atom_std": p.energy_per_atom_std,
                    "e_hull": p.e_hull,
                    "e_hull_std": p.e_hull_std,
                    **p.data,
                },
            }
        )
    return out


@dataclass
class Pool:
    """A pool's data as arrays: references first (indices < n_ref), then candidates."""

    system: str
    near_stable: float
    oracle: dict[str, Any]
    emulator_settings: dict[str, Any]
    structures: list[Structure]
    oracle_structures: list[Structure]
    role: np.ndarray
    oracle_energy: np.ndarray  # eV/atom, NaN when the label failed
    hit: np.ndarray
    members: np.ndarray  # (K, n) pretrained emulator at the labelled geometry, eV/atom
    members_oracle_geometry: np.ndarray  # (K, n) at the oracle's (relaxed) geometry, eV/atom
    entries: list[dict[str, Any]] = field(repr=False)

    @property
    def refs(self) -> np.ndarray:
        return np.flatnonzero(self.role == "reference")

    @property
    def cands(self) -> np.ndarray:
        return np.flatnonzero(self.role == "candidate")


def rescreened(entry: dict[str, Any]) -> bool:
    """Whether the entry carries a usable continued screening relaxation (`benchmarks.rescreen_pool`)."""
    r = entry.get("rescreen")
    return bool(r) and not r["collapsed"] and "member_energy_per_atom_rescreened" in entry["emulator"]


def load_pool(path: Path, *, near_stable: float | None = None, screening: str = "as_built") -> Pool:
    """Read a pool.

    Args:
        path: Pool file of `benchmarks.build_pool`.
        near_stable: Re-judge its hits with another threshold than the one it was built with (eV/atom).
        screening: ``as_built``: candidates at the geometry the build's screening reached within its step budget;
            ``rescreened``: where `benchmarks.rescreen_pool` continued an unconverged one, at that new geometry and energy.
    """
    from loop.science.verdicts import StabilityRule

    data = read_pool(path)
    entries = data["entries"]
    if screening == "rescreened":
        if not any(rescreened(e) for e in entries):
            raise ValueError(
                f"{path}: no rescreened candidates; run python -m benchmarks.rescreen_pool on it first"
            )
        entries = [
            {
                **e,
                "structure": e["rescreen"]["structure"],
                "emulator": {
                    **e["emulator"],
                    "member_energy_per_atom": e["emulator"]["member_energy_per_atom_rescreened"],
                },
            }
            if rescreened(e)
            else e
            for e in entries
        ]
    rule = StabilityRule(near_stable=data["summary"]["near_stable"] if near_stable is None else near_stable)
    k = len(entries[0]["emulator"]["member_energy_per_atom"])
    nan = [math.nan] * k
    structures = [structure_from_compact(e["structure"]) for e in entries]
    return Pool(
        system=data["system"],
        near_stable=rule.near_stable,
        oracle=data["oracle"],
        emulator_settings=data["emulator"]["settings"],
        structures=structures,
        oracle_structures=[
            structure_from_compact(e["oracle_relaxed_structure"]) if "oracle_relaxed_structure" in e else s
            for e, s in zip(entries, structures, strict=True)
        ],
        role=np.array([e["role"] for e in entries]),
        oracle_energy=np.array([e["oracle"].get("energy_per_atom", math.nan) for e in entries], dtype=float),
        hit=np.array([rule.is_hit(e["e_hull"]) for e in entries]),
        members=np.array([e["emulator"]["member_energy_per_atom"] for e in entries], dtype=float).T,
        members_oracle_geometry=np.array(
            [e["emulator"].get("member_energy_per_atom_at_oracle_geometry", nan) for e in entries],
            dtype=float,
        ).T,
        entries=entries,
    )


def load_committee(pool: Pool, paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Energies (eV/atom) of the pool's entries at other levels of theory, for a committee across model families.

    Each path is a pool file of the same candidates labelled by another oracle (e.g. the `mlff` pool a GPAW pool was
    drawn from): its label of an entry is what that model family gives at the end of its own relaxation from the
    same starting geometry, as a campaign's committee member (`loop.work.screening.committee_e_hull`) does.

    Returns:
        Family name (the other pool's oracle kind) -> energies aligned with `pool.entries`, NaN where that pool has
        no successful label of the entry.
    """
    out: dict[str, np.ndarray] = {}
    for path in paths:
        data = read_pool(path)
        energy = {
            e["hash"]: e["oracle"]["energy_per_atom"]
            for e in data["entries"]
            if e["oracle"]["status"] == "ok"
        }
        out[data["oracle"]["kind"]] = np.array([energy.get(e["hash"], math.nan) for e in pool.entries], float)
    return out
