"""Campaign figures: convex hull, emulator-vs-oracle parity, per-source yield.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot state, so a long-running daemon does
not accumulate open figures). Each function returns the `Figure` and, given `path`, also writes a PNG there.

Units: energies eV/atom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pymatgen.core import Composition, Element

from loop.errors import InputError
from loop.hull import HullError, OracleHull

DEFAULT_STAGES = ("generated", "passed_funnel", "queried", "stable")


class PlotError(InputError, ValueError):
    """Bad input for a plot (mismatched lengths, empty data, unknown chemical system)."""


def _new_figure(size: tuple[float, float] = (6.0, 4.5)) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path | str | None) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_convex_hull(
    hull: OracleHull,
    *,
    chemsys: Sequence[str],
    candidates: Sequence[tuple[Composition | str, float]] = (),
    highlight_ids: Sequence[str] = (),
    threshold: float | None = None,
    path: Path | str | None = None,
) -> Figure:
    """Hull of one chemical system in the oracle's level of theory.

    Binary systems: formation energy per atom against the atomic fraction of the second element (elements in the
    order given), the hull as a line through the stable entries, unstable oracle entries as open circles,
    `highlight_ids` (e.g. this round's discoveries) as stars and `candidates` (composition, emulator energy per
    atom) as crosses. Other systems: a bar chart of E_hull per oracle entry, then per candidate, with `threshold`
    as a dashed line.

    Artists are labelled "hull", "stable", "unstable", "highlighted", "candidates" (binary) or "entries",
    "stable", "candidates", "threshold" (otherwise) so callers and tests can find them.

    Raises:
        PlotError: The system has no oracle entries or lacks an elemental reference.
    """
    elements = [str(Element(s)) for s in chemsys]
    entries = hull.entries_in(elements)
    if not entries:
        raise PlotError(f"no oracle entries in {'-'.join(elements)}; label that chemical system first")
    try:
        hull.phase_diagram(elements)
    except HullError as exc:
        raise PlotError(str(exc)) from None
    e_hull = hull.entry_e_above_hull()
    highlight = set(highlight_ids)
    fig = _new_figure()
    ax = fig.add_subplot()
    system = "-".join(elements)
    if len(elements) == 2:
        other = Element(elements[1])

        def xy(comp: Composition | str, energy: float) -> tuple[float, float]:
            c = Composition(comp)
            return c.get_atomic_fraction(other), hull.formation_energy_per_atom(c, energy)

        points = {e.entry_id: xy(e.composition, e.energy_per_atom) for e in entries}
        stable = sorted(
            (points[e.entry_id] for e in entries if e_hull[e.entry_id] <= 1e-6), key=lambda p: p[0]
        )
        unstable = [points[e.entry_id] for e in entries if e_hull[e.entry_id] > 1e-6]
        sx, sy = np.array(stable).T
        ax.plot(sx, sy, "-", color="k", lw=1.2, label="hull", zorder=1)
        ax.scatter(sx, sy, s=40, color="k", label="stable", zorder=3)
        if unstable:
            ux, uy = np.array(unstable).T
            ax.scatter(ux, uy, s=36, facecolors="none", edgecolors="0.4", label="unstable", zorder=2)
        marked = [points[i] for i in points if i in highlight]
        if marked:
            hx, hy = np.array(marked).T
            ax.scatter(hx, hy, s=160, marker="*", color="tab:red", label="highlighted", zorder=4)
        if len(candidates):
            cx, cy = np.array([xy(c, e) for c, e in candidates]).T
            ax.scatter(cx, cy, s=30, marker="x", color="tab:blue", label="candidates", zorder=2)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(f"x in {elements[0]}$_{{1-x}}${elements[1]}$_x$")
        ax.set_ylabel("formation energy (eV/atom)")
    else:
        names = [e.entry_id for e in entries]
        values = [e_hull[i] for i in names]
        colors = [
            "tab:red" if i in highlight else ("k" if v <= 1e-6 else "0.6")
            for i, v in zip(names, values, strict=True)
        ]
        pos = np.arange(len(names))
        ax.bar(pos, values, color=colors, label="entries")
        on_hull = [p for p, v in zip(pos, values, strict=True) if v <= 1e-6]
        # Stable entries have zero-height bars; mark them so they are visible.
        ax.scatter(on_hull, np.zeros(len(on_hull)), marker="o", color="k", zorder=3, label="stable")
        ticks = list(names)
        if len(candidates):
            ev = hull.evaluate([c for c, _ in candidates], [e for _, e in candidates])
            cpos = np.arange(len(names), len(names) + len(candidates))
            ax.bar(cpos, np.nan_to_num(ev.e_above_hull), color="tab:blue", label="candidates")
            ticks += [Composition(c).reduced_formula for c, _ in candidates]
        ax.set_xticks(np.arange(len(ticks)), ticks, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("energy above hull (eV/atom)")
        if threshold is not None:
            ax.axhline(threshold, ls="--", color="tab:green", lw=1, label="threshold")
    ax.set_title(f"{system} hull (oracle level of theory)")
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_parity(
    *,
    predicted: Sequence[float] | np.ndarray,
    oracle: Sequence[float] | np.ndarray,
    predicted_std: Sequence[float] | np.ndarray | None = None,
    quantity: str = "energy per atom",
    path: Path | str | None = None,
) -> Figure:
    """Emulator vs oracle parity plot (eV/atom) with ensemble-std error bars; MAE in meV/atom in the title.

    Non-finite pairs are left out (and from the MAE).

    Raises:
        PlotError: Lengths differ or no finite pair remains.
    """
    pred = np.asarray(predicted, dtype=float).reshape(-1)
    ref = np.asarray(oracle, dtype=float).reshape(-1)
    std = None if predicted_std is None else np.asarray(predicted_std, dtype=float).reshape(-1)
    if pred.shape != ref.shape or (std is not None and std.shape != pred.shape):
        raise PlotError("predicted, oracle and predicted_std must have one value per structure")
    keep = np.isfinite(pred) & np.isfinite(ref)
    if not keep.any():
        raise PlotError("no finite (predicted, oracle) pair to plot; label some structures first")
    pred, ref = pred[keep], ref[keep]
    std = None if std is None else std[keep]
    mae = float(np.mean(np.abs(pred - ref)))
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot()
    ax.errorbar(
        ref, pred, yerr=std, fmt="o", ms=4, color="tab:blue", ecolor="0.5", capsize=2, label="structures"
    )
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="k", lw=1, label="y = x")
    ax.set_xlabel(f"oracle {quantity} (eV/atom)")
    ax.set_ylabel(f"emulator {quantity} (eV/atom)")
    ax.set_title(f"MAE = {1000 * mae:.1f} meV/atom (n = {pred.size})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_source_yield(
    counts: Mapping[str, Mapping[str, int]],
    *,
    stages: Sequence[str] = DEFAULT_STAGES,
    log_scale: bool = True,
    path: Path | str | None = None,
) -> Figure:
    """Funnel per generator source: grouped bars of counts at each stage (missing stages count as 0).

    Args:
        counts: source -> stage -> count, e.g. {"diffusion": {"generated": 200, "passed_funnel": 120, ...}}.
        stages: Stages in funnel order (one bar container per stage, labelled with the stage name).
        log_scale: Log y axis, since the funnel spans orders of magnitude.

    Raises:
        PlotError: No sources, or a negative count.
    """
    if not counts:
        raise PlotError("no sources to plot; pass counts as {source: {stage: n}}")
    sources = list(counts)
    data = np.array([[counts[s].get(st, 0) for s in sources] for st in stages], dtype=float)
    if (data < 0).any():
        raise PlotError("counts must be >= 0")
    fig = _new_figure((max(5.0, 1.6 * len(sources) + 2), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(stages)
    base = np.arange(len(sources))
    for k, stage in enumerate(stages):
        bars = ax.bar(base + (k - (len(stages) - 1) / 2) * width, data[k], width, label=stage)
        ax.bar_label(bars, labels=[str(int(v)) for v in data[k]], fontsize=7)
    ax.set_xticks(base, sources)
    ax.set_ylabel("structures")
    if log_scale and (data > 0).any():
        ax.set_yscale("symlog", linthresh=1.0)
        # Head room for the bar labels and the legend above the tallest bar.
        ax.set_ylim(0, 20 * data.max())
    else:
        ax.set_ylim(0, 1.3 * max(data.max(), 1.0))
    ax.set_title("yield per source")
    ax.legend(fontsize=8, ncols=len(stages), loc="upper center")
    _save(fig, path)
    return fig


def plot_discovery_curve(
    *,
    oracle_calls: Sequence[int],
    hits: Sequence[int],
    rounds: Sequence[int] | None = None,
    title: str = "hits vs oracle calls",
    path: Path | str | None = None,
) -> Figure:
    """Cumulative hits against cumulative oracle calls, one point per round (the campaign's efficiency curve).

    A dotted line from the origin through the last point shows the campaign's average hits per call, so a curve
    above it has found hits early.

    Args:
        oracle_calls: Cumulative oracle calls after each round (non-decreasing).
        hits: Cumulative hits after each round.
        rounds: Round index of each point, annotated beside it.
        title: Axes title.

    Raises:
        PlotError: Empty or mismatched inputs, negative or decreasing call counts.
    """
    calls = np.asarray(oracle_calls, dtype=float)
    found = np.asarray(hits, dtype=float)
    if calls.size == 0 or calls.shape != found.shape:
        raise PlotError("pass one cumulative oracle-call count and one cumulative hit count per round")
    if rounds is not None and len(rounds) != calls.size:
        raise PlotError("pass one round index per point")
    if (calls < 0).any() or (found < 0).any() or (np.diff(calls) < 0).any():
        raise PlotError("cumulative counts must be >= 0 and oracle calls must not decrease")
    fig = _new_figure((5.5, 4.0))
    ax = fig.add_subplot()
    ax.step(calls, found, where="post", color="C0", label="hits")
    ax.plot(calls, found, "o", color="C0")
    if calls[-1] > 0:
        ax.plot([0, calls[-1]], [0, found[-1]], ":", color="grey", label="average rate")
    if rounds is not None:
        for x, y, r in zip(calls, found, rounds, strict=True):
            ax.annotate(f"r{r}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("oracle calls (cumulative)")
    ax.set_ylabel("hits (cumulative)")
    ax.set_xlim(0, max(calls[-1], 1.0) * 1.08)
    ax.set_ylim(0, max(found.max(), 1.0) * 1.2)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)
    return fig
