from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pymatgen.core import Structure

from loop.errors import InputError
from loop.science.structures import structure_hash
from loop.store import SCHEMA_VERSION, CampaignStore, Query, SchemaMismatch, StabilityRecord

ROOT = Path(__file__).resolve().parents[2]
NACL = Structure.from_file(ROOT / "configs" / "structures" / "NaCl_mp-22862.cif")
SI = Structure.from_file(ROOT / "configs" / "structures" / "Si_mp-149.cif")

RESULT = {
    "status": "ok",
    "energy": -10.5,
    "energy_per_atom": -5.25,
    "forces": [[0.0, 0.0, 0.1], [0.0, 0.0, -0.1]],
    "stress": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
    "wall_time": 3.2,
    "attempts": 1,
    "settings": {"cutoff": 500},
    "metadata": {},
}


def test_schema_is_wal_and_round_trips_structures(tmp_path):
    store = CampaignStore.in_workdir(tmp_path)
    h = store.add_structure(NACL, source="seed", parent="mp-22862", round=0, provenance={"role": "compound"})
    assert h == structure_hash(NACL)
    # The first provenance wins: re-adding the same crystal from another source keeps the original row.
    assert store.add_structure(NACL.copy(), source="substitution", round=3) == h
    rows = store.structure_rows()
    assert len(rows) == 1 and rows[0].source == "seed" and rows[0].provenance == {"role": "compound"}
    assert rows[0] == store.structure_row(h) and rows[0].nsites == len(NACL) and rows[0].parent == "mp-22862"
    with pytest.raises(KeyError):
        store.structure_row("no-such-hash")
    assert structure_hash(store.get_structure(h)) == h
    mode = sqlite3.connect(tmp_path / "matloop.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_oracle_results_are_keyed_by_structure_and_settings(tmp_path):
    store = CampaignStore.in_workdir(tmp_path)
    h = store.add_structure(SI, source="user")
    store.add_oracle_result(h, oracle="gpaw", settings_hash="aaa", result=RESULT, round=1)
    store.add_oracle_result(h, oracle="gpaw", settings_hash="aaa", result={**RESULT, "energy": 99.0})
    got = store.get_oracle_result(h, "aaa")
    assert got is not None and got.energy == -10.5 and got.forces == RESULT["forces"] and got.round == 1
    assert store.get_oracle_result(h, "other-settings") is None
    store.add_oracle_result(
        h, oracle="gpaw", settings_hash="bbb", result={"status": "failed", "reason": "SCF"}
    )
    # Canonical order: by round (unknown first), then hash, then settings.
    assert [(r.settings_hash, r.status) for r in store.oracle_results()] == [("bbb", "failed"), ("aaa", "ok")]
    assert store.counts()["labelled"] == 1 and store.counts()["failed"] == 1


def test_stage_and_results_commit_together_or_not_at_all(tmp_path):
    store = CampaignStore.in_workdir(tmp_path)
    h = store.add_structure(SI, source="user")
    with pytest.raises(RuntimeError), store.transaction():
        store.add_queries(1, [Query(hash=h, strategy="max_std", rank=0, score=0.3)])
        store.mark_stage_done(1, "acquire", {"n": 1})
        raise RuntimeError("killed mid-stage")
    assert store.round_queries(1) == [] and not store.stage_done(1, "acquire")
    with store.transaction():
        store.add_queries(1, [Query(hash=h, strategy="max_std", rank=0, score=0.3)])
        store.mark_stage_done(1, "acquire", {"n": 1})
    reopened = CampaignStore.in_workdir(tmp_path)
    assert reopened.stage_done(1, "acquire") and reopened.stage_result(1, "acquire")["n"] == 1
    assert reopened.round_queries(1) == [Query(hash=h, strategy="max_std", rank=0, score=0.3)]
    assert reopened.queries_by_round() == {1: reopened.round_queries(1)}
    with pytest.raises(sqlite3.IntegrityError):
        reopened.mark_stage_done(1, "acquire", {"n": 2})


def test_stability_keeps_history_per_round(tmp_path):
    store = CampaignStore.in_workdir(tmp_path)
    store.set_stability(1, [StabilityRecord("a", 0.0, True, True), StabilityRecord("b", 0.2, False, False)])
    store.set_stability(
        2,
        [
            StabilityRecord("a", 0.03, False, True),
            StabilityRecord("b", 0.2, False, False),
            StabilityRecord("c", 0.0, True, True),
        ],
    )
    assert [v.hash for v in store.stability()] == ["c", "a", "b"]
    assert store.stability(1) == [
        StabilityRecord("a", 0.0, True, True),
        StabilityRecord("b", 0.2, False, False),
    ]


def test_final_structure_frames_and_typed_failure_round_trip(tmp_path):
    store = CampaignStore.in_workdir(tmp_path)
    h = store.add_structure(SI, source="relaxed")
    relaxed = SI.copy()
    relaxed.scale_lattice(SI.volume * 1.03)
    frames = [
        {"structure": s.as_dict(), "energy": e, "forces": RESULT["forces"], "stress": RESULT["stress"]}
        for s, e in ((SI, -10.2), (relaxed, -10.5))
    ]
    store.add_oracle_result(
        h,
        oracle="gpaw",
        settings_hash="aaa",
        result={**RESULT, "final_structure": relaxed.as_dict(), "frames": frames},
        round=2,
    )
    assert store.get_oracle_result(h, "aaa").duplicate_of is None
    store.set_duplicate_of(h, settings_hash="aaa", duplicate_of="earlier")
    got = store.get_oracle_result(h, "aaa")
    assert got.final_hash == structure_hash(relaxed) != h and got.structure_hash == got.final_hash
    assert got.duplicate_of == "earlier"
    # The final structure is a structure of its own, linked to the queried one.
    row = store.structure_rows(where="hash = ?", params=[got.final_hash])[0]
    assert row.source == "oracle_relaxed" and row.parent == h and row.round == 2
    assert structure_hash(store.get_structure(got.final_hash)) == got.final_hash
    stored_frames = store.oracle_frames(h, "aaa")
    assert [f.step for f in stored_frames] == [0, 1] and [f.energy for f in stored_frames] == [-10.2, -10.5]
    assert structure_hash(stored_frames[1].structure) == got.final_hash
    assert store.oracle_frames(h, "other") == []

    store.add_oracle_result(
        h,
        oracle="gpaw",
        settings_hash="bbb",
        result={"status": "failed", "reason": "600 atoms exceed ...", "failure_kind": "too_large"},
    )
    failed = store.get_oracle_result(h, "bbb")
    assert failed.failure_kind == "too_large" and failed.final_hash is None and failed.structure_hash == h


def test_a_store_from_before_the_new_columns_is_upgraded_on_open(tmp_path):
    path = tmp_path / "matloop.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE oracle_results (hash TEXT NOT NULL, settings_hash TEXT NOT NULL, oracle TEXT NOT NULL,"
        " status TEXT NOT NULL, energy REAL, energy_per_atom REAL, forces TEXT, stress TEXT, reason TEXT,"
        " wall_time REAL, attempts INTEGER, settings TEXT NOT NULL, metadata TEXT NOT NULL, round INTEGER,"
        " created_at REAL NOT NULL, PRIMARY KEY (hash, settings_hash))"
    )
    old.execute(
        "INSERT INTO oracle_results VALUES ('h1', 'aaa', 'gpaw', 'ok', -1.0, -1.0, NULL, NULL, NULL, 1.0, 1,"
        " '{}', '{}', 0, 0.0)"
    )
    old.commit()
    old.close()
    store = CampaignStore(path)
    got = store.get_oracle_result("h1", "aaa")
    assert got.energy == -1.0 and got.final_hash is None and got.structure_hash == "h1"


