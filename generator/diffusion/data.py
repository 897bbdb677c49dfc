"""Crystal datasets as packed tensors for the diffusion model.

A crystal is stored as atomic numbers Z, fractional coordinates in [0, 1) and its symmetric lattice
P = sqrtm(L Lᵀ) in Å (rows are lattice vectors; rotation-free). Labels: space group (from the structure),
band gap (eV) and energy above hull (eV/atom) where the source data has them, HHI production score
(pymatgen's table, computed from the composition), the chemical system (from the composition) and the CHGNet
0.3.0 ML labels magnetic density (μB/Å³) and bulk modulus (GPa) from `chgnet_labels.csv.gz` where present
(see `generator.diffusion.chgnet_labels`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Lattice, Structure

MAX_Z = 100
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "mp_20"
CHGNET_LABELS = DATA_DIR / "chgnet_labels.csv.gz"
_CACHE_VERSION = "v1"


def cache_dir() -> Path:
    """Where parsed datasets are cached (outside the repository); `MATLOOP_CACHE` overrides."""
    root = os.environ.get("MATLOOP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "matloop")
    path = Path(root) / "diffusion"
    path.mkdir(parents=True, exist_ok=True)
    return path


def symmetric_lattice(matrix: np.ndarray) -> np.ndarray:
    """Return P = (L Lᵀ)^½ for a lattice matrix L with lattice vectors as rows (Å).

    P has the same Gram matrix as L, so it describes the same crystal up to a rotation (or, for a
    left-handed L, its mirror image) with the same fractional coordinates.
    """
    gram = matrix @ matrix.T
    w, v = np.linalg.eigh(gram)
    return (v * np.sqrt(np.clip(w, 1e-12, None))) @ v.T


def hhi_score(structure_or_composition) -> float:
    """HHI production score (0-10000) of a composition, from pymatgen's bundled table; NaN if an element has none."""
    from pymatgen.analysis.hhi import HHIModel

    comp = getattr(structure_or_composition, "composition", structure_or_composition)
    value = _hhi_model(HHIModel).get_hhi_production(comp)
    return float("nan") if value is None else float(value)


_HHI = None


def _hhi_model(cls):
    global _HHI
    if _HHI is None:
        _HHI = cls()
    return _HHI


@dataclass
class CrystalTensors:
    """Packed crystals.

    Attributes:
        z: (total_atoms,) atomic numbers.
        frac: (total_atoms, 3) fractional coordinates in [0, 1).
        offsets: (n_crystals + 1,) start index of each crystal in `z`/`frac`.
        lattice: (n_crystals, 3, 3) symmetric lattice P in Å.
        spacegroup: (n_crystals,) space-group number, 0 when unknown.
        band_gap: (n_crystals,) eV, NaN when unknown.
        e_above_hull: (n_crystals,) eV/atom, NaN when unknown.
        hhi: (n_crystals,) HHI production score, NaN when unknown.
        magnetic_density: (n_crystals,) μB/Å³ (CHGNet label), NaN when unknown; omitted means all unknown.
        bulk_modulus: (n_crystals,) GPa (CHGNet label), NaN when unknown; omitted means all unknown.
    """

    z: torch.Tensor
    frac: torch.Tensor
    offsets: torch.Tensor
    lattice: torch.Tensor
    spacegroup: torch.Tensor
    band_gap: torch.Tensor
    e_above_hull: torch.Tensor
    hhi: torch.Tensor
    # optional so that tensors cached before these labels existed still load
    magnetic_density: torch.Tensor | None = field(default=None)
    bulk_modulus: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        n = int(self.lattice.shape[0])
        if self.magnetic_density is None:
            self.magnetic_density = torch.full((n,), float("nan"))
        if self.bulk_modulus is None:
            self.bulk_modulus = torch.full((n,), float("nan"))

    def __len__(self) -> int:
        return int(self.lattice.shape[0])

    @property
    def num_atoms(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def concat(cls, parts: Sequence[CrystalTensors]) -> CrystalTensors:
        offs = [torch.zeros(1, dtype=torch.long)]
        start = 0
        for p in parts:
            offs.append(p.offsets[1:] + start)
            start += int(p.offsets[-1])
        fields = {
            k: torch.cat([getattr(p, k) for p in parts]) for k in cls.__dataclass_fields__ if k != "offsets"
        }
        return cls(offsets=torch.cat(offs), **fields)

    def subset(self, idx: torch.Tensor) -> CrystalTensors:
        parts_z, parts_f, counts = [], [], []
        for i in idx.tolist():
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            parts_z.append(self.z[a:b])
            parts_f.append(self.frac[a:b])
            counts.append(b - a)
        offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.long), 0)
        return CrystalTensors(
            z=torch.cat(parts_z),
            frac=torch.cat(parts_f),
            offsets=offsets,
            lattice=self.lattice[idx],
            spacegroup=self.spacegroup[idx],
            band_gap=self.band_gap[idx],
            e_above_hull=self.e_above_hull[idx],
            hhi=self.hhi[idx],
            magnetic_density=self.magnetic_density[idx],
            bulk_modulus=self.bulk_modulus[idx],
        )


