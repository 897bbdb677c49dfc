from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pymatgen.core import Composition

from loop.errors import InputError
from loop.hull import HullEntry, OracleHull
from loop.plots import PlotError, plot_convex_hull, plot_parity, plot_source_yield

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Made-up but physical oracle energies per atom, eV/atom.
LI_O = {"Li": ("Li", -1.90), "O2": ("O2", -4.90), "Li2O": ("Li2O", -4.7667), "Li2O2": ("Li2O2", -4.75)}
LI_FE_O = {**LI_O, "Fe": ("Fe", -8.30), "Fe2O3": ("Fe2O3", -7.60), "LiFeO2": ("LiFeO2", -6.75)}


def make_hull(table: dict[str, tuple[str, float]]) -> OracleHull:
    return OracleHull.from_entries(
        [HullEntry(entry_id=k, composition=c, energy_per_atom=e) for k, (c, e) in table.items()]
    )


def formation(comp: str, e: float) -> tuple[float, float]:
    x = Composition(comp).get_atomic_fraction("O")
    return x, e - ((1 - x) * LI_O["Li"][1] + x * LI_O["O2"][1])


def artist(ax: Axes, label: str):
    found = [a for a in [*ax.lines, *ax.collections, *ax.containers] if a.get_label() == label]
    assert found, f"no artist labelled {label!r}"
    return found[0]


def check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_binary_hull_plot(tmp_path: Path) -> None:
    hull = make_hull(LI_O)
    path = tmp_path / "plots" / "hull.png"
    fig = plot_convex_hull(
        hull, chemsys=["Li", "O"], candidates=[("Li3O2", -4.2)], highlight_ids=["Li2O"], path=path
    )
    check_png(path)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    expected = sorted(formation(c, e) for k, (c, e) in LI_O.items() if k != "Li2O2")
    line = artist(ax, "hull")
    np.testing.assert_allclose(np.column_stack(line.get_data()), expected, atol=1e-9)
    np.testing.assert_allclose(artist(ax, "unstable").get_offsets(), [formation("Li2O2", -4.75)], atol=1e-9)
    np.testing.assert_allclose(
        artist(ax, "highlighted").get_offsets(), [formation("Li2O", -4.7667)], atol=1e-9
    )
    np.testing.assert_allclose(artist(ax, "candidates").get_offsets(), [formation("Li3O2", -4.2)], atol=1e-9)
    assert "eV/atom" in ax.get_ylabel()


def test_ternary_falls_back_to_e_hull_bars(tmp_path: Path) -> None:
    hull = make_hull(LI_FE_O)
    path = tmp_path / "hull3.png"
    fig = plot_convex_hull(
        hull, chemsys=["Li", "Fe", "O"], candidates=[("Li5FeO4", -5.5)], threshold=0.1, path=path
    )
    check_png(path)
    ax = fig.axes[0]
    e_hull = hull.entry_e_above_hull()
    heights = [p.get_height() for p in artist(ax, "entries").patches]
    np.testing.assert_allclose(heights, [e_hull[k] for k in LI_FE_O], atol=1e-9)
    stable_x = artist(ax, "stable").get_offsets()[:, 0]
    assert [list(LI_FE_O)[int(x)] for x in stable_x] == hull.stable_ids()
    cand = [p.get_height() for p in artist(ax, "candidates").patches]
    assert cand == [pytest.approx(hull.e_above_hull("Li5FeO4", -5.5))]
    assert artist(ax, "threshold").get_ydata()[0] == pytest.approx(0.1)


def test_hull_plot_needs_references() -> None:
    hull = make_hull({"Li": LI_O["Li"], "Li2O": LI_O["Li2O"]})
    with pytest.raises(PlotError, match="O"):
        plot_convex_hull(hull, chemsys=["Li", "O"])
    with pytest.raises(PlotError, match="no oracle entries"):
        plot_convex_hull(hull, chemsys=["Cu", "Au"])


def test_parity_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    oracle = rng.uniform(-8, -3, 20)
    predicted = oracle + rng.normal(0, 0.03, 20)
    std = rng.uniform(0.005, 0.05, 20)
    predicted[4] = np.nan  # a failed prediction is left out
    path = tmp_path / "parity.png"
    fig = plot_parity(predicted=predicted, oracle=oracle, predicted_std=std, path=path)
    check_png(path)
    ax = fig.axes[0]
    keep = np.isfinite(predicted)
    mae = np.mean(np.abs(predicted[keep] - oracle[keep]))
    assert f"MAE = {1000 * mae:.1f} meV/atom" in ax.get_title() and "n = 19" in ax.get_title()
    container = artist(ax, "structures")
    data_line = container.lines[0]
    np.testing.assert_allclose(data_line.get_xdata(), oracle[keep])
    np.testing.assert_allclose(data_line.get_ydata(), predicted[keep])
    segments = container.lines[2][0].get_segments()
    np.testing.assert_allclose([s[1][1] - s[0][1] for s in segments], 2 * std[keep])
    assert "eV/atom" in ax.get_xlabel() and "eV/atom" in ax.get_ylabel()


def test_parity_rejects_bad_input() -> None:
    with pytest.raises(PlotError, match="one value per structure"):
        plot_parity(predicted=[1.0, 2.0], oracle=[1.0])
    with pytest.raises(InputError, match="no finite"):
        plot_parity(predicted=[np.nan], oracle=[1.0])


def test_source_yield_plot(tmp_path: Path) -> None:
    counts = {
        "diffusion": {"generated": 200, "passed_funnel": 120, "queried": 8, "stable": 2},
        "substitution": {"generated": 150, "passed_funnel": 90, "queried": 6, "stable": 3},
        "random": {"generated": 100, "passed_funnel": 20, "queried": 2},
    }
    path = tmp_path / "yield.png"
    fig = plot_source_yield(counts, path=path)
    check_png(path)
    ax = fig.axes[0]
    for stage in ("generated", "passed_funnel", "queried", "stable"):
        heights = [p.get_height() for p in artist(ax, stage).patches]
        assert heights == [counts[s].get(stage, 0) for s in counts]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(counts)
    with pytest.raises(PlotError):
        plot_source_yield({})


def test_discovery_curve_plot(tmp_path: Path) -> None:
    from loop.plots import plot_discovery_curve

    path = tmp_path / "curve.png"
    fig = plot_discovery_curve(oracle_calls=[0, 3, 6, 9], hits=[0, 2, 2, 5], rounds=[0, 1, 2, 3], path=path)
    check_png(path)
    ax = fig.axes[0]
    hits = artist(ax, "hits")
    assert list(hits.get_xdata()) == [0, 3, 6, 9] and list(hits.get_ydata()) == [0, 2, 2, 5]
    average = artist(ax, "average rate")
    assert list(average.get_xdata()) == [0, 9] and list(average.get_ydata()) == [0, 5]
    assert [t.get_text() for t in ax.texts] == ["r0", "r1", "r2", "r3"]
    with pytest.raises(PlotError, match="decrease"):
        plot_discovery_curve(oracle_calls=[0, 3, 2], hits=[0, 1, 1])
    with pytest.raises(PlotError):
        plot_discovery_curve(oracle_calls=[0, 3], hits=[0])
