"""Campaign figures: convex hull by role, emulator-vs-oracle parity, per-source yield, discoveries per call.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot state, so a long-running daemon does
not accumulate open figures). Each function returns the `Figure` and, given `path`, also writes a PNG there.

Units: energies eV/atom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from pymatgen.core import Composition, Element
from scipy.special import erf

from emulator.calibration import calibration_metrics
from loop.errors import InputError
from loop.science.emulator_errors import emulator_metrics, finite_pairs
from loop.science.hull import HullEntry, HullError, OracleHull
from loop.views.round_science import YIELD_STAGES

FUNNEL_STAGES = YIELD_STAGES[:4]
"""The yield columns drawn as bars: every stage a candidate passes, up to the hits."""


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
    n = np.asarray(predicted).size
    if np.asarray(oracle).size != n or (predicted_std is not None and np.asarray(predicted_std).size != n):
        raise PlotError("predicted, oracle and predicted_std must have one value per structure")
    pred, std, ref = finite_pairs(predicted, predicted_std, oracle)
    if not len(pred):
        raise PlotError("no finite (predicted, oracle) pair to plot; label some structures first")
    mae = calibration_metrics(predicted=pred, std=np.zeros_like(pred) if std is None else std, target=ref)[
        "mae"
    ]
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
    stages: Sequence[str] = FUNNEL_STAGES,
    log_scale: bool = True,
    path: Path | str | None = None,
) -> Figure:
    """Funnel per generator source: grouped bars of counts at each stage (missing stages count as 0).

    Args:
        counts: source -> stage -> count, as `loop.views.round_science.source_yield` gives them.
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


# -- science report figures -------------------------------------------------------------------------------------------
# How the science report draws each role of a labelled structure: (marker, face colour, size, legend text).
HULL_ROLE_STYLE: dict[str, tuple[str, str, float, str]] = {
    "reference": ("s", "k", 42.0, "reference (round 0)"),
    "candidate": ("o", "none", 30.0, "labelled candidate, not a hit"),
    "earlier_discovery": ("*", "0.65", 110.0, "hit of an earlier round"),
    "query": ("o", "tab:blue", 40.0, "queried this round, not a hit"),
    "discovery": ("*", "tab:red", 170.0, "discovery (hit)"),
    "rediscovery": ("D", "gold", 70.0, "rediscovery of a withheld phase"),
}
_ROLE_ZORDER = {
    "candidate": 2,
    "earlier_discovery": 3,
    "query": 3,
    "reference": 3,
    "rediscovery": 4,
    "discovery": 5,
}


class _RoleLegend:
    """Scatters points by role and builds a legend whose texts carry the counts (artists keep the role names)."""

    def __init__(self, ax: Axes) -> None:
        self.ax = ax
        self.texts: dict[str, str] = {}

    def scatter(self, role: str, xs: Sequence[float], ys: Sequence[float], *, n: int | None = None) -> None:
        marker, face, size, text = HULL_ROLE_STYLE[role]
        self.ax.scatter(
            xs,
            ys,
            s=size,
            marker=marker,
            facecolors=face,
            edgecolors="0.35" if role == "candidate" else "k",
            linewidths=0.8,
            label=role,
            zorder=_ROLE_ZORDER[role],
        )
        self.texts[role] = f"{text} ({len(xs) if n is None else n})"

    def legend(self, **kwargs: Any) -> None:
        handles, labels = self.ax.get_legend_handles_labels()
        self.ax.legend(handles, [self.texts.get(label, label) for label in labels], **kwargs)


def _role_of(roles: Mapping[str, str], entry_id: str) -> str:
    role = roles.get(entry_id, "candidate")
    return role if role in HULL_ROLE_STYLE else "candidate"


