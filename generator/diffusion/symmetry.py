"""Space-group templates for symmetry-constrained sampling.

A *template* is a space group plus a list of occupied Wyckoff positions (orbits), taken from a training
crystal of that group (as DiffCSP++ does). The sampler keeps every atom of an orbit on the orbit's symmetric
images of one representative point and keeps the lattice metric in the group's crystal family, so the sampled
crystal has (at least) the requested space group by construction; the denoiser still decides the free
Wyckoff parameters, the cell and the element of each orbit.

Everything here works in the *primitive* cell of the conventional (ITA standard, pyxtal) setting, because the
denoiser was trained on primitive (Niggli-reduced) cells of at most 20 atoms. Fractional coordinates are
unitless; Gram matrices in Å².
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from generator.base import GeneratorError

TEMPLATE_FILE = Path(__file__).resolve().parent.parent / "data" / "mp_20" / "wyckoff_templates.json.gz"

# Rows: primitive basis vectors in conventional fractional coordinates, per centring letter (ITA settings,
# rhombohedral groups in the obverse hexagonal setting).
_TO_PRIMITIVE = {
    "P": np.eye(3),
    "C": np.array([[0.5, 0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),
    "A": np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, -0.5, 0.5]]),
    "I": np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]),
    "F": np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]),
    "R": np.array([[2 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, 1 / 3], [-1 / 3, -2 / 3, 1 / 3]]),
}


def crystal_family(space_group: int) -> str:
    """Lattice constraint family of a space group (hexagonal axes for trigonal groups)."""
    if space_group <= 2:
        return "triclinic"
    if space_group <= 15:
        return "monoclinic"
    if space_group <= 74:
        return "orthorhombic"
    if space_group <= 142:
        return "tetragonal"
    if space_group <= 194:
        return "hexagonal"
    return "cubic"


@dataclass(frozen=True)
class Orbit:
    """One occupied Wyckoff position in the primitive basis.

    Attributes:
        letter: Wyckoff letter (ITA).
        rot: (m, 3, 3) rotation parts of the operations g_j mapping the representative to member j.
        trans: (m, 3) translation parts of g_j.
        proj: (3, 3) projector onto the Wyckoff position's free directions (fractional).
        origin: (3,) a point of the Wyckoff position (fractional).
    """

    letter: str
    rot: np.ndarray
    trans: np.ndarray
    proj: np.ndarray
    origin: np.ndarray

    @property
    def multiplicity(self) -> int:
        return int(self.rot.shape[0])


@dataclass(frozen=True)
class Template:
    """A space group with occupied Wyckoff positions (primitive cell).

    Attributes:
        space_group: ITA number.
        orbits: Occupied orbits; atoms are numbered orbit by orbit, member by member.
        to_primitive: (3, 3) rows = primitive vectors in conventional fractional coordinates.
        family: Crystal family for the lattice constraint.
        source_z: Atomic number of each orbit in the training crystal the template came from (not used for
            sampling; the denoiser draws the elements).
    """

    space_group: int
    orbits: tuple[Orbit, ...]
    to_primitive: np.ndarray
    family: str
    source_z: tuple[int, ...] = ()

    @property
    def num_atoms(self) -> int:
        return sum(o.multiplicity for o in self.orbits)


def _primitive_ops(space_group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, rotations, translations) of the general position converted to the primitive basis."""
    from pyxtal.symmetry import Group

    group = Group(space_group)
    t = _TO_PRIMITIVE[group.symbol[0]]
    t_inv_t = np.linalg.inv(t).T
    rots, trans = [], []
    for op in group[0].ops:
        m = op.affine_matrix
        r = t_inv_t @ m[:3, :3] @ t.T
        if not np.allclose(r, np.round(r), atol=1e-6):
            raise GeneratorError(f"space group {space_group}: non-integer operation in the primitive basis")
        rots.append(np.round(r))
        trans.append(np.mod(t_inv_t @ m[:3, 3], 1.0))
    return t, np.array(rots), np.array(trans)


