"""What single stages decide, on real small data (Cu-Au, bundled crystals, EMT labels): the funnel's novelty
without dedup, per-source yield through funnel, labels and hull, the dedup of relaxed structures and crystals in acquire, and
transient oracle failures (never stored, so tried again). The stop rules are tested in test_daemon.py."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from loop.campaign import run_stage
from loop.config import validate_config
from loop.runtime.labelling import label_hashes
from loop.stages import funnel, update
from loop.stages.base import StageContext
from loop.store import CampaignStore, Generated, Prediction, Query
from loop.views.candidate_pool import acquisition_pool
from loop.views.known_index import known_index
from loop.views.round_science import campaign_science, source_yield
from loop.work.acquisition import acquire


def config(**kw):
    return validate_config({"name": "t", "chemical_systems": ["Cu-Au"], "oracle": {"kind": "emt"}, **kw})


def fcc_cu() -> Structure:
    return Structure(Lattice(0.5 * 3.61 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), ["Cu"], [[0, 0, 0]])


def fcc_au() -> Structure:
    return Structure(Lattice(0.5 * 4.08 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), ["Au"], [[0, 0, 0]])


def hexagonal_cuau(a: float = 2.7) -> Structure:
    """A CuAu cell no bundled crystal matches (novel to the funnel)."""
    return Structure(Lattice.hexagonal(a, 4.4), ["Cu", "Au"], [[0, 0, 0], [1 / 3, 2 / 3, 0.5]])


def overlapping_cuau() -> Structure:
    return Structure(Lattice.cubic(4.0), ["Cu", "Au"], [[0, 0, 0], [0.05, 0, 0]])


def b2_cuau() -> Structure:
    """B2 CuAu: the bundled mp-522 crystal, so not novel."""
    return Structure(Lattice.cubic(3.1), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def generate(store: CampaignStore, rnd: int, made: list[tuple[Structure, str]]) -> list[Generated]:
    rows = [Generated(hash=store.add_structure(s, source=src, round=rnd), source=src) for s, src in made]
    store.add_generated(rnd, rows)
    return rows


@pytest.mark.parametrize("deduplicate", [True, False])
def test_funnel_without_dedup_still_rejects_known_crystals_but_not_the_campaigns_own(tmp_path, deduplicate):
    cfg = config(generator={"funnel": {"deduplicate": deduplicate, "require_novel": True}})
    store = CampaignStore.in_workdir(tmp_path)
    # The campaign proposed this crystal in round 0 already.
    store.add_structure(hexagonal_cuau(2.70), source="random_search", round=0)
    generate(
        store,
        1,
        [
            (hexagonal_cuau(2.71), "random_search"),  # the round-0 crystal, slightly strained
            (hexagonal_cuau(2.72), "random_search"),  # and again within the batch
            (fcc_cu(), "substitution"),  # a bundled crystal (mp-30)
        ],
    )
    report = run_stage(funnel.STAGE, StageContext(config=cfg, store=store, workdir=tmp_path, round=1))
    outcome = [(int(c.passed), (c.reason or "").split(":")[0]) for c in store.candidates(1)]
    if deduplicate:
        assert [passed for passed, _ in outcome] == [0, 0, 0]
    else:
        # No dedup: copies of the campaign's own structures and within the batch go on; novelty is still judged
        # against the bundled crystals only.
        assert outcome == [(1, ""), (1, ""), (0, "not_novel")]
    assert report["n_in"] == 3 and report["n_passed"] == sum(p for p, _ in outcome)


def test_per_source_yield_follows_each_generator_through_funnel_labels_and_hull(tmp_path):
    cfg = config(near_stable=0.05)
    store = CampaignStore.in_workdir(tmp_path)
    store.set_meta("config", cfg.model_dump(mode="json"))
    refs = [store.add_structure(s, source="seed", round=0) for s in (fcc_cu(), fcc_au())]
    store.add_queries(
        0, [Query(hash=h, strategy="references", rank=i, score=None) for i, h in enumerate(refs)]
    )
    label_hashes(store, refs, settings=cfg.oracle, workdir=tmp_path, round=0)
    generate(
        store,
        1,
        [
            (hexagonal_cuau(), "substitution"),
            (fcc_cu(), "substitution"),
            (overlapping_cuau(), "random_search"),
            (b2_cuau(), "random_search"),
        ],
    )
    ctx = StageContext(config=cfg, store=store, workdir=tmp_path, round=1)
    report = run_stage(funnel.STAGE, ctx)
    assert report["per_source"] == {
        "substitution": {"in": 2, "passed": 1},
        "random_search": {"in": 2, "passed": 0},
    }
    # Screening is skipped: each survivor is recorded as its own relaxed structure, then queried and labelled.
    passed = [c.hash for c in store.candidates(1, passed=True)]
    store.add_predictions(
        1,
        [
            Prediction(
                hash=h,
                relaxed_hash=h,
                model="pretrained",
                energy_per_atom=None,
                energy_per_atom_std=None,
                e_hull=None,
                e_hull_std=None,
                data={},
            )
            for h in passed
        ],
    )
    store.add_queries(1, [Query(hash=h, strategy="max_std", rank=i, score=1.0) for i, h in enumerate(passed)])
    label_hashes(store, passed, settings=cfg.oracle, workdir=tmp_path, round=1)
    hull = run_stage(update.STAGE, ctx)
    e_hull = {v.hash: v.e_hull for v in store.stability(1)}
    hit = int(cfg.stability_rule.is_hit(e_hull[passed[0]]))
    assert hull["n_hits_new"] == hit
    stable = int(hit and e_hull[passed[0]] <= cfg.stability_rule.tolerance)
    sciences = campaign_science(store)
    expected = {
        "substitution": {
            "generated": 2,
            "passed funnel": 1,
            "oracle calls": 1,
            "hits": hit,
            "stable": stable,
        },
        "random_search": {"generated": 2, "passed funnel": 0, "oracle calls": 0, "hits": 0, "stable": 0},
    }
    # one round alone (its MLflow figure) and rounds 1..1 (the report) are the same counts here
    assert source_yield(sciences, rounds=[1]) == source_yield(sciences, rounds=range(1, 2)) == expected


def add_round_predictions(store: CampaignStore, relaxed_to: dict[str, str]) -> None:
    """Round-1 predictions of candidates (by name) relaxed onto stored structures, E_hull rising in that order."""
    store.add_predictions(
        1,
        [
            Prediction(
                hash=c,
                relaxed_hash=r,
                model="pretrained",
                energy_per_atom=-3.0,
                energy_per_atom_std=0.02 * (i + 1),
                e_hull=0.01 * i,
                e_hull_std=0.02 * (i + 1),
                data={},
            )
            for i, (c, r) in enumerate(relaxed_to.items())
        ],
    )


def test_acquire_offers_each_relaxed_structure_once_and_never_a_labelled_one(tmp_path):
    cfg = config(acquisition={"strategy": "max_std", "budget": 3})
    store = CampaignStore.in_workdir(tmp_path)
    labelled = store.add_structure(fcc_cu(), source="seed", round=0)
    label_hashes(store, [labelled], settings=cfg.oracle, workdir=tmp_path, round=0)
    same = store.add_structure(hexagonal_cuau(), source="relaxed", round=1)
    other = store.add_structure(b2_cuau(), source="relaxed", round=1)
    # Two candidates relaxed onto one structure, one onto an already labelled crystal, one onto its own.
    relaxed_to = {"c1": same, "c2": same, "c3": labelled, "c4": other}
    add_round_predictions(store, relaxed_to)
    assert [p.hash for p in acquisition_pool(cfg, store=store, round=1)] == ["c1", "c4"]
    result = acquire(cfg, store=store, round=1)
    assert sorted(q.hash for q in result.queries) == sorted(
        [same, other]
    )  # budget 3, two distinct structures
    assert result.report["n_queries"] == 2 and result.report["n_pool"] == 2


def test_acquire_offers_each_crystal_once_even_when_relaxed_structures_differ(tmp_path):
    cfg = config(acquisition={"strategy": "max_std", "budget": 4})
    store = CampaignStore.in_workdir(tmp_path)
    labelled = store.add_structure(fcc_cu(), source="seed", round=0)
    label_hashes(store, [labelled], settings=cfg.oracle, workdir=tmp_path, round=0)
    strained_cu = Structure(
        Lattice(0.5 * 3.70 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), ["Cu"], [[0, 0, 0]]
    )
    # Four candidates, four relaxed structures with four hashes, but three crystals, one of them labelled already.
    relaxed_to = {
        "c1": store.add_structure(hexagonal_cuau(2.70), source="relaxed", round=1),
        "c2": store.add_structure(hexagonal_cuau(2.73), source="relaxed", round=1),  # c1's crystal, 1 % wider
        "c3": store.add_structure(strained_cu, source="relaxed", round=1),  # the labelled fcc Cu, 2.5 % wider
        "c4": store.add_structure(b2_cuau(), source="relaxed", round=1),
    }
    assert len(set(relaxed_to.values())) == 4
    add_round_predictions(store, relaxed_to)
    assert [p.hash for p in acquisition_pool(cfg, store=store, round=1)] == ["c1", "c4"]
    result = acquire(cfg, store=store, round=1)
    assert sorted(q.hash for q in result.queries) == sorted([relaxed_to["c1"], relaxed_to["c4"]])


def test_transient_oracle_failures_are_returned_not_stored_and_tried_again(tmp_path, monkeypatch):
    # GPAW asked for 2 MPI ranks on a machine whose PATH has no mpiexec: a fault of the machine, not the structure.
    settings = validate_config(
        {"name": "t", "chemical_systems": ["Cu-Au"], "oracle": {"kind": "gpaw", "mpi_ranks": 2}}
    ).oracle
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    store = CampaignStore.in_workdir(tmp_path)
    h = store.add_structure(fcc_cu(), source="user")
    for _ in range(2):  # the second call tries again: nothing was stored the first time
        results = label_hashes(store, [h], settings=settings, workdir=tmp_path, round=1)
        assert not results[h].ok and results[h].failure_kind == "unavailable"
        assert "mpiexec" in (results[h].reason or "")
        assert store.get_oracle_result(h, settings.settings_hash()) is None
    assert store.oracle_results() == []  # and it costs no oracle call under stop.max_oracle_calls


def test_the_funnel_stores_fingerprints_that_the_next_rounds_index_reuses(tmp_path):
    cfg = config()
    store = CampaignStore.in_workdir(tmp_path)
    generate(store, 1, [(hexagonal_cuau(), "random_search"), (fcc_cu(), "random_search")])
    run_stage(funnel.STAGE, StageContext(config=cfg, store=store, workdir=tmp_path, round=1))
    kept = [c.hash for c in store.candidates(1, passed=True)]
    assert list(store.fingerprints(before_round=2)) == kept
    assert store.fingerprints(before_round=1) == {}
    # Round 2's index knows the kept candidate by its stored fingerprint, and finds it again.
    index = known_index(cfg, store=store, before_round=2)
    assert index.find(hexagonal_cuau(2.71)) == (kept[0], "campaign")
