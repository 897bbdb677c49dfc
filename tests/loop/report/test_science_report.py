"""The science report (`matloop report`): built from a real smoke campaign (EMT on Cu-Au, 2 rounds), checked
against an independent reading of its store, and rendered in headless chromium.

The smoke campaign is the session's shared one (`conftest.smoke_campaign`; MATLOOP_TEST_SMOKE_WORKDIR reuses a finished
one); it is only read, never changed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loop.science.verdicts import StabilityRule
from loop.store import CampaignStore
from tests.loop.cli_process import matloop

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.yaml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IMG_SRC = re.compile(r'<img[^>]*\ssrc="([^"]*)"')


@pytest.fixture(scope="session")
def smoke_report(smoke_campaign, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    proc = matloop("report", "--workdir", smoke_campaign, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    return out


def independent_hits(workdir: Path) -> tuple[dict[str, float], dict[int, int], float]:
    """E_hull of every round >= 1 query on the final hull, rebuilt with pymatgen from the stored oracle energies;
    calls per round; the campaign's near-stable threshold."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    store = CampaignStore.in_workdir(workdir)
    try:
        settings_hash = store.get_meta("identity")["oracle"]
        near = store.get_meta("config")["near_stable"]
        results = [r for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)]
        structures = store.get_structures([r.hash for r in results])
        entries = {r.hash: PDEntry(structures[r.hash].composition, r.energy, name=r.hash) for r in results}
        pd = PhaseDiagram(list(entries.values()))
        queries = [(rnd, q) for rnd, qs in store.queries_by_round().items() if rnd >= 1 for q in qs]
        # A label whose relaxed structure repeats an earlier one is no new discovery.
        repeats = {r.hash for r in results if getattr(r, "duplicate_of", None)}
        e_hull = {
            q.hash: pd.get_e_above_hull(entries[q.hash])
            for _, q in queries
            if q.hash in entries and q.hash not in repeats
        }
        per_round: dict[int, int] = {}
        for rnd, _ in queries:
            per_round[rnd] = per_round.get(rnd, 0) + 1
        return e_hull, per_round, near
    finally:
        store.close()


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------------------------
def test_missing_workdir_is_one_line_exit_2(tmp_path):
    out = tmp_path / "report.html"
    proc = matloop("report", "--workdir", tmp_path / "nowhere", "--out", out)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no such directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "nowhere").exists()


def test_directory_without_campaign_is_refused_and_left_untouched(tmp_path):
    folder = tmp_path / "not-a-campaign"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    out = tmp_path / "report.html"
    proc = matloop("report", "--workdir", folder, "--out", out)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a campaign" in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert not out.exists()


def test_report_command_has_help():
    proc = matloop("report", "--help")
    assert proc.returncode == 0 and "--out" in proc.stdout and "--force" in proc.stdout


# -- figures on small made-up (but physical) hulls: fast checks of what each figure draws -------------------------------
LI_FE_O = {
    "Li": ("Li", -1.90),
    "O2": ("O2", -4.90),
    "Fe": ("Fe", -8.30),
    "Li2O": ("Li2O", -4.7667),
    "Li2O2": ("Li2O2", -4.75),
    "Fe2O3": ("Fe2O3", -7.60),
    "LiFeO2": ("LiFeO2", -6.75),
}


def _hull(names):
    from loop.science.hull import HullEntry, OracleHull

    return OracleHull.from_entries(
        [HullEntry(entry_id=k, composition=LI_FE_O[k][0], energy_per_atom=LI_FE_O[k][1]) for k in names]
    )


def _offsets(ax, label):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, label
    return np.asarray(found[0].get_offsets())