def structure_arrays(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Niggli-reduce a structure; return (Z, fractional coords in [0,1), symmetric lattice P in Å)."""
    reduced = structure.get_reduced_structure()
    z = np.array([site.specie.Z for site in reduced], dtype=np.int64)
    frac = np.mod(reduced.frac_coords, 1.0)
    frac[frac >= 1.0] = 0.0
    return z, frac, symmetric_lattice(reduced.lattice.matrix)


def from_structures(
    structures: Sequence[Structure],
    *,
    spacegroups: Sequence[int] | None = None,
    band_gaps: Sequence[float] | None = None,
    e_above_hull: Sequence[float] | None = None,
    magnetic_density: Sequence[float] | None = None,
    bulk_modulus: Sequence[float] | None = None,
) -> CrystalTensors:
    """Pack pymatgen structures (ordered, ≤ MAX_Z) into tensors; labels default to unknown (NaN / 0).

    Units: band gap eV, energy above hull eV/atom, magnetic density μB/Å³, bulk modulus GPa.
    """
    zs, fracs, lats, hhis, sgs = [], [], [], [], []
    for i, s in enumerate(structures):
        z, f, p = structure_arrays(s)
        zs.append(z)
        fracs.append(f)
        lats.append(p)
        try:
            hhis.append(hhi_score(s))
        except Exception:
            hhis.append(float("nan"))
        if spacegroups is not None:
            sgs.append(int(spacegroups[i]))
        else:
            try:
                sgs.append(int(s.get_space_group_info(symprec=0.1)[1]))
            except Exception:
                sgs.append(0)
    n = len(structures)
    counts = torch.tensor([len(z) for z in zs], dtype=torch.long)
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    nan = [float("nan")] * n
    return CrystalTensors(
        z=torch.from_numpy(np.concatenate(zs)),
        frac=torch.from_numpy(np.concatenate(fracs)).float(),
        offsets=offsets,
        lattice=torch.from_numpy(np.stack(lats)).float(),
        spacegroup=torch.tensor(sgs, dtype=torch.long),
        band_gap=torch.tensor(list(band_gaps) if band_gaps is not None else nan, dtype=torch.float32),
        e_above_hull=torch.tensor(
            list(e_above_hull) if e_above_hull is not None else nan, dtype=torch.float32
        ),
        hhi=torch.tensor(hhis, dtype=torch.float32),
        magnetic_density=torch.tensor(
            list(magnetic_density) if magnetic_density is not None else nan, dtype=torch.float32
        ),
        bulk_modulus=torch.tensor(
            list(bulk_modulus) if bulk_modulus is not None else nan, dtype=torch.float32
        ),
    )


def read_mp20_frame(split: str) -> pd.DataFrame:
    """The bundled mp_20 table for `split` ("train" or "val")."""
    return pd.read_csv(DATA_DIR / f"{split}.csv.gz")


def _parse_frame(frame: pd.DataFrame) -> CrystalTensors:
    structures = [Structure.from_str(c, fmt="cif") for c in frame["cif"]]
    return from_structures(
        structures,
        spacegroups=frame["spacegroup.number"].tolist(),
        band_gaps=frame["band_gap"].tolist(),
        e_above_hull=frame["e_above_hull"].tolist(),
    )


def chgnet_label_columns(
    material_ids: Sequence[str], *, path: Path = CHGNET_LABELS
) -> tuple[np.ndarray, np.ndarray]:
    """CHGNet labels for `material_ids` from the bundled table: (magnetic density μB/Å³, bulk modulus GPa), NaN if absent."""
    n = len(material_ids)
    if not path.exists():
        return np.full(n, np.nan), np.full(n, np.nan)
    table = pd.read_csv(path).drop_duplicates("material_id").set_index("material_id")
    table = table.reindex(list(material_ids))
    return table["magnetic_density"].to_numpy(float), table["bulk_modulus"].to_numpy(float)


def _attach_chgnet_labels(data: CrystalTensors, material_ids: Sequence[str]) -> CrystalTensors:
    # labels live in their own small table (not in the parsed-structure cache), so new labels need no re-parse
    mag, bulk = chgnet_label_columns(material_ids)
    data.magnetic_density = torch.tensor(mag, dtype=torch.float32)
    data.bulk_modulus = torch.tensor(bulk, dtype=torch.float32)
    return data


def _parsed_rows(frame: pd.DataFrame, rows: Sequence[int], *, cache: Path) -> CrystalTensors:
    """The crystals of `frame`'s `rows` (in that order), parsing only those no earlier call parsed.

    Parsing a CIF takes about 15 ms, and a generator fine-tune mixes in 2,000 training crystals (about 35 s a
    round), so parsed rows accumulate in `cache` (labels excluded, as in the whole-split cache). Each row is parsed
    on its own, so a row read from the cache equals a row parsed now. A cache that cannot be read is ignored and
    rewritten; two processes writing at once only lose each other's new rows (the file is replaced whole).
    """
    if not rows:
        return _parse_frame(frame.iloc[[]])
    known: list[int] = []
    stored: CrystalTensors | None = None
    if cache.exists():
        try:
            payload = torch.load(cache, weights_only=True)
            known, stored = payload["rows"].tolist(), CrystalTensors(**payload["data"])
            if len(known) != len(stored):
                known, stored = [], None
        except Exception:  # a damaged or foreign file: parse afresh and replace it
            known, stored = [], None
    position = {row: i for i, row in enumerate(known)}
    missing = [row for row in dict.fromkeys(rows) if row not in position]
    if missing:
        parsed = _parse_frame(frame.iloc[missing])
        stored = parsed if stored is None else CrystalTensors.concat([stored, parsed])
        for row in missing:
            position[row] = len(position)
        known = [*known, *missing]
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        try:
            torch.save({"rows": torch.tensor(known, dtype=torch.long), "data": stored.to_dict()}, tmp)
            tmp.replace(cache)
        except (OSError, RuntimeError):  # a full or read-only disk costs the next call a parse, not this one
            tmp.unlink(missing_ok=True)
    assert stored is not None  # rows were asked for, so some were parsed or cached
    return stored.subset(torch.tensor([position[row] for row in rows], dtype=torch.long))


def load_mp20(
    split: str = "train", *, limit: int | None = None, rows: Sequence[int] | None = None
) -> CrystalTensors:
    """The bundled mp_20 split as tensors.

    The whole split is parsed once and cached; with `limit` (first rows) or `rows` (row indices) and no
    whole-split cache, only those rows are parsed, so small requests stay fast on a fresh machine, and kept in a
    row cache beside it (`_parsed_rows`), so the next request parses only rows not seen before.
    """
    path = DATA_DIR / f"{split}.csv.gz"
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    cached = cache_dir() / f"mp20_{split}_{digest}_{_CACHE_VERSION}.pt"
    if rows is None and limit is not None:
        rows = range(limit)
    if cached.exists():
        data = CrystalTensors(**torch.load(cached, weights_only=True))
        ids = pd.read_csv(path, usecols=["material_id"])["material_id"].tolist()
    elif rows is not None:
        frame = read_mp20_frame(split)
        wanted = [i for i in rows if 0 <= i < len(frame)]
        data = _parsed_rows(frame, wanted, cache=cached.with_name(f"{cached.stem}_rows.pt"))
        return _attach_chgnet_labels(data, frame["material_id"].iloc[wanted].tolist())
    else:
        frame = read_mp20_frame(split)
        data = _parse_frame(frame)
        tmp = cached.with_suffix(".tmp")
        torch.save(data.to_dict(), tmp)
        tmp.replace(cached)
        ids = frame["material_id"].tolist()
    data = _attach_chgnet_labels(data, ids)
    if rows is not None:
        keep = torch.tensor([i for i in rows if 0 <= i < len(data)], dtype=torch.long)
        data = data.subset(keep)
    return data


def to_structure(z: Sequence[int], frac: np.ndarray, lattice: np.ndarray) -> Structure:
    """Build a pymatgen Structure from atomic numbers, fractional coordinates and a lattice (Å)."""
    return Structure(
        Lattice(np.asarray(lattice, dtype=float)), [int(x) for x in z], np.asarray(frac, dtype=float)
    )


def mean_density(data: CrystalTensors) -> float:
    """Mean atomic density of the data (atoms/Å³)."""
    vol = torch.linalg.det(data.lattice.double()).abs()
    return float((data.num_atoms.double() / vol).mean())
