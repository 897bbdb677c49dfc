"""A crystal structure drawn as inline SVG: the unit cell and its atoms seen from three directions, for a page that
loads nothing (the science report).

Orthographic projections, atoms painted back to front with a shaded disc per element (Jmol colours, radii from
pymatgen's atomic radii); atoms on a cell face, edge or corner are repeated on the opposite ones so the cell reads
as a crystal. Lengths Å.
"""

from __future__ import annotations

import html
import itertools
from functools import cache
from pathlib import Path

import numpy as np
import pymatgen.vis
import yaml
from pymatgen.core import Element, Structure

_FACE_TOLERANCE = (
    0.02  # fractional distance from a cell face within which an atom is repeated on the other side
)
_RADIUS_SCALE = 0.42  # of the atomic radius: atoms touch less, so the cell shows through
VIEWS = ("oblique", "along a", "along c")


@cache
def _jmol_colors() -> dict[str, tuple[int, int, int]]:
    path = Path(pymatgen.vis.__file__).parent / "ElementColorSchemes.yaml"
    return {k: tuple(v) for k, v in yaml.safe_load(path.read_text())["Jmol"].items()}


def _color(symbol: str) -> str:
    r, g, b = _jmol_colors().get(symbol, (200, 120, 200))
    return f"#{r:02x}{g:02x}{b:02x}"


def _radius(symbol: str) -> float:
    try:
        value = Element(symbol).atomic_radius
    except ValueError:
        value = None
    return _RADIUS_SCALE * float(value if value is not None else 1.3)


def _sites(structure: Structure) -> list[tuple[str, np.ndarray]]:
    """(element, Cartesian position) of every site, wrapped into the cell, with its images on the opposite faces."""
    out = []
    lattice = structure.lattice
    for site in structure:
        frac = np.mod(site.frac_coords, 1.0)
        frac[np.isclose(frac, 1.0, atol=1e-6)] = 0.0
        options = [[f, f + 1.0] if f < _FACE_TOLERANCE else [f] for f in frac]
        symbol = site.specie.symbol if hasattr(site.specie, "symbol") else str(site.specie)
        for image in itertools.product(*options):
            out.append((symbol, lattice.get_cartesian_coords(np.array(image))))
    return out


def _camera(direction: np.ndarray) -> np.ndarray:
    """Rows: screen right, screen up, towards the viewer (orthonormal), for a view from `direction`."""
    w = direction / np.linalg.norm(direction)
    up = np.array([0.0, 0.0, 1.0]) if abs(w[2]) < 0.95 else np.array([0.0, 1.0, 0.0])
    u = np.cross(up, w)
    u /= np.linalg.norm(u)
    return np.array([u, np.cross(w, u), w])


def _direction(structure: Structure, view: str) -> np.ndarray:
    a, b, c = structure.lattice.matrix
    if view == "along a":
        return a
    if view == "along c":
        return c
    return 0.9 * a / np.linalg.norm(a) + 0.5 * b / np.linalg.norm(b) + 0.45 * c / np.linalg.norm(c)


def _panel(structure: Structure, view: str, *, size: float, uid: str) -> str:
    camera = _camera(_direction(structure, view))
    lattice = structure.lattice
    corners = {
        k: lattice.get_cartesian_coords(np.array(k, dtype=float)) for k in itertools.product((0, 1), repeat=3)
    }
    atoms = [(sym, camera @ pos) for sym, pos in _sites(structure)]
    flat = {k: camera @ p for k, p in corners.items()}
    points = np.array([p[:2] for p in flat.values()] + [p[:2] for _, p in atoms])
    pad = max((_radius(s) for s, _ in atoms), default=1.0) + 0.6
    lo, hi = points.min(axis=0) - pad, points.max(axis=0) + pad
    scale = (size - 8) / float(max(hi - lo))
    offset = (size - scale * (hi - lo)) / 2

    def xy(p: np.ndarray) -> tuple[float, float]:
        # screen y grows downwards
        return offset[0] + scale * (p[0] - lo[0]), size - (offset[1] + scale * (p[1] - lo[1]))

    parts = [f'<g class="view"><title>{html.escape(view)}</title>']
    for k0, k1 in itertools.combinations(corners, 2):
        if sum(x != y for x, y in zip(k0, k1, strict=True)) == 1:
            (x0, y0), (x1, y1) = xy(flat[k0]), xy(flat[k1])
            parts.append(
                f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#555" stroke-width="1"/>'
            )
    for sym, p in sorted(atoms, key=lambda item: item[1][2]):
        x, y = xy(p)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{scale * _radius(sym):.1f}" fill="url(#{uid}-{sym})" '
            f'stroke="#222" stroke-width="0.6"><title>{html.escape(sym)}</title></circle>'
        )
    for name, corner in (("a", (1, 0, 0)), ("b", (0, 1, 0)), ("c", (0, 0, 1))):
        x, y = xy(flat[corner])
        x0, y0 = xy(flat[(0, 0, 0)])
        dx, dy = x - x0, y - y0
        norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
        if norm > 6:  # an axis seen end-on has no edge to label
            parts.append(
                f'<text x="{x + 9 * dx / norm:.1f}" y="{y + 9 * dy / norm + 4:.1f}" font-size="11" '
                f'font-style="italic" fill="#1f5fae">{name}</text>'
            )
    parts.append(f'<text x="4" y="{size - 4:.0f}" class="label">{html.escape(view)}</text></g>')
    return "".join(parts)


def structure_svg(structure: Structure, *, uid: str, size: float = 210.0) -> str:
    """The structure as one inline `<svg>`: its cell from the `VIEWS` side by side, and a key of its elements.

    Args:
        structure: The crystal.
        uid: Unique within the page (e.g. the structure hash): the element shadings are named after it.
        size: Width and height of one view, px.
    """
    uid = "s" + "".join(ch for ch in uid if ch.isalnum())
    elements = sorted({s.specie.symbol for s in structure})
    defs = "".join(
        f'<radialGradient id="{uid}-{el}" cx="35%" cy="35%" r="70%"><stop offset="0%" stop-color="#fff"/>'
        f'<stop offset="45%" stop-color="{_color(el)}"/><stop offset="100%" stop-color="{_color(el)}" '
        'stop-opacity="0.85"/></radialGradient>'
        for el in elements
    )
    panels = "".join(
        f'<g transform="translate({k * size:.0f},0)">{_panel(structure, view, size=size, uid=uid)}</g>'
        for k, view in enumerate(VIEWS)
    )
    key = "".join(
        f'<circle cx="{10 + 70 * k}" cy="{size + 12:.0f}" r="6" fill="{_color(el)}" stroke="#222" stroke-width="0.6"/>'
        f'<text x="{20 + 70 * k}" y="{size + 16:.0f}" class="label">{html.escape(el)}</text>'
        for k, el in enumerate(elements)
    )
    width, height = len(VIEWS) * size, size + 24
    formula = html.escape(structure.composition.reduced_formula)
    return (
        f'<svg class="structure" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{formula} unit cell">'
        f"<defs>{defs}</defs>{panels}{key}</svg>"
    )


__all__ = ["VIEWS", "structure_svg"]