def test_binary_hull_marks_references_discoveries_and_rediscoveries():
    from loop.report.plots import plot_hull_roles

    hull = _hull(["Li", "O2", "Li2O", "Li2O2"])
    roles = {"Li": "reference", "O2": "reference", "Li2O": "discovery", "Li2O2": "rediscovery"}
    ax = plot_hull_roles(hull, chemsys=["Li", "O"], roles=roles, near_stable=0.05).axes[0]
    x_li2o = 1 / 3
    e_li2o = -4.7667 - ((1 - x_li2o) * -1.90 + x_li2o * -4.90)
    np.testing.assert_allclose(_offsets(ax, "discovery"), [[x_li2o, e_li2o]], atol=1e-9)
    assert len(_offsets(ax, "reference")) == 2 and len(_offsets(ax, "rediscovery")) == 1
    hull_line = next(line for line in ax.lines if line.get_label() == "hull")
    np.testing.assert_allclose(
        np.column_stack(hull_line.get_data()), [[0, 0], [x_li2o, e_li2o], [1, 0]], atol=1e-9
    )
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "discovery (hit) (1)" in texts and "reference (round 0) (2)" in texts


def test_ternary_hull_draws_the_gibbs_triangle():
    from loop.report.plots import plot_hull_roles

    hull = _hull(list(LI_FE_O))
    roles = {k: "reference" for k in ("Li", "O2", "Fe", "Li2O", "Fe2O3")} | {"LiFeO2": "discovery"}
    ax = plot_hull_roles(hull, chemsys=["Li", "Fe", "O"], roles=roles, near_stable=0.05).axes[0]
    # LiFeO2 = 1/4 Li, 1/4 Fe, 1/2 O, at corners Li (0, 0), Fe (1, 0), O (1/2, sqrt(3)/2)
    np.testing.assert_allclose(_offsets(ax, "discovery"), [[0.25 + 0.25, np.sqrt(3) / 4]], atol=1e-9)
    assert len(_offsets(ax, "reference")) == 5 and len(_offsets(ax, "candidate")) == 1  # Li2O2


def test_progress_and_calibration_figures_check_their_input():
    from loop.report.plots import PlotError, plot_calibration, plot_discovery_progress

    with pytest.raises(PlotError):
        plot_discovery_progress(rounds=[1, 2], oracle_calls=[4, 4], hits=[1, 5], cumulative_hits=[1, 6])
    with pytest.raises(PlotError):
        plot_calibration(std=[float("nan")], abs_error=[0.1], rounds=[1])
    fig = plot_calibration(std=[0.1] * 4, abs_error=[0.05, 0.05, 0.15, 0.3], rounds=[1, 1, 2, 2])
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "50 % within 1σ" in texts and "75 % within 2σ" in texts