def plot_hull_roles(
    hull: OracleHull,
    *,
    chemsys: Sequence[str],
    roles: Mapping[str, str],
    near_stable: float,
    title: str | None = None,
) -> Figure:
    """The oracle hull of one chemical system with every labelled structure marked by its role.

    Binary systems: formation energy per atom (eV/atom) against the atomic fraction of the second element, the hull
    through the on-hull entries, the band `near_stable` above it shaded, formulas next to hull vertices and hits.
    Structures far above the hull are drawn as triangles on the top edge so the region of interest stays readable.
    Ternary systems: the Gibbs triangle with the hull's tie-lines. Larger systems: E_hull of each entry by formula.

    Args:
        roles: Entry id -> "reference", "candidate", "discovery", "rediscovery", "query" (queried in the round
            drawn, not a hit) or "earlier_discovery" (see `HULL_ROLE_STYLE`); entries without a role count as
            "candidate". Only "discovery" is a red star, so a hull drawn for one round stars only its hits.
        near_stable: The campaign's hit threshold above the hull, eV/atom.

    Artists are labelled with the role names (and "hull") so callers and tests can find them.

    Raises:
        PlotError: The system has no oracle entries or lacks an elemental reference.
    """
    elements = [str(Element(s)) for s in chemsys]
    entries = hull.entries_in(elements)
    if not entries:
        raise PlotError(f"no oracle entries in {'-'.join(elements)}; label that chemical system first")
    try:
        diagram = hull.phase_diagram(elements)
    except HullError as exc:
        raise PlotError(str(exc)) from None
    e_hull = hull.entry_e_above_hull()
    if len(elements) == 2:
        fig = _new_figure((7.2, 4.8))
        _binary_roles(fig.add_subplot(), hull, elements, entries, e_hull, roles, near_stable)
    elif len(elements) == 3:
        fig = _new_figure((6.4, 5.8))
        _ternary_roles(fig.add_subplot(), diagram, elements, entries, e_hull, roles)
    else:
        fig = _new_figure((7.2, 4.8))
        _ehull_by_formula(fig.add_subplot(), entries, e_hull, roles, near_stable)
    fig.axes[0].set_title(title or f"{'-'.join(elements)}: convex hull at the oracle's level of theory")
    return fig


def _binary_roles(
    ax: Axes,
    hull: OracleHull,
    elements: list[str],
    entries: Sequence[HullEntry],
    e_hull: Mapping[str, float],
    roles: Mapping[str, str],
    near_stable: float,
) -> None:
    other = Element(elements[1])
    points = {
        e.entry_id: (
            Composition(e.composition).get_atomic_fraction(other),
            hull.formation_energy_per_atom(e.composition, e.energy_per_atom),
            Composition(e.composition).reduced_formula,
        )
        for e in entries
    }
    hx, hy = np.array(sorted({points[i][:2] for i in points if e_hull[i] <= 1e-6})).T
    ax.plot(hx, hy, "-", color="k", lw=1.2, label="hull", zorder=1)
    ax.fill_between(hx, hy, hy + near_stable, color="tab:green", alpha=0.15, lw=0, zorder=0, label="band")
    # The frame ends a little above the highest hit, so the hull region is not squashed by far-off candidates.
    hits_y = [points[i][1] for i in points if e_hull[i] <= near_stable + 1e-6]
    low = min(p[1] for p in points.values())
    top = max(max(hits_y), 0.0) + max(1.5 * near_stable, 0.05, 0.3 * (max(hits_y) - low))
    span = top - low
    legend = _RoleLegend(ax)
    above = 0
    for role in HULL_ROLE_STYLE:
        ids = [i for i in points if _role_of(roles, i) == role]
        if not ids:
            continue
        inside = [points[i] for i in ids if points[i][1] <= top]
        outside = [points[i] for i in ids if points[i][1] > top]
        above += len(outside)
        legend.scatter(role, [p[0] for p in inside], [p[1] for p in inside], n=len(ids))
        if outside:
            ax.scatter(
                [p[0] for p in outside],
                [top - 0.025 * span] * len(outside),
                marker="^",
                s=26,
                facecolors=HULL_ROLE_STYLE[role][1],
                edgecolors="0.35",
                zorder=2,
            )
    legend.texts["hull"] = "oracle hull"
    legend.texts["band"] = f"hit band (≤ {1000 * near_stable:.0f} meV/atom above)"
    written: set[tuple[float, str]] = set()
    for i, (x, y, formula) in points.items():
        worth = e_hull[i] <= 1e-6 or _role_of(roles, i) != "candidate"
        if worth and y <= top and (round(x, 3), formula) not in written:
            written.add((round(x, 3), formula))
            elemental = x in (0.0, 1.0)
            ax.annotate(
                formula,
                (x, y),
                xytext=(0, 7) if elemental else (5, -11),
                ha="center" if elemental else "left",
                textcoords="offset points",
                fontsize=7.5,
            )
    ax.axhline(0.0, color="0.75", lw=0.6, zorder=0)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(low - 0.1 * span, top)
    ax.set_xlabel(f"x in {elements[0]}$_{{1-x}}${elements[1]}$_x$")
    ax.set_ylabel("formation energy (eV/atom)")
    if above:
        ax.text(0.99, 0.975, f"▲ {above} more above the frame", transform=ax.transAxes, ha="right", va="top",
                fontsize=7.5, color="0.3")  # fmt: skip
    legend.legend(fontsize=7.5, loc="best", framealpha=0.9)


