"""Checkpoint retention rules (`loop.checkpoints.prune_checkpoints`) on checkpoint folders laid out as a campaign
lays them out; the campaign-level test (a real smoke campaign, MLflow copies fetched back) is in
test_campaign_e2e.py."""

from __future__ import annotations

from pathlib import Path

from loop.checkpoints import prune_checkpoints


def _rounds(root: Path, n: int) -> None:
    for r in range(n):
        (root / f"round_{r:03d}" / "emulator").mkdir(parents=True)
        (root / f"round_{r:03d}" / "emulator" / "manifest.json").write_text("{}")
        (root / f"round_{r:03d}" / "generator.pt").write_bytes(b"x")


def _left(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_only_rounds_copied_elsewhere_are_deleted(tmp_path):
    root = tmp_path / "checkpoints"
    _rounds(root, 5)
    deleted = prune_checkpoints(root=root, keep_rounds=2, in_use=[], safe_to_delete=[0, 2])
    assert deleted == [0, 2]
    assert _left(root) == ["round_001", "round_003", "round_004"]


def test_checkpoints_in_use_stay_whatever_their_age(tmp_path):
    root = tmp_path / "checkpoints"
    _rounds(root, 4)
    in_use = ["checkpoints/round_000/emulator", tmp_path / "checkpoints" / "round_001" / "generator.pt", None]
    deleted = prune_checkpoints(root=root, keep_rounds=1, in_use=in_use, safe_to_delete=range(4))
    assert deleted == [2]
    assert _left(root) == ["round_000", "round_001", "round_003"]


def test_a_deletion_cut_short_is_finished_next_time(tmp_path):
    root = tmp_path / "checkpoints"
    _rounds(root, 2)
    # What a kill between the rename and the removal leaves behind.
    (root / ".deleting-round_000").mkdir()
    (root / ".deleting-round_000" / "trunk.pt").write_bytes(b"half")
    assert prune_checkpoints(root=root, keep_rounds=2, in_use=[], safe_to_delete=[0, 1]) == []
    assert _left(root) == ["round_000", "round_001"]


def test_nothing_to_prune_without_a_checkpoint_folder(tmp_path):
    assert (
        prune_checkpoints(root=tmp_path / "checkpoints", keep_rounds=1, in_use=[], safe_to_delete=[0]) == []
    )