# -- the report of a real campaign ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_existing_output_needs_force(smoke_campaign, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("keep me")
    proc = matloop("report", "--workdir", smoke_campaign, "--out", out)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert out.read_text() == "keep me"
    missing_parent = tmp_path / "no" / "such" / "report.html"
    proc = matloop("report", "--workdir", smoke_campaign, "--out", missing_parent)
    assert proc.returncode == 2 and not missing_parent.parent.exists()
    proc = matloop("report", "--workdir", smoke_campaign, "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


@pytest.mark.slow
def test_report_is_self_contained_and_every_figure_is_a_valid_png(smoke_report):
    text = smoke_report.read_text()
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    # only references inside the page (the structure drawings' shadings), nothing fetched
    assert not re.search(r"url\((?!#)", text)
    assert not re.search(r'(?:src|href)="(?!data:|#)', text)
    sources = IMG_SRC.findall(text)
    # hull, discovery progress, E_hull per call, emulator MAE, calibration, yield per source
    assert len(sources) >= 6
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()
        assert image.format == "PNG" and image.width > 300 and image.height > 200
        # not a blank canvas: a real figure has ink
        pixels = np.asarray(image.convert("L"))
        assert (pixels < 128).mean() > 0.005


@pytest.mark.slow
def test_report_numbers_match_the_store(smoke_campaign, smoke_report):
    text = html.unescape(smoke_report.read_text())
    e_hull, per_round, near = independent_hits(smoke_campaign)
    rule = StabilityRule(near_stable=near)
    hits = {h for h, e in e_hull.items() if rule.is_hit(e)}
    assert hits, "the smoke campaign finds at least one near-stable structure"
    # EMT is a toy potential: the report must say the oracle is a surrogate, not DFT
    assert "Surrogate oracle, not DFT: emt is" in text
    section = text.split("<h2>Discoveries")[1].split("<h2>")[0]
    listed = set(re.findall(r"<span class='mono'>([0-9a-f]+)</span>", section))
    assert listed == hits
    assert f"Discoveries ({len(hits)}, of which" in text
    for h in hits:
        assert f"{e_hull[h]:+.4f}" in section
    total = sum(per_round.values())
    assert f'<div class="v">{total}</div><div class="k">oracle calls after round 0</div>' in text
    assert f'<div class="v">{len(hits)}</div><div class="k">hits' in text
    # per-round table: round, generated, passed, screened, carried, calls, failed, relaxation not converged, hits
    store = CampaignStore.in_workdir(smoke_campaign)
    try:
        settings_hash = store.get_meta("identity")["oracle"]
        meta = {r.hash: r.metadata for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)}
        unconverged = {
            rnd: sum(meta.get(q.hash, {}).get("relax_converged") is False for q in qs)
            for rnd, qs in store.queries_by_round().items()
        }
        carried = {
            rnd: sum("pool" in p.data for p in preds) for rnd, preds in store.predictions_by_round().items()
        }
        queried = {rnd: [q.hash for q in qs] for rnd, qs in store.queries_by_round().items()}
        verdicts = {rnd: {v.hash: v.hit for v in store.stability(rnd)} for rnd in per_round}
    finally:
        store.close()
    table = text.split("<h2>Discovery per round</h2>")[1].split("<h2>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    assert [int(re.findall(r"<td[^>]*>(.*?)</td>", r)[0]) for r in rows] == sorted(per_round)
    for row in rows:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        rnd = int(cells[0])
        assert int(cells[4]) == carried.get(rnd, 0)
        assert int(cells[5]) == per_round[rnd]
        assert int(cells[7]) == unconverged[rnd]
        # each round judged on the hull at its end: the update stage's stored verdicts of that round
        round_hits = sum(1 for h in queried[rnd] if verdicts[rnd].get(h, False))
        assert int(cells[8]) == round_hits
    # each discovery says how the oracle's relaxation ended, from the stored result
    for row in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1]):
        h = re.findall(r"<span class='mono'>([0-9a-f]+)</span>", row)[0]
        m = meta[h]
        if m.get("relax_converged") is True:
            assert f"converged in {m['relax_steps_taken']} steps" in row
        elif m.get("relax_converged") is False:
            assert "not converged" in row and "upper bound" in row
    # provenance: every discovery names its generator
    for source in re.findall(r"<td>(diffusion|substitution|random_search)</td>", section):
        assert source in ("diffusion", "substitution", "random_search")
    assert len(re.findall(r"<td>(?:diffusion|substitution|random_search)</td>", section)) == len(hits)