@functools.lru_cache(maxsize=4096)
def build_orbit(space_group: int, letter: str) -> Orbit:
    """The orbit of Wyckoff position `letter` of `space_group` in the primitive basis."""
    from pyxtal.symmetry import Group

    group = Group(space_group)
    wp = next((w for w in group if w.letter == letter), None)
    if wp is None:
        raise GeneratorError(f"space group {space_group} has no Wyckoff position {letter!r}")
    t, rots, trans = _primitive_ops(space_group)
    t_inv_t = np.linalg.inv(t).T
    m = wp.ops[0].affine_matrix
    lin = t_inv_t @ m[:3, :3] @ t.T
    origin = t_inv_t @ m[:3, 3]
    # Projector onto the image of the Wyckoff map (its free directions).
    proj = lin @ np.linalg.pinv(lin)
    rng = np.random.default_rng(12345)
    rep = np.mod(proj @ (rng.random(3) * 0.37 + 0.11 - origin) + origin, 1.0)
    seen: list[np.ndarray] = []
    keep_r, keep_t = [], []
    for r, tr in zip(rots, trans, strict=True):
        p = np.mod(r @ rep + tr, 1.0)
        if any(np.abs((p - q + 0.5) % 1.0 - 0.5).max() < 1e-5 for q in seen):
            continue
        seen.append(p)
        keep_r.append(r)
        keep_t.append(tr)
    n_cent = round(1 / abs(np.linalg.det(t)))
    expected = wp.multiplicity // n_cent
    if len(seen) != expected:
        raise GeneratorError(
            f"space group {space_group}, Wyckoff {letter}: {len(seen)} primitive images, expected {expected}"
        )
    return Orbit(letter=letter, rot=np.array(keep_r), trans=np.array(keep_t), proj=proj, origin=origin)


def build_template(space_group: int, letters: Sequence[str], source_z: Sequence[int] = ()) -> Template:
    """A template from a space-group number and the Wyckoff letters of its orbits."""
    t, _, _ = _primitive_ops(space_group)
    return Template(
        space_group=space_group,
        orbits=tuple(build_orbit(space_group, letter) for letter in letters),
        to_primitive=t,
        family=crystal_family(space_group),
        source_z=tuple(int(z) for z in source_z),
    )


def extract_template(structure: Structure, *, tol: float = 0.1) -> tuple[int, list[str], list[int]] | None:
    """(space group, Wyckoff letters, atomic numbers) of a crystal via pyxtal, or None if analysis fails."""
    from pyxtal import pyxtal

    try:
        xtal = pyxtal()
        xtal.from_seed(structure, tol=tol)
        sites = [(site.wp.letter, int(structure_z(site.specie))) for site in xtal.atom_sites]
        return int(xtal.group.number), [s[0] for s in sites], [s[1] for s in sites]
    except Exception:  # pyxtal raises many kinds on odd cells; such crystals simply give no template
        return None


def structure_z(specie: object) -> int:
    from pymatgen.core import Element

    return Element(str(specie)).Z


def build_template_file(*, out: Path, splits: Sequence[str] = ("train",), tol: float = 0.1) -> dict[str, int]:
    """Extract templates of the mp_20 crystals and write them as gzipped JSON; returns counts."""
    from generator.diffusion.data import read_mp20_frame

    rows = []
    failed = 0
    for split in splits:
        frame = read_mp20_frame(split)
        for mid, cif in zip(frame["material_id"], frame["cif"], strict=True):
            got = extract_template(Structure.from_str(cif, fmt="cif"), tol=tol)
            if got is None:
                failed += 1
                continue
            sg, letters, zs = got
            try:
                tpl = build_template(sg, letters, zs)
            except GeneratorError:
                failed += 1
                continue
            rows.append({"id": mid, "sg": sg, "wyckoff": letters, "z": zs, "n": tpl.num_atoms})
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as fh:
        json.dump({"tol": tol, "splits": list(splits), "templates": rows}, fh)
    tmp.replace(out)
    return {"templates": len(rows), "failed": failed}


@functools.lru_cache(maxsize=1)
def template_rows() -> tuple[dict, ...]:
    """All shipped templates: dicts with sg, wyckoff (letters), z (element per orbit), n (atoms), id."""
    if not TEMPLATE_FILE.is_file():
        raise GeneratorError(
            f"{TEMPLATE_FILE.name} is missing; rebuild it with python -m generator.diffusion.symmetry"
        )
    with gzip.open(TEMPLATE_FILE, "rt") as fh:
        return tuple(json.load(fh)["templates"])