def _as_schema_1(path, generate_results):
    """Rewrite a store into the layout schema 1 had: no `generated` table, the generated candidates as (hash, source)
    pairs in the generate stage's report."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE generated")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        for rnd, result in generate_results.items():
            conn.execute(
                "INSERT INTO stages(round, stage, status, started_at, finished_at, result) VALUES (?,?,?,?,?,?)",
                (rnd, "generate", "done", 0.0, 1.0, json.dumps(result)),
            )
    conn.close()


def test_a_schema_1_store_is_migrated_in_place(tmp_path):
    store = CampaignStore.in_workdir(tmp_path)
    a = store.add_structure(SI, source="substitution", round=1)
    store.close()
    report = {"n_generated": 3, "per_source": {"substitution": 2, "random_search": 1}, "wall_time_s": 1.5}
    pairs = [[a, "substitution"], ["b" * 16, "random_search"], [a, "substitution"]]
    _as_schema_1(tmp_path / CampaignStore.FILENAME, {1: {**report, "candidates": pairs}})

    store = CampaignStore.in_workdir(tmp_path)
    assert store.get_meta("schema_version") == SCHEMA_VERSION
    # The candidates keep their order, repeats included; the report keeps its metrics only.
    assert [(g.hash, g.source) for g in store.generated(1)] == [tuple(p) for p in pairs]
    assert store.stage_result(1, "generate") == report
    store.close()
    again = CampaignStore.in_workdir(tmp_path)  # a second open finds nothing left to migrate
    assert len(again.generated(1)) == 3 and again.stage_result(1, "generate") == report
    again.close()


def test_a_store_of_another_schema_is_refused_with_one_line(tmp_path):
    CampaignStore.in_workdir(tmp_path).close()
    conn = sqlite3.connect(tmp_path / CampaignStore.FILENAME)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(SchemaMismatch) as err:
        CampaignStore.in_workdir(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "schema version 99" in message and f"reads {SCHEMA_VERSION}" in message
    assert isinstance(err.value, InputError)  # the CLI's one line and exit code 2