def test_discoveries_show_their_distance_to_the_known_phases(smoke_campaign, smoke_report):
    """The "vs known phases" column: each hit's energy above the hull of the round-0 references alone, rebuilt
    here with pymatgen from the stored energies."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    store = CampaignStore.in_workdir(smoke_campaign)
    try:
        settings_hash = store.get_meta("identity")["oracle"]
        results = {r.hash: r for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)}
        structures = store.get_structures(list(results))
        first = store.first_query_rounds()
    finally:
        store.close()
    known = PhaseDiagram(
        [PDEntry(structures[h].composition, r.energy) for h, r in results.items() if first.get(h) == 0]
    )
    text = html.unescape(smoke_report.read_text())
    section = text.split("<h2>Discoveries")[1].split("<h2>")[0]
    assert "vs known phases (eV/atom)" in section
    e_hull, _, near = independent_hits(smoke_campaign)
    hits = [h for h, e in e_hull.items() if StabilityRule(near_stable=near).is_hit(e)]
    for row in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1]):
        h = re.findall(r"<span class='mono'>([0-9a-f]+)</span>", row)[0]
        assert h in hits
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        expected = known.get_e_above_hull(
            PDEntry(structures[h].composition, results[h].energy), allow_negative=True
        )
        assert float(cells[4]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_rediscovery_section_matches_withheld_structures(smoke_campaign, tmp_path):
    """A withheld phase that the campaign labelled (given as a rotated supercell, so only StructureMatcher can
    match it) is reported as rediscovered at its round and call; one it never proposed is reported as not found."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.operations import SymmOp

    from loop.report.science import collect

    workdir = tmp_path / "campaign"
    workdir.mkdir()
    for name in ("matloop.db", "matloop.db-wal", "matloop.db-shm"):
        if (smoke_campaign / name).exists():
            shutil.copy2(smoke_campaign / name, workdir / name)
    e_hull, _, _ = independent_hits(smoke_campaign)
    store = CampaignStore.in_workdir(workdir)
    queries = [q for rnd, qs in store.queries_by_round().items() if rnd >= 1 for q in qs]
    target = next(q for q in queries if q.hash in e_hull)
    labelled = store.get_structures([q.hash for q in queries])
    withheld = labelled[target.hash].copy()
    withheld.make_supercell([[1, 1, 0], [-1, 1, 0], [0, 0, 1]])
    withheld.apply_operation(SymmOp.from_axis_angle_and_translation([0, 0, 1], 17.0))
    never = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.75), ["Cu"], [[0, 0, 0]])
    never.make_supercell([2, 1, 1])
    never.replace(0, "Au")  # Cu7Au: a composition the smoke campaign does not propose
    matcher = StructureMatcher()
    assert not any(matcher.fit(s, never) for s in labelled.values())
    store.set_meta(
        "withheld",
        [
            # the record the campaign keeps in rediscovery mode
            {
                "material_id": "mp-withheld-1",
                "formula": withheld.composition.reduced_formula,
                "spacegroup": None,
                "structure": withheld.as_dict(),
            },
            {
                "material_id": "mp-withheld-2",
                "formula": "Cu7Au",
                "spacegroup": 123,
                "structure": never.as_dict(),
            },
        ],
    )
    store.close()
    data = collect(workdir)
    found = {w.id: w.found for w in data.withheld}
    order = [q.hash for q in queries]
    first_match = next(h for h in order if matcher.fit(labelled[h], withheld))
    assert found["mp-withheld-1"] is not None and found["mp-withheld-1"].hash == first_match
    assert found["mp-withheld-1"].index == order.index(first_match) + 1
    assert found["mp-withheld-2"] is None
    out = tmp_path / "report.html"
    proc = matloop("report", "--workdir", workdir, "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    section = text.split("<h2>Rediscovery of withheld phases</h2>")[1].split("<h2>")[0]
    assert "<td>mp-withheld-1</td>" in section and "<td>mp-withheld-2</td>" in section
    assert "1 of 2 rediscovered" in section
    assert '<div class="v">1/2</div><div class="k">withheld phases rediscovered' in text


@pytest.mark.slow
def test_each_discovery_is_drawn_in_the_page_and_downloads_as_cif(smoke_campaign, smoke_report):
    """The viewer: one inline SVG per discovery with every atom of its oracle-relaxed cell (and the images on the
    opposite faces) drawn, and a CIF data link that parses back to the same crystal."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from loop.report.structure_view import VIEWS

    text = smoke_report.read_text()
    section = text.split("<h2>Structures of the discoveries</h2>")[1].split("<h2>")[0]
    e_hull, _, near = independent_hits(smoke_campaign)
    hits = {h for h, e in e_hull.items() if StabilityRule(near_stable=near).is_hit(e)}
    store = CampaignStore.in_workdir(smoke_campaign)
    try:
        settings_hash = store.get_meta("identity")["oracle"]
        finals = {h: store.get_oracle_result(h, settings_hash).structure_hash for h in hits}
        relaxed = store.get_structures(sorted(set(finals.values())))
    finally:
        store.close()
    cells = dict(re.findall(r'<div class="cell" id="structure-([0-9a-f]+)">(.*?)</div></div>', section, re.S))
    assert set(cells) == hits
    for h, cell in cells.items():
        structure = relaxed[finals[h]]
        # drawn in its conventional standard cell: at least one disc per site of that cell in each view, plus
        # the images on the faces a site touches
        drawn = SpacegroupAnalyzer(structure, symprec=0.1).get_conventional_standard_structure()
        discs = len(re.findall(r"<circle ", cell)) - len({s.specie.symbol for s in structure})
        assert discs >= len(VIEWS) * len(drawn) and discs % len(VIEWS) == 0
        assert f"{len(drawn)} atoms;" in cell and f"(CIF: the labelled cell, {len(structure)} atoms)" in cell
        cif = re.search(r'download="[^"]+\.cif" href="data:chemical/x-cif;base64,([^"]+)"', cell).group(1)
        parsed = Structure.from_str(base64.b64decode(cif).decode(), fmt="cif")
        assert StructureMatcher().fit(parsed, structure)
        assert parsed.composition.reduced_formula == structure.composition.reduced_formula


def test_structure_drawing_repeats_face_atoms():
    from pymatgen.core import Lattice, Structure

    from loop.report.structure_view import structure_svg

    fcc = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
    svg = structure_svg(fcc, uid="fcc")
    # 8 corners + 6 face centres in each of the three views, and one disc in the key
    assert svg.count("<circle ") == 3 * 14 + 1
    assert "http" not in svg and "<script" not in svg


@pytest.mark.slow
def test_the_candidates_left_in_the_pool_are_listed_with_prediction_and_score(smoke_campaign, smoke_report):
    """The last round's screened candidates: one row per relaxed structure, queried ones at their oracle call with
    the score the acquire stage stored, the rest in the pool, each with the emulator's E_hull ± σ."""
    text = html.unescape(smoke_report.read_text())
    store = CampaignStore.in_workdir(smoke_campaign)
    try:
        last = max(store.predictions_by_round())
        settings_hash = store.get_meta("identity")["oracle"]
        earlier = {r.hash for r in store.oracle_results(settings_hash=settings_hash) if r.round < last}
        # what acquisition was offered: none labelled in an earlier round
        preds = {p.relaxed_hash: p for p in store.round_predictions(last) if p.relaxed_hash not in earlier}
        preds.pop(None, None)
        queries = {q.hash: q for q in store.round_queries(last)}
        order = [q.hash for rnd, qs in sorted(store.queries_by_round().items()) if rnd >= 1 for q in qs]
    finally:
        store.close()
    section = text.split(f"<h2>Candidates screened in round {last} (")[1].split("<h2>")[0]
    assert f"{len(preds) - len(queries)} not queried)" in text
    rows = re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1])
    assert len(rows) == min(len(preds), 60)
    scores = []
    for row in rows:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        h = re.search(r"<span class='mono'>([0-9a-f]+)</span>", cells[1]).group(1)
        p = preds[h]
        assert cells[4] == f"{p.e_hull:+.3f} ± {p.e_hull_std:.3f}"
        score = float(cells[5])
        scores.append(score)
        if h in queries:
            assert cells[6] == f"oracle call {order.index(h) + 1}"
            assert score == pytest.approx(queries[h].score, abs=1e-3)
        else:
            assert cells[6] == "in the pool"
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_the_random_expectation_is_stated_from_the_screened_candidates(smoke_campaign, smoke_report):
    """The hits-against-calls figure states the uniform-random prevalence it draws: the mean emulator probability of
    a hit over each round's screened candidates, recomputed here with scipy."""
    from scipy.stats import norm

    text = html.unescape(smoke_report.read_text())
    store = CampaignStore.in_workdir(smoke_campaign)
    try:
        near = store.get_meta("config")["near_stable"]
        for rnd, preds in store.predictions_by_round().items():
            placed = {p.relaxed_hash: p for p in preds if p.relaxed_hash and p.e_hull is not None}
            p_hit = np.mean([norm.cdf((near - p.e_hull) / p.e_hull_std) for p in placed.values()])
            assert f"round {rnd}: {100 * p_hit:.0f} % of {len(placed)}" in text
    finally:
        store.close()