def templates_for(
    space_group: int,
    *,
    num_atoms: int | None = None,
    min_orbits: int = 1,
    n_species: int | None = None,
    max_atoms: int = 20,
) -> list[dict]:
    """Training templates of a space group (rows with keys sg, wyckoff, z, n), filtered by size.

    With `n_species`, templates whose source crystal had exactly that many elements are preferred (all
    templates with enough orbits are used if none has).
    """
    rows = [
        r
        for r in template_rows()
        if r["sg"] == space_group
        and r["n"] <= max_atoms
        and len(r["wyckoff"]) >= min_orbits
        and (num_atoms is None or r["n"] == num_atoms)
    ]
    if not rows:
        have = sorted({r["sg"] for r in template_rows()})
        what = f" with {num_atoms} atoms" if num_atoms is not None else ""
        what += f" and ≥ {min_orbits} Wyckoff orbits" if min_orbits > 1 else ""
        raise GeneratorError(
            f"space_group={space_group}: no training crystal of this group{what} to take a Wyckoff template "
            f"from ({len(have)} groups have templates); choose another group or drop num_atoms"
        )
    if n_species is not None:
        exact = [r for r in rows if len(set(r["z"])) == n_species]
        rows = exact or rows
    return rows


@dataclass
class BatchSymmetry:
    """Per-atom and per-orbit tensors that symmetrise a batch of crystals sampled from templates.

    Atoms are packed crystal by crystal in template order. Crystals without a template are left alone.
    """

    atom_orbit: torch.Tensor  # (n_atoms,) global orbit index, -1 for unconstrained atoms
    rot: torch.Tensor  # (n_atoms, 3, 3) g_j
    trans: torch.Tensor  # (n_atoms, 3)
    rot_inv: torch.Tensor  # (n_atoms, 3, 3) g_j⁻¹
    trans_inv: torch.Tensor  # (n_atoms, 3)
    orbit_proj: torch.Tensor  # (n_orbits, 3, 3)
    orbit_origin: torch.Tensor  # (n_orbits, 3)
    orbit_first: torch.Tensor  # (n_orbits,) index of each orbit's first atom
    crystal_t: list[np.ndarray | None]  # to_primitive per crystal
    crystal_family: list[str | None]

    @property
    def n_orbits(self) -> int:
        return int(self.orbit_proj.shape[0])

    @classmethod
    def from_templates(cls, templates: Sequence[Template | None], num_atoms: Sequence[int]) -> BatchSymmetry:
        atom_orbit, rot, trans, projs, origins, first = [], [], [], [], [], []
        start = 0
        for tpl, n in zip(templates, num_atoms, strict=True):
            if tpl is None:
                atom_orbit += [-1] * n
                rot += [np.eye(3)] * n
                trans += [np.zeros(3)] * n
                start += n
                continue
            if tpl.num_atoms != n:
                raise ValueError("template atom count does not match the crystal")
            for orb in tpl.orbits:
                first.append(start)
                atom_orbit += [len(projs)] * orb.multiplicity
                rot += list(orb.rot)
                trans += list(orb.trans)
                projs.append(orb.proj)
                origins.append(orb.origin)
                start += orb.multiplicity
        rot_t = torch.tensor(np.array(rot), dtype=torch.float32)
        trans_t = torch.tensor(np.array(trans), dtype=torch.float32)
        rot_inv = torch.linalg.inv(rot_t)
        return cls(
            atom_orbit=torch.tensor(atom_orbit, dtype=torch.long),
            rot=rot_t,
            trans=trans_t,
            rot_inv=rot_inv,
            trans_inv=-torch.einsum("aij,aj->ai", rot_inv, trans_t),
            orbit_proj=torch.tensor(np.array(projs).reshape(-1, 3, 3), dtype=torch.float32),
            orbit_origin=torch.tensor(np.array(origins).reshape(-1, 3), dtype=torch.float32),
            orbit_first=torch.tensor(first, dtype=torch.long),
            crystal_t=[None if tpl is None else tpl.to_primitive for tpl in templates],
            crystal_family=[None if tpl is None else tpl.family for tpl in templates],
        )

    def project_coords(self, frac: torch.Tensor) -> torch.Tensor:
        """Move every orbit onto exact symmetric images of its averaged representative; returns [0,1) coords."""
        if self.n_orbits == 0:
            return frac
        sel = self.atom_orbit >= 0
        idx = self.atom_orbit[sel]
        # each member's estimate of the representative, unwrapped next to the orbit's first member
        est = torch.einsum("aij,aj->ai", self.rot_inv[sel], frac[sel]) + self.trans_inv[sel]
        first_est = torch.zeros(self.n_orbits, 3)
        pos_in_sel = torch.nonzero(sel).squeeze(1)
        first_mask = pos_in_sel == self.orbit_first[idx]
        first_est[idx[first_mask]] = est[first_mask]
        anchor = first_est[idx]
        est = est - torch.round(est - anchor)
        mean = torch.zeros(self.n_orbits, 3).index_add(0, idx, est)
        mean = mean / torch.bincount(idx, minlength=self.n_orbits).clamp_min(1)[:, None].float()
        rep = _project_affine(mean, self.orbit_proj, self.orbit_origin)
        out = frac.clone()
        out[sel] = torch.einsum("aij,aj->ai", self.rot[sel], rep[idx]) + self.trans[sel]
        return torch.remainder(out, 1.0)

    def noise(self, n_atoms: int, *, generator: torch.Generator) -> torch.Tensor:
        """Standard normal noise (n_atoms, 3) that moves each orbit rigidly along its free directions.

        A templated atom gets its orbit's representative noise mapped by its operation g_j (so the orbit stays
        symmetric) with full per-atom variance along the free directions: averaging independent per-atom noise
        over an orbit would shrink it by the multiplicity and bias sampling towards special positions.
        """
        eps = torch.randn(n_atoms, 3, generator=generator)
        if self.n_orbits == 0:
            return eps
        rep = torch.einsum("oij,oj->oi", self.orbit_proj, torch.randn(self.n_orbits, 3, generator=generator))
        sel = self.atom_orbit >= 0
        eps[sel] = torch.einsum("aij,aj->ai", self.rot[sel], rep[self.atom_orbit[sel]])
        return eps

    def project_lattice(self, lattice: torch.Tensor) -> torch.Tensor:
        """Symmetric lattices (B,3,3, Å) with metrics projected onto each template's crystal family."""
        out = lattice.clone()
        for c, (t, fam) in enumerate(zip(self.crystal_t, self.crystal_family, strict=True)):
            if t is None or fam == "triclinic":
                continue
            gram = (lattice[c] @ lattice[c].T).double().numpy()
            t_inv = np.linalg.inv(t)
            conv = project_gram(t_inv @ gram @ t_inv.T, fam)
            out[c] = torch.from_numpy(_sqrt_psd(t @ conv @ t.T)).float()
        return out


