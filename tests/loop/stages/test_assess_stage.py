"""The assess stage on a real small campaign store: Li-O labelled by the mlff oracle (SevenNet-0), Li2O and Li2O2
queried in round 1 (both on the hull: hits). Every hit gets a row with each requirement's value; the expensive
checks run only on hits that pass the cheap ones; a stop mid-stage redoes only what was not stored."""

from __future__ import annotations

import pytest

from generator.seeds import load_seeds
from loop.config import validate_config
from loop.report.status import campaign_status, export_discoveries
from loop.runtime.control import StopRequested
from loop.runtime.execution import ExecutionConfig, make_executor
from loop.runtime.shortlist import ShortlistRow
from loop.stages.assess import STAGE
from loop.stages.base import StageContext
from loop.store import CampaignStore, Query
from loop.work.assessment import hit_subjects
from loop.work.hull_update import update_hull
from oracle.base import make_oracle

IDS = {"Li": "mp-10173", "O": "mp-12957", "Li2O": "mp-1960", "Li2O2": "mp-841"}


def _config(design):
    return validate_config(
        {
            "name": "assess-li-o",
            "chemical_systems": ["Li-O"],
            "near_stable": 0.05,
            "oracle": {"kind": "mlff"},
            "execution": {"kind": "inline"},
            "tracking": {"enabled": False},
            "design": design,
        }
    )


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A campaign store with real oracle labels: Li and O as round-0 references, Li2O and Li2O2 round-1 queries."""
    root = tmp_path_factory.mktemp("li-o")
    config = _config({})
    seeds = {k.id: k.structure for k in load_seeds(ids=list(IDS.values()))}
    oracle = make_oracle(config.oracle)
    results = {}
    for name, mid in IDS.items():
        result = oracle.label(seeds[mid], workdir=root / "oracle" / name)
        assert result.ok, result.reason
        results[name] = (seeds[mid], result)
    return root, results


def _store(path, labelled, config):
    _root, results = labelled
    store = CampaignStore(path / "matloop.db")
    hashes = {}
    for name, (structure, result) in results.items():
        h = store.add_structure(structure, source="seed" if name in ("Li", "O") else "substitution", round=0)
        store.add_oracle_result(
            h,
            oracle="mlff",
            settings_hash=config.oracle.settings_hash(),
            result=result.to_dict(),
            round=0 if name in ("Li", "O") else 1,
        )
        hashes[name] = h
    store.add_queries(
        0,
        [Query(hash=hashes[n], strategy="references", rank=i, score=None) for i, n in enumerate(["Li", "O"])],
    )
    store.add_queries(
        1,
        [Query(hash=hashes[n], strategy="ucb", rank=i, score=None) for i, n in enumerate(["Li2O", "Li2O2"])],
    )
    store.set_stability(1, update_hull(config, store=store, round=1).verdicts)
    return store, hashes


def _context(config, store, path, stop=lambda: False, executor=None):
    return StageContext(
        config=config, store=store, workdir=path, round=1, executor=executor, should_stop=stop
    )


def test_every_hit_gets_a_row_cheap_first(labelled, tmp_path):
    # Li2O2 is oxidised at Li2O's upper end (~2.6 V with SevenNet-0): a window from below 1 V up to 3 V fails it.
    config = _config(
        {
            "density": {"max_g_cm3": 2.5},
            "electrochemical_window": {"max_reduction_v": 1.0, "min_oxidation_v": 2.0},
            "phonons": {"tolerance_thz": 0.1, "min_length_a": 5.0},
        }
    )
    store, hashes = _store(tmp_path, labelled, config)
    assert {s.key for s in hit_subjects(config, store)} == {hashes["Li2O"], hashes["Li2O2"]}
    result = STAGE.compute(_context(config, store, tmp_path))
    metrics = STAGE.commit(_context(config, store, tmp_path), result)
    rows = {ShortlistRow.from_dict(r).formula: ShortlistRow.from_dict(r) for r in store.shortlist()}
    assert set(rows) == {"Li2O", "Li2O2"} and metrics["n_assessed"] == 2
    li2o, li2o2 = rows["Li2O"], rows["Li2O2"]
    assert li2o.results["electrochemical_window"].status == "pass"
    assert li2o.results["electrochemical_window"].data["reduction_v"] == 0.0
    assert li2o2.results["electrochemical_window"].status == "fail"
    assert li2o2.results["electrochemical_window"].data["reduction_v"] > 1.0
    # the density of the oracle-relaxed cell, and the band gap unknown because the mlff oracle computes none
    final = store.get_structure(li2o.structure_hash)
    assert li2o.results["density"].value == pytest.approx(float(final.density))
    assert (
        li2o.results["band_gap"].status == "unknown"
        and "mlff computes no band gap" in li2o.results["band_gap"].detail
    )
    # the expensive check ran on the hit that passed the cheap ones only
    assert (
        li2o2.results["phonons"].status == "unknown"
        and "not run: failed electrochemical_window" in li2o2.results["phonons"].detail
    )
    assert li2o.results["phonons"].status in ("pass", "fail") and isinstance(
        li2o.results["phonons"].value, float
    )
    assert metrics["computed"] == {"phonons": 1} and li2o2.status == "fail"
    # status and export show the same rows
    store.set_meta("config", config.model_dump(mode="json"))
    info = campaign_status(tmp_path, store=store)
    assert [r["hash"] for r in info["shortlist"]] == [r["hash"] for r in store.shortlist()]
    assert info["n_shortlisted"] == sum(r["status"] == "pass" for r in store.shortlist())
    exported = export_discoveries(tmp_path, out=tmp_path / "export", hits_only=True)
    lines = (tmp_path / "export" / "shortlist.csv").read_text().splitlines()
    assert (
        exported["n_shortlist_rows"] == 2 and len(lines) == 3 and "electrochemical_window_status" in lines[0]
    )
    assert list(li2o.results) == [
        "elements",
        "cost",
        "density",
        "band_gap",
        "electrochemical_window",
        "conductivity",
        "phonons",
        "thermal",
    ]


def test_a_stop_mid_assessment_redoes_only_what_was_not_stored(labelled, tmp_path):
    config = _config({"phonons": {"tolerance_thz": 0.1, "min_length_a": 5.0}})
    store, _ = _store(tmp_path, labelled, config)
    stop_now = {"after": 1}
    committed = []

    def stop():
        committed.append(1)
        return len(committed) >= stop_now["after"]

    with pytest.raises(StopRequested):
        STAGE.compute(_context(config, store, tmp_path, stop))
    key = config.design.settings_key("phonons")
    first = store.assessments("phonons", key)
    assert len(first) == 1
    stamp = store._query("SELECT hash, created_at FROM assessments")[0]
    # resumed through a Dask worker, as a campaign runs it
    with make_executor(ExecutionConfig(kind="local", n_workers=1)) as executor:
        result = STAGE.compute(_context(config, store, tmp_path, executor=executor))
    assert result.report.computed == {"phonons": 1} and result.report.reused == {"phonons": 1}
    assert (
        store._query("SELECT created_at FROM assessments WHERE hash = ?", (stamp["hash"],))[0]["created_at"]
        == stamp["created_at"]
    )
    assert len(store.assessments("phonons", key)) == 2
    # a third pass computes nothing; other settings are other results
    again = STAGE.compute(_context(config, store, tmp_path))
    assert again.report.computed == {"phonons": 0} and again.report.reused == {"phonons": 2}
    other = _config({"phonons": {"tolerance_thz": 0.2, "min_length_a": 5.0}})
    assert other.design.settings_key("phonons") != key