def _ternary_roles(
    ax: Axes,
    diagram: Any,
    elements: list[str],
    entries: Sequence[HullEntry],
    e_hull: Mapping[str, float],
    roles: Mapping[str, str],
) -> None:
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])

    def xy(comp: Composition | str) -> np.ndarray:
        c = Composition(comp)
        return np.array([c.get_atomic_fraction(Element(el)) for el in elements]) @ corners

    ax.plot(*np.vstack([corners, corners[:1]]).T, color="k", lw=1.0)
    for facet in diagram.facets:
        pts = np.array([xy(diagram.qhull_entries[i].composition) for i in facet])
        ax.plot(*np.vstack([pts, pts[:1]]).T, color="0.6", lw=0.7, zorder=1)
    legend = _RoleLegend(ax)
    for role in HULL_ROLE_STYLE:
        chosen = [e for e in entries if _role_of(roles, e.entry_id) == role]
        if chosen:
            pts = np.array([xy(e.composition) for e in chosen])
            legend.scatter(role, pts[:, 0], pts[:, 1])
    for e in entries:
        comp = Composition(e.composition)
        worth = e_hull[e.entry_id] <= 1e-6 or _role_of(roles, e.entry_id) in ("discovery", "rediscovery")
        if worth and not comp.is_element:
            ax.annotate(
                comp.reduced_formula, tuple(xy(comp)), xytext=(4, 4), textcoords="offset points", fontsize=7.5
            )
    for el, (x, y) in zip(elements, corners, strict=True):
        ax.annotate(el, (x, y), xytext=(0, 8 if y > 0 else -15), textcoords="offset points", ha="center",
                    fontsize=10, weight="bold")  # fmt: skip
    ax.set_aspect("equal")
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.1, 0.98)
    ax.axis("off")
    legend.legend(fontsize=7.5, loc="upper right", framealpha=0.9)


