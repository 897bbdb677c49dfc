"""The shipped checkpoint loads offline with weights_only=True and samples sensible crystals."""

from __future__ import annotations

import torch

from generator.base import GenerationContext, get_generator_class
from generator.diffusion import SHIPPED_CHECKPOINT, DiffusionSettings, sample_structures
from generator.diffusion.metrics import structurally_valid


def test_shipped_checkpoint_is_small_and_plain():
    assert SHIPPED_CHECKPOINT.is_file()
    assert SHIPPED_CHECKPOINT.stat().st_size < 30 * 2**20
    payload = torch.load(SHIPPED_CHECKPOINT, weights_only=True)
    assert payload["format"] == "matloop-diffusion/1"
    assert 0.03 < payload["stats"]["density"] < 0.1  # atoms/Å³
    assert sum(p.numel() for p in payload["state_dict"].values()) < 5_000_000
    assert payload["metrics"]["steps"] >= 1000


def test_shipped_checkpoint_samples_eight_valid_crystals(monkeypatch):
    # offline: no hub, no network needed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = sample_structures(n=8, conditions={}, seed=0, steps=50)
    assert len(out) == 8
    assert sum(structurally_valid(s) for s in out) >= 7
    for s in out:
        assert 1 <= len(s) <= 20
        assert 5.0 < s.volume / len(s) < 80.0  # Å³/atom, as in real inorganic crystals


def test_generator_honours_chemical_systems_and_conditions():
    gen = get_generator_class("diffusion")(DiffusionSettings(steps=30, batch_size=16))
    context = GenerationContext(chemical_systems=["Li-Fe-O", "Na-Cl"], conditions={"space_group": "225"})
    cands = gen.generate(n=6, context=context, seed=2)
    assert len(cands) == 6
    systems = [{e.symbol for e in c.structure.composition.elements} for c in cands]
    assert systems.count({"Li", "Fe", "O"}) == 3 and systems.count({"Na", "Cl"}) == 3
    assert all(structurally_valid(c.structure) for c in cands)
    assert cands[0].info["conditions"]["space_group"] == "225"


def test_generator_can_require_charge_balance():
    from generator.diffusion.metrics import charge_balanced

    gen = get_generator_class("diffusion")(DiffusionSettings(steps=30, require_charge_balance=True))
    cands = gen.generate(n=5, context=GenerationContext(), seed=4)
    assert len(cands) == 5
    assert all(charge_balanced(c.structure.composition) for c in cands)
