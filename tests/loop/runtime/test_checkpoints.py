"""Checkpoint retention rules (`loop.runtime.checkpoints.prune_checkpoints`) on checkpoint folders laid out as a campaign
lays them out; the campaign-level test (a real smoke campaign, MLflow copies fetched back) is in
test_campaign_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from loop.runtime.checkpoints import copy_mismatch, prune_checkpoints


def _rounds(root: Path, n: int) -> None:
    for r in range(n):
        (root / f"round_{r:03d}" / "emulator").mkdir(parents=True)
        (root / f"round_{r:03d}" / "emulator" / "manifest.json").write_text("{}")
        (root / f"round_{r:03d}" / "generator.pt").write_bytes(b"x")


def _left(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _copied(*rounds: int):
    """A `copy_problem` that vouches for `rounds` only, recording which rounds it was asked about."""
    asked: list[int] = []

    def copy_problem(rnd: int) -> str | None:
        asked.append(rnd)
        return None if rnd in rounds else "no copy"

    copy_problem.asked = asked  # type: ignore[attr-defined]
    return copy_problem


def test_only_rounds_copied_elsewhere_are_deleted(tmp_path):
    root = tmp_path / "checkpoints"
    _rounds(root, 5)
    check = _copied(0, 2)
    pruned = prune_checkpoints(root=root, keep_rounds=2, in_use=[], copy_problem=check)
    assert pruned.deleted == [0, 2]
    assert pruned.kept == {1: "no copy"}
    assert check.asked == [0, 1, 2]  # never about the rounds kept anyway
    assert _left(root) == ["round_001", "round_003", "round_004"]


def test_checkpoints_in_use_stay_whatever_their_age(tmp_path):
    root = tmp_path / "checkpoints"
    _rounds(root, 4)
    in_use = ["checkpoints/round_000/emulator", tmp_path / "checkpoints" / "round_001" / "generator.pt", None]
    check = _copied(*range(4))
    pruned = prune_checkpoints(root=root, keep_rounds=1, in_use=in_use, copy_problem=check)
    assert pruned.deleted == [2]
    assert check.asked == [2]
    assert _left(root) == ["round_000", "round_001", "round_003"]


def test_a_deletion_cut_short_is_finished_next_time(tmp_path):
    root = tmp_path / "checkpoints"
    _rounds(root, 2)
    # What a kill between the rename and the removal leaves behind.
    (root / ".deleting-round_000").mkdir()
    (root / ".deleting-round_000" / "trunk.pt").write_bytes(b"half")
    assert prune_checkpoints(root=root, keep_rounds=2, in_use=[], copy_problem=_copied(0, 1)).deleted == []
    assert _left(root) == ["round_000", "round_001"]


def test_nothing_to_prune_without_a_checkpoint_folder(tmp_path):
    pruned = prune_checkpoints(
        root=tmp_path / "checkpoints", keep_rounds=1, in_use=[], copy_problem=_copied(0)
    )
    assert pruned.deleted == [] and pruned.kept == {}


@pytest.mark.parametrize("kind", ["emulator", "generator"])
def test_a_copy_must_hold_every_file_byte_for_byte(tmp_path, kind):
    _rounds(tmp_path / "checkpoints", 1)
    original = tmp_path / "checkpoints" / "round_000" / ("emulator" if kind == "emulator" else "generator.pt")
    copy = tmp_path / "copy"
    copy.mkdir()
    name = "manifest.json" if kind == "emulator" else "generator.pt"
    assert copy_mismatch(original, copy) == f"{name} is missing from the copy"
    (copy / name).write_bytes(b"not the same")
    assert copy_mismatch(original, copy) == f"{name} differs from the copy"
    (copy / name).write_bytes((original / name if kind == "emulator" else original).read_bytes())
    assert copy_mismatch(original, copy) is None