def _ehull_by_formula(
    ax: Axes,
    entries: Sequence[HullEntry],
    e_hull: Mapping[str, float],
    roles: Mapping[str, str],
    near_stable: float,
) -> None:
    formulas = sorted({Composition(e.composition).reduced_formula for e in entries})
    pos = {f: k for k, f in enumerate(formulas)}
    legend = _RoleLegend(ax)
    for role in HULL_ROLE_STYLE:
        chosen = [e for e in entries if _role_of(roles, e.entry_id) == role]
        if chosen:
            xs = [pos[Composition(e.composition).reduced_formula] for e in chosen]
            legend.scatter(role, xs, [e_hull[e.entry_id] for e in chosen])
    ax.axhspan(0.0, near_stable, color="tab:green", alpha=0.15, lw=0)
    ax.set_xticks(range(len(formulas)), formulas, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("energy above hull (eV/atom)")
    ax.set_yscale("symlog", linthresh=max(near_stable, 0.01))
    legend.legend(fontsize=7.5)


def plot_discovery_progress(
    *,
    rounds: Sequence[int],
    oracle_calls: Sequence[int],
    hits: Sequence[int],
    cumulative_hits: Sequence[int],
) -> Figure:
    """Discovery per round: the hit rate of each round's calls, and cumulative oracle calls per discovery.

    Args:
        rounds: Round numbers (>= 1).
        oracle_calls: Oracle calls made in each round (failed calls count: they cost the same).
        hits: Hits (stable or near-stable) among each round's calls.
        cumulative_hits: Discoveries so far after each round (they may fall when a later label lowers the hull).

    Panels are titled "hit rate per round" and "oracle calls per discovery".

    Raises:
        PlotError: Lengths differ, no round, a negative count, or more hits than calls.
    """
    r = np.asarray(rounds, dtype=int)
    calls = np.asarray(oracle_calls, dtype=float)
    found = np.asarray(hits, dtype=float)
    cum_hits = np.asarray(cumulative_hits, dtype=float)
    if not (r.shape == calls.shape == found.shape == cum_hits.shape) or r.size == 0:
        raise PlotError(
            "rounds, oracle_calls, hits and cumulative_hits need one value per round (at least one)"
        )
    if (calls < 0).any() or (found < 0).any() or (found > calls).any() or (cum_hits < 0).any():
        raise PlotError("counts must be >= 0 and hits <= oracle calls")
    cum_calls = np.cumsum(calls)
    fig = _new_figure((8.0, 3.5))
    ax1, ax3 = fig.subplots(1, 2)
    rate = np.divide(found, calls, out=np.zeros_like(found), where=calls > 0)
    bars = ax1.bar(r, 100 * rate, color="tab:blue", width=0.6)
    ax1.bar_label(
        bars, labels=[f"{int(h)}/{int(c)}" for h, c in zip(found, calls, strict=True)], fontsize=7.5
    )
    ax1.set_ylim(0, 115)
    ax1.set_xlabel("round")
    ax1.set_ylabel("hits / oracle calls (%)")
    ax1.set_title("hit rate per round", fontsize=10)
    per_hit = np.divide(cum_calls, cum_hits, out=np.full_like(cum_calls, np.nan), where=cum_hits > 0)
    ax3.plot(r, per_hit, "o-", color="k")
    for x, h in zip(r, cum_hits, strict=True):
        if h == 0:
            ax3.annotate(
                "no hit yet", (x, 0), xytext=(0, 4), textcoords="offset points", fontsize=7, ha="center"
            )
    finite = per_hit[np.isfinite(per_hit)]
    ax3.set_ylim(0, max(finite.max() if finite.size else 1.0, 1.0) * 1.25)
    ax3.set_xlabel("round")
    ax3.set_ylabel("oracle calls so far / discoveries so far")
    ax3.set_title("oracle calls per discovery", fontsize=10)
    for ax in (ax1, ax3):
        ax.set_xticks(r)
        ax.set_xlim(r.min() - 0.6, r.max() + 0.6)
    return fig


def plot_emulator_error(
    *,
    rounds: Sequence[int],
    mae: Sequence[float],
    n_labels: Sequence[int],
    median_std: Sequence[float] | None = None,
) -> Figure:
    """Emulator MAE of the energy per atom on each round's new oracle labels, predicted before retraining.

    Args:
        rounds: Round numbers.
        mae: MAE per round, eV/atom (NaN where the round has no labelled prediction); drawn in meV/atom.
        n_labels: Labels behind each MAE.
        median_std: Median ensemble σ of the same predictions, eV/atom (drawn for comparison).

    Raises:
        PlotError: Lengths differ or no round.
    """
    r = np.asarray(rounds, dtype=int)
    err = 1000 * np.asarray(mae, dtype=float)
    n = np.asarray(n_labels, dtype=int)
    if not (r.shape == err.shape == n.shape) or r.size == 0:
        raise PlotError("rounds, mae and n_labels need one value per round (at least one round)")
    std = None if median_std is None else 1000 * np.asarray(median_std, dtype=float)
    if std is not None and std.shape != r.shape:
        raise PlotError("median_std needs one value per round")
    fig = _new_figure((5.6, 3.6))
    ax = fig.add_subplot()
    bars = ax.bar(r, np.nan_to_num(err), width=0.6, color="tab:purple", label="MAE before retraining")
    texts = [
        ("no label" if not np.isfinite(e) else f"{e:.0f}") + f"\nn={k}" for e, k in zip(err, n, strict=True)
    ]
    ax.bar_label(bars, labels=texts, fontsize=7.5)
    values = [v for v in err if np.isfinite(v)]
    if std is not None:
        ax.plot(r, std, "o--", color="tab:orange", label="median ensemble σ")
        values += [v for v in std if np.isfinite(v)]
    ax.set_ylim(0, max([*values, 1.0]) * 1.4)
    ax.set_xticks(r)
    ax.set_xlim(r.min() - 1, r.max() + 1)
    ax.set_xlabel("round")
    ax.set_ylabel("energy per atom (meV/atom)")
    ax.set_title("emulator MAE on new labels, before retraining", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper right")
    return fig


def plot_calibration(
    *,
    std: Sequence[float],
    abs_error: Sequence[float],
    rounds: Sequence[int],
) -> Figure:
    """Uncertainty calibration of the emulator on oracle labels it had not seen (inputs in eV/atom).

    Left: |error| against the ensemble σ per label (meV/atom, log axes), coloured by round, with |error| = σ and
    2σ lines and Spearman(σ, |error|) in the title. Right: the fraction of errors within k·σ against k, beside what
    a Gaussian error of that σ would give (where a calibrated model lies).

    Raises:
        PlotError: Lengths differ or no finite pair.
    """
    s = np.asarray(std, dtype=float).reshape(-1)
    e = np.asarray(abs_error, dtype=float).reshape(-1)
    r = np.asarray(rounds, dtype=int).reshape(-1)
    if not (s.shape == e.shape == r.shape):
        raise PlotError("std, abs_error and rounds need one value per label")
    keep = np.isfinite(s) & np.isfinite(e) & (s >= 0)
    if not keep.any():
        raise PlotError("no finite (σ, |error|) pair; label some screened candidates first")
    s, e, r = s[keep], np.abs(e[keep]), r[keep]
    fig = _new_figure((10.0, 4.0))
    ax1, ax2 = fig.subplots(1, 2)
    floor = 1e-4  # 0.1 meV/atom keeps exact zeros on the log axes
    sm, em = 1000 * np.maximum(s, floor), 1000 * np.maximum(e, floor)
    present = sorted(set(r.tolist()))
    for k, rnd in enumerate(present):
        sel = r == rnd
        color = colormaps["viridis"](k / max(len(present) - 1, 1))
        ax1.scatter(sm[sel], em[sel], s=28, color=color, edgecolors="k", linewidths=0.4, label=f"round {rnd}")
    lo, hi = min(sm.min(), em.min()) / 2, max(sm.max(), em.max()) * 2
    ax1.plot([lo, hi], [lo, hi], "-", color="k", lw=0.8, label="|error| = σ")
    ax1.plot([lo, hi], [2 * lo, 2 * hi], "--", color="0.5", lw=0.8, label="|error| = 2σ")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    for axis in (ax1.xaxis, ax1.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax1.set_xlim(lo, hi)
    ax1.set_ylim(lo, hi)
    ax1.set_xlabel("ensemble σ (meV/atom)")
    ax1.set_ylabel("|emulator − oracle| (meV/atom)")
    title = f"σ against |error| (n = {s.size})"
    # The figures the update stage records, from the same definition (`loop.science.emulator_errors`).
    m = emulator_metrics(list(zip(e, s, np.zeros_like(e), strict=True)))
    if "emulator_spearman_std_err" in m:
        title += f", Spearman {m['emulator_spearman_std_err']:+.2f}"
    ax1.set_title(title, fontsize=10)
    ax1.legend(fontsize=7, loc="upper left")
    k = np.linspace(0, 3, 121)
    ax2.plot(k, erf(k / np.sqrt(2)), "--", color="k", lw=1, label="calibrated (Gaussian)")
    ax2.plot(k, [(e <= kk * s).mean() for kk in k], "-", color="tab:blue", lw=1.8, label="observed")
    for kk, frac in ((1, m["emulator_within_1sigma"]), (2, m["emulator_within_2sigma"])):
        ax2.plot([kk], [frac], "o", color="tab:blue")
        ax2.annotate(f"{100 * frac:.0f} % within {kk}σ", (kk, frac), xytext=(6, -12), textcoords="offset points",
                     fontsize=8)  # fmt: skip
    ax2.set_xlim(0, 3)
    ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("k")
    ax2.set_ylabel("fraction of |errors| ≤ k·σ")
    ax2.set_title("coverage", fontsize=10)
    ax2.legend(fontsize=7.5, loc="lower right")
    return fig


def plot_ehull_by_call(
    *,
    e_hull: Sequence[float],
    rounds: Sequence[int],
    roles: Sequence[str],
    near_stable: float,
) -> Figure:
    """Energy above the final oracle hull of every oracle call of rounds >= 1, in the order the calls were made.

    Args:
        e_hull: eV/atom per call (NaN for a failed call, drawn as a grey cross at 0).
        rounds: Round of each call (rounds are separated by vertical lines).
        roles: "discovery", "rediscovery" or "candidate" per call.
        near_stable: The hit threshold, eV/atom (the shaded band).

    Raises:
        PlotError: Lengths differ or no call.
    """
    y = np.asarray(e_hull, dtype=float)
    r = np.asarray(rounds, dtype=int)
    if y.shape != r.shape or len(roles) != y.size or y.size == 0:
        raise PlotError("e_hull, rounds and roles need one value per oracle call (at least one)")
    x = np.arange(1, y.size + 1)
    fig = _new_figure((7.2, 3.6))
    ax = fig.add_subplot()
    legend = _RoleLegend(ax)
    for role in ("candidate", "discovery", "rediscovery"):
        sel = np.array([q == role for q in roles]) & np.isfinite(y)
        if sel.any():
            legend.scatter(role, x[sel], y[sel])
    failed = ~np.isfinite(y)
    if failed.any():
        ax.scatter(x[failed], np.zeros(failed.sum()), marker="x", color="tab:gray", label="failed call")
    finite = y[np.isfinite(y)]
    bottom = min(0.0, finite.min() if finite.size else 0.0) - 0.005
    ax.axhspan(bottom, near_stable, color="tab:green", alpha=0.15, lw=0)
    for k in np.flatnonzero(np.diff(r)):
        ax.axvline(k + 1.5, color="0.7", lw=0.8)
    for rnd in sorted(set(r.tolist())):
        ax.text(float(np.mean(x[r == rnd])), 1.01, f"round {rnd}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7.5, color="0.3")  # fmt: skip
    ax.set_yscale("symlog", linthresh=max(near_stable, 0.01))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_ylim(bottom, max(finite.max() if finite.size else 1.0, near_stable) * 1.6 + 0.01)
    ax.set_xlim(0.3, y.size + 0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("oracle call (campaign order)")
    ax.set_ylabel("E above final hull (eV/atom)")
    legend.legend(fontsize=7, loc="upper left", ncols=2)
    return fig


def plot_discovery_curve(
    *,
    hits: Sequence[bool],
    rounds: Sequence[int],
    expected: Sequence[float] | None = None,
    expected_label: str = "uniform random (expected)",
    title: str = "discoveries vs oracle calls",
    path: Path | str | None = None,
) -> Figure:
    """Cumulative discoveries against oracle calls, one step per call: each hit is drawn at the call that made it.

    Args:
        hits: Whether each oracle call of rounds >= 1 is a hit, in campaign order (call 1 first).
        rounds: The round of each call (rounds are separated by vertical lines and named above the axes).
        expected: Cumulative hits a baseline would expect after each call (e.g. uniform random picks), drawn
            dashed and labelled `expected_label`.
        title: Axes title.

    Artists are labelled "discoveries" (the step curve), "hits" (a marker per hit) and "expected".

    Raises:
        PlotError: No call, or lengths differ.
    """
    flags = np.asarray(hits, dtype=bool).reshape(-1)
    r = np.asarray(rounds, dtype=int).reshape(-1)
    if flags.size == 0 or r.shape != flags.shape:
        raise PlotError("pass one hit flag and one round per oracle call (at least one call)")
    base = None if expected is None else np.asarray(expected, dtype=float).reshape(-1)
    if base is not None and base.shape != flags.shape:
        raise PlotError("pass one expected cumulative count per oracle call")
    x = np.arange(0, flags.size + 1)
    y = np.concatenate([[0], np.cumsum(flags)])
    fig = _new_figure((6.4, 4.0))
    ax = fig.add_subplot()
    ax.step(x, y, where="post", color="C0", label="discoveries")
    at = np.flatnonzero(flags) + 1
    ax.plot(at, y[at], "*", ms=11, color="tab:red", markeredgecolor="k", mew=0.5, label="hits")
    if base is not None:
        ax.plot(x, np.concatenate([[0.0], base]), "--", color="0.45", label="expected")
    for k in np.flatnonzero(np.diff(r)):
        ax.axvline(k + 1.5, color="0.8", lw=0.8, zorder=0)
    for rnd in sorted(set(r.tolist())):
        ax.text(float(np.mean(np.flatnonzero(r == rnd) + 1)), 1.01, f"round {rnd}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7.5, color="0.3")  # fmt: skip
    ax.set_xlabel("oracle call (campaign order, rounds >= 1)")
    ax.set_ylabel("discoveries so far")
    ax.set_xlim(0, flags.size + 0.5)
    top = max(float(y.max()), float(base.max()) if base is not None else 0.0, 1.0)
    ax.set_ylim(0, top * 1.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9, pad=16)
    handles, labels = ax.get_legend_handles_labels()
    texts = {"discoveries": "discoveries so far", "hits": "a hit, at its call", "expected": expected_label}
    ax.legend(handles, [texts.get(label, label) for label in labels], fontsize=7.5, loc="upper left")
    _save(fig, path)
    return fig