@pytest.mark.slow
def test_mlflow_status_and_the_report_give_the_same_round_figures(smoke_campaign, tmp_path_factory):
    """One computation, three readers: the MLflow parent's curves (logged afresh from the store), `matloop status`
    and the report's per-round table agree round by round."""
    from tracked_smoke import SMOKE_NAME, resynced_smoke

    from loop.report.science import collect, write_report
    from loop.report.status import campaign_status
    from loop.tracking.runs import Tracker, TrackingConfig
    from loop.views.round_science import YIELD_STAGES, source_yield

    workdir = resynced_smoke(smoke_campaign, tmp_path_factory)
    client = Tracker(config=TrackingConfig(), workdir=workdir, campaign_name=SMOKE_NAME).client
    store = CampaignStore.in_workdir(workdir)
    try:
        parent = client.get_run(store.get_meta("mlflow_parent_run"))
    finally:
        store.close()

    def curve(key):
        return {m.step: m.value for m in client.get_metric_history(parent.info.run_id, key)}

    mlflow = {
        key: curve(key)
        for key in (
            "oracle_calls",
            "discoveries",
            "on_hull",
            "discoveries_cumulative",
            "screening_mae_eV_per_atom",
        )
    }
    status = {r["round"]: r for r in campaign_status(workdir)["rounds"]}
    data = collect(workdir)
    out = tmp_path_factory.mktemp("agree") / "report.html"
    write_report(workdir=workdir, out=out)
    table = html.unescape(out.read_text()).split("<h2>Discovery per round</h2>")[1].split("<h2>")[0]
    cells = {
        int(c[0]): c
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
        if (c := re.findall(r"<td[^>]*>(.*?)</td>", row))
    }
    assert [x.round for x in data.rounds] == sorted(cells) == [1, 2]
    for x in data.rounds:
        k = x.round
        assert mlflow["oracle_calls"][k] == x.oracle_calls == status[k]["queried"] == int(cells[k][5])
        assert mlflow["discoveries"][k] == x.discoveries == status[k]["hits"] == int(cells[k][8])
        assert mlflow["on_hull"][k] == x.on_hull == status[k]["stable"] == int(cells[k][9])
        assert mlflow["discoveries_cumulative"][k] == x.discoveries_cumulative == status[k]["hits_cumulative"]
        assert x.discoveries_cumulative == int(cells[k][11])
        mae = mlflow["screening_mae_eV_per_atom"][k]
        assert mae == pytest.approx(x.screening_mae) and mae == pytest.approx(status[k]["emulator_mae"])
        assert f"{1000 * mae:.0f}" == cells[k][13]
    # at the last round the running count is the discoveries on the final hull
    assert data.rounds[-1].discoveries_cumulative == len(data.discoveries)
    # the yield per generator: one rule for a round's MLflow figure and the report's table
    total = {key: sum(d[key] for d in data.source_yield.values()) for key in YIELD_STAGES}
    assert total["generated"] == sum(status[k]["generated"] for k in (1, 2))
    assert total["passed funnel"] == sum(status[k]["passed_funnel"] for k in (1, 2))
    assert total["oracle calls"] == sum(mlflow["oracle_calls"].values())
    assert total["hits"] == mlflow["discoveries_cumulative"][2] == len(data.discoveries)
    assert total["stable"] == sum(1 for d in data.discoveries if d.call.verdict == "stable")
    for k in (1, 2):
        one = source_yield(data.rounds, rounds=[k])
        assert sum(d["hits"] for d in one.values()) == mlflow["discoveries"][k]
        assert sum(d["oracle calls"] for d in one.values()) == mlflow["oracle_calls"][k]
    with pytest.raises(ValueError, match=r"one round or rounds 1\.\.R"):
        source_yield(data.rounds, rounds=[2, 3])