def _project_affine(points: torch.Tensor, proj: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Nearest point of each orbit's Wyckoff subspace, over the 27 nearest periodic images of the point."""
    shifts = torch.tensor(
        [[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=points.dtype
    )
    cand = points[:, None, :] + shifts[None] - origin[:, None, :]  # (o, 27, 3)
    on = torch.einsum("oij,okj->oki", proj, cand)
    dist = (cand - on).norm(dim=-1)
    best = dist.argmin(dim=1)
    return on[torch.arange(points.shape[0]), best] + origin


def project_gram(gram: np.ndarray, family: str) -> np.ndarray:
    """Least-squares projection of a conventional-cell Gram matrix (Å²) onto a crystal family's form."""
    g = 0.5 * (gram + gram.T)
    if family == "triclinic":
        return g
    out = np.zeros((3, 3))
    if family == "monoclinic":  # unique axis b
        out[:] = g
        out[0, 1] = out[1, 0] = out[1, 2] = out[2, 1] = 0.0
    elif family == "orthorhombic":
        out = np.diag(np.diag(g))
    elif family == "tetragonal":
        a2 = 0.5 * (g[0, 0] + g[1, 1])
        out = np.diag([a2, a2, g[2, 2]])
    elif family == "hexagonal":  # a = b, γ = 120°: G12 = -a²/2
        a2 = 2.0 * (g[0, 0] + g[1, 1] - g[0, 1]) / 5.0
        out = np.array([[a2, -a2 / 2, 0.0], [-a2 / 2, a2, 0.0], [0.0, 0.0, g[2, 2]]])
    elif family == "cubic":
        out = np.eye(3) * np.trace(g) / 3.0
    else:
        raise ValueError(f"unknown crystal family {family!r}")
    return out


def _sqrt_psd(gram: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (gram + gram.T))
    return (v * np.sqrt(np.clip(w, 1e-8, None))) @ v.T


def main() -> None:
    """Rebuild the shipped template file from the mp_20 training split."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TEMPLATE_FILE)
    parser.add_argument("--tol", type=float, default=0.1)
    args = parser.parse_args()
    print(json.dumps(build_template_file(out=args.out, tol=args.tol)))


if __name__ == "__main__":
    main()
