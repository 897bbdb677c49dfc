from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from pymatgen.core import Composition

from loop.errors import InputError
from loop.report.plots import PlotError, plot_hull_roles, plot_parity, plot_source_yield
from loop.science.hull import HullEntry, OracleHull

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


def test_round_hull_stars_only_the_hits_and_shows_the_hit_band(tmp_path: Path) -> None:
    """A round's hull as MLflow logs it: of the round's two queries only the hit is a red star; the other is a
    plain query marker; the band near_stable above the hull is shaded and both are named in the legend."""
    table = {**LI_O, "LiO3": ("LiO3", -4.40)}  # far above the hull: queried, not a hit
    hull = make_hull(table)
    e_hull = hull.entry_e_above_hull()
    assert e_hull["Li2O2"] <= 0.1 < e_hull["LiO3"]
    roles = {
        "Li": "reference",
        "O2": "reference",
        "Li2O": "earlier_discovery",
        "Li2O2": "discovery",
        "LiO3": "query",
    }
    fig = plot_hull_roles(hull, chemsys=["Li", "O"], roles=roles, near_stable=0.1, title="round 2")
    fig.savefig(tmp_path / "hull.png")
    check_png(tmp_path / "hull.png")
    ax = fig.axes[0]
    np.testing.assert_allclose(artist(ax, "discovery").get_offsets(), [formation("Li2O2", -4.75)], atol=1e-9)
    stars = [c for c in ax.collections if c.get_label() in ("discovery", "earlier_discovery")]
    assert {c.get_label() for c in stars} == {"discovery", "earlier_discovery"}
    np.testing.assert_allclose(artist(ax, "query").get_offsets(), [formation("LiO3", -4.40)], atol=1e-9)
    # the band: near_stable above the hull, at every hull vertex
    band = artist(ax, "band").get_paths()[0].vertices
    for comp, e in (("Li", -1.90), ("Li2O", -4.7667), ("O2", -4.90)):
        x, y = formation(comp, e)
        assert band[np.isclose(band[:, 0], x), 1].max() == pytest.approx(y + 0.1, abs=1e-9)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "discovery (hit) (1)" in texts
    assert "queried this round, not a hit (1)" in texts
    assert "hit band (≤ 100 meV/atom above)" in texts


def test_hull_plot_needs_references() -> None:
    hull = make_hull({"Li": LI_O["Li"], "Li2O": LI_O["Li2O"]})
    with pytest.raises(PlotError, match="O"):
        plot_hull_roles(hull, chemsys=["Li", "O"], roles={}, near_stable=0.1)
    with pytest.raises(PlotError, match="no oracle entries"):
        plot_hull_roles(hull, chemsys=["Cu", "Au"], roles={}, near_stable=0.1)


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
        "diffusion": {"generated": 200, "passed funnel": 120, "oracle calls": 8, "hits": 2},
        "substitution": {"generated": 150, "passed funnel": 90, "oracle calls": 6, "hits": 3},
        "random": {"generated": 100, "passed funnel": 20, "oracle calls": 2},
    }
    path = tmp_path / "yield.png"
    fig = plot_source_yield(counts, path=path)
    check_png(path)
    ax = fig.axes[0]
    for stage in ("generated", "passed funnel", "oracle calls", "hits"):
        heights = [p.get_height() for p in artist(ax, stage).patches]
        assert heights == [counts[s].get(stage, 0) for s in counts]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(counts)
    with pytest.raises(PlotError):
        plot_source_yield({})


def test_discovery_curve_draws_each_hit_at_its_call(tmp_path: Path) -> None:
    from loop.report.plots import plot_discovery_curve

    path = tmp_path / "curve.png"
    hits = [True, True, False, False, False, True]
    rounds = [1, 1, 1, 2, 2, 2]
    expected = [0.3, 0.6, 0.9, 1.1, 1.3, 1.5]
    fig = plot_discovery_curve(
        hits=hits, rounds=rounds, expected=expected, expected_label="random", path=path
    )
    check_png(path)
    ax = fig.axes[0]
    curve = artist(ax, "discoveries")
    assert list(curve.get_xdata()) == [0, 1, 2, 3, 4, 5, 6] and list(curve.get_ydata()) == [
        0,
        1,
        2,
        2,
        2,
        2,
        3,
    ]
    markers = artist(ax, "hits")
    assert list(markers.get_xdata()) == [1, 2, 6] and list(markers.get_ydata()) == [1, 2, 3]
    baseline = artist(ax, "expected")
    np.testing.assert_allclose(baseline.get_ydata(), [0.0, *expected])
    assert "random" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.get_text() for t in ax.texts] == ["round 1", "round 2"]
    with pytest.raises(PlotError, match="one expected"):
        plot_discovery_curve(hits=[True], rounds=[1], expected=[0.1, 0.2])
    with pytest.raises(PlotError):
        plot_discovery_curve(hits=[], rounds=[])