# -- in a real browser ------------------------------------------------------------------------------------------------
_CHECK_IMAGES = """
<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify([...document.images].map(
    (i) => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})));
  document.body.appendChild(out);
});
</script>
"""


def chromium(*args: object, profile: Path) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; scripts/setup.sh installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *map(str, args)], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(smoke_report, tmp_path):
    # A copy with a tiny script that writes each image's decoded size into the DOM (the report itself has none).
    probe = tmp_path / "probe.html"
    probe.write_text(smoke_report.read_text().replace("</body>", _CHECK_IMAGES + "</body>"))
    proc = chromium(
        "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile1"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="image-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the page did not finish loading"
    images = json.loads(html.unescape(found.group(1)))
    assert len(images) == len(IMG_SRC.findall(smoke_report.read_text())) >= 6
    for image in images:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image
    shot = tmp_path / "report.png"
    proc = chromium(
        f"--screenshot={shot}",
        "--window-size=1280,3000",
        smoke_report.as_uri(),
        profile=tmp_path / "profile2",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = Image.open(shot)
    assert image.size == (1280, 3000)
    pixels = np.asarray(image.convert("L"))
    # the page shows text and figures, not a blank or error page
    assert (pixels < 128).mean() > 0.01
    keep = os.environ.get("MATLOOP_TEST_SCREENSHOT_DIR")
    if keep:
        shutil.copy2(shot, Path(keep) / "science_report.png")


def test_a_relaxation_stopped_at_its_step_limit_is_flagged_as_an_upper_bound(tmp_path):
    """Real EMT relaxations of a rattled Cu cell, stored as a campaign stores them: one stopped after 1 step (not
    converged), one run to convergence; the report's words for each come from the stored result."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from loop.report.science import Call
    from loop.science.verdicts import Verdict
    from oracle import EMTOracle, EMTSettings

    cell = Structure(
        Lattice.cubic(3.62), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )
    rng = np.random.default_rng(7)
    for i in range(len(cell)):
        cell.translate_sites([i], rng.normal(0, 0.08, 3), frac_coords=False)
    store = CampaignStore(tmp_path / "matloop.db")
    calls = {}
    try:
        h = store.add_structure(cell, source="relaxed", round=1)
        for steps in (1, 200):
            settings = EMTSettings(relax_steps=steps, relax_fmax=0.01)
            result = EMTOracle(settings).label(cell, workdir=tmp_path / f"steps-{steps}")
            assert result.ok, result.reason
            store.add_oracle_result(
                h, oracle="emt", settings_hash=settings.settings_hash(), result=result.to_dict()
            )
            stored = store.get_oracle_result(h, settings.settings_hash())
            calls[steps] = Call(
                index=1, round=1, hash=h, status="ok", e_hull=0.0, verdict=Verdict.STABLE, duplicate_of=None,
                result=stored,
            )  # fmt: skip
    finally:
        store.close()
    short, long = calls[1], calls[200]
    assert short.relax_unconverged and short.relaxation == "not converged (1 step): E_hull is an upper bound"
    assert not long.relax_unconverged
    assert long.relaxation == f"converged in {long.result.metadata['relax_steps_taken']} steps"
    assert 1 < long.result.metadata["relax_steps_taken"] < 200
