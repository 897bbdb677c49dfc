"""A garbage or partial `result.json` in a structure's oracle work dir: detected, recomputed once, logged."""

from __future__ import annotations

import json
import logging

import pytest

from oracle import EMTOracle, EMTSettings
from oracle.ase_runner import CALLS_FILE, RESULT_FILE


def _events(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / CALLS_FILE).read_text().splitlines()]


def _truncate(path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _garbage(path):
    path.write_bytes(b"\x00\xff\x13 not json at all")


def _wrong_shape(path):
    data = json.loads(path.read_text())
    data["result"]["forces"] = data["result"]["forces"][:-1]  # one site short: a half-written or foreign file
    path.write_text(json.dumps(data))


def _nan_energy(path):
    data = json.loads(path.read_text())
    data["result"]["energy"] = float("nan")
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", [_truncate, _garbage, _wrong_shape, _nan_energy])
def test_corrupt_result_file_is_set_aside_and_recomputed_once(cu_rattled, tmp_path, caplog, damage):
    workdir = tmp_path / "cu"
    oracle = EMTOracle(EMTSettings(relax_steps=5))
    first = oracle.label(cu_rattled, workdir=workdir)
    assert first.ok, first.reason
    damage(workdir / RESULT_FILE)

    with caplog.at_level(logging.WARNING, logger="matloop.oracle"):
        again = oracle.label(cu_rattled, workdir=workdir)
    assert again.ok and again.metadata.get("from_store") is None
    assert again.metadata["replaced_corrupt_result"].startswith(f"{RESULT_FILE}.corrupt-1 (")
    assert again.energy == pytest.approx(first.energy, abs=1e-8)
    assert again.final_structure == first.final_structure
    # Logged once, with the file moved aside for inspection.
    warnings = [r for r in caplog.records if "corrupt oracle result" in r.getMessage()]
    assert len(warnings) == 1
    assert (workdir / f"{RESULT_FILE}.corrupt-1").exists()
    events = _events(workdir)
    assert [e["event"] for e in events].count("corrupt_result") == 1
    assert [e["event"] for e in events].count("finished") == 2  # the first run and exactly one recomputation

    # The recomputed file is good: the third call is served from it, nothing computed, nothing logged.
    caplog.clear()
    third = oracle.label(cu_rattled, workdir=workdir)
    assert third.metadata.get("from_store") is True and third.energy == again.energy
    assert not [r for r in caplog.records if "corrupt" in r.getMessage()]
    assert [e["event"] for e in _events(workdir)].count("finished") == 2


def test_a_missing_result_file_is_not_reported_as_corrupt(cu_rattled, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="matloop.oracle"):
        result = EMTOracle().label(cu_rattled, workdir=tmp_path / "fresh")
    assert result.ok
    assert not caplog.records and not list((tmp_path / "fresh").glob("*.corrupt-*"))
