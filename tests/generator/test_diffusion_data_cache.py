"""Training crystals parsed once: a fine-tune's rows come from the row cache exactly as a fresh parse gives them."""

from __future__ import annotations

import torch

from generator.diffusion import data as mp20
from generator.diffusion.data import CrystalTensors, load_mp20


def _same(a: CrystalTensors, b: CrystalTensors) -> None:
    for name, value in a.to_dict().items():
        other = b.to_dict()[name]
        assert value.dtype == other.dtype and torch.equal(value.nan_to_num(-7.0), other.nan_to_num(-7.0)), (
            name
        )


def test_rows_come_back_from_the_cache_equal_to_a_fresh_parse_and_only_new_rows_are_parsed(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MATLOOP_CACHE", str(tmp_path / "cache"))
    parsed: list[int] = []
    parse = mp20._parse_frame

    def counting(frame):
        parsed.append(len(frame))
        return parse(frame)

    monkeypatch.setattr(mp20, "_parse_frame", counting)
    first = load_mp20("train", rows=[40, 3, 17, 3])
    again = load_mp20("train", rows=[17, 40, 25, 3])
    assert parsed == [3, 1]  # rows 3, 17, 40 once; row 25 the second time only

    # What load_mp20 gave before the cache: the rows parsed together, labels attached
    frame = mp20.read_mp20_frame("train")
    for rows, got in (([40, 3, 17, 3], first), ([17, 40, 25, 3], again)):
        part = frame.iloc[rows]
        _same(got, mp20._attach_chgnet_labels(parse(part), part["material_id"].tolist()))
    assert len(first) == 4 and torch.equal(first.lattice[1], first.lattice[3])  # a repeated row twice


def test_a_damaged_row_cache_is_parsed_afresh_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("MATLOOP_CACHE", str(tmp_path))
    load_mp20("val", rows=[0, 1])
    (cache,) = (tmp_path / "diffusion").glob("mp20_val_*_rows.pt")
    cache.write_bytes(b"not a torch file")
    rows = load_mp20("val", rows=[1, 2])
    assert len(rows) == 2 and torch.load(cache, weights_only=True)["rows"].tolist() == [1, 2]
    assert not list((tmp_path / "diffusion").glob("*.tmp"))


def test_a_cache_that_cannot_be_written_costs_nothing_but_the_next_parse(tmp_path, monkeypatch):
    monkeypatch.setenv("MATLOOP_CACHE", str(tmp_path))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mp20.torch, "save", full_disk)
    rows = load_mp20("val", rows=[4, 5])
    assert len(rows) == 2 and not list((tmp_path / "diffusion").iterdir())
