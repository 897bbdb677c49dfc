"""The persistent candidate pool on real small data (Cu-Au, EMT labels, the pretrained CHGNet ensemble): a candidate
left out of round 1's batch stays on offer, is re-scored by the emulator in round 2 and is queried there."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from loop.campaign import run_stage
from loop.config import validate_config
from loop.runtime.labelling import label_hashes
from loop.stages import acquire, funnel, screen, update
from loop.stages.base import StageContext
from loop.store import Generated
from loop.views.candidate_pool import carried_candidates
from tests.loop.cu_au_store import d022, seeded_store

pytestmark = pytest.mark.slow


def config(**kw):
    return validate_config(
        {
            "name": "pool",
            "chemical_systems": ["Cu-Au"],
            "oracle": {"kind": "emt"},
            "emulator": {"n_members": 2},
            # Few steps, so that one candidate is left unconverged and must be relaxed again when carried.
            "emulator_training": {"relax_steps": 4},
            "acquisition": {"strategy": "p_ground_state", "budget": 1},
            **kw,
        }
    )


def candidates() -> list[Structure]:
    """Three Cu-Au cells that no bundled crystal matches; the last one strained and rattled (far from a minimum)."""
    hexagonal = Structure(Lattice.hexagonal(2.7, 4.4), ["Cu", "Au"], [[0, 0, 0], [1 / 3, 2 / 3, 0.5]])
    rattled = Structure(
        Lattice.orthorhombic(3.9, 4.3, 7.4),
        ["Cu", "Cu", "Au", "Au"],
        [[0.02, 0.0, 0.0], [0.5, 0.47, 0.26], [0.0, 0.52, 0.49], [0.51, 0.0, 0.77]],
    )
    return [d022(), hexagonal, rattled]


def test_a_candidate_left_out_of_round_1_is_rescored_and_queried_in_round_2(tmp_path):
    cfg = config()
    store = seeded_store(tmp_path, cfg)

    # Round 1: three candidates pass the funnel and are screened; the budget of 1 leaves two out.
    made = [
        Generated(hash=store.add_structure(s, source="random_search", round=1), source="random_search")
        for s in candidates()
    ]
    store.add_generated(1, made)
    ctx1 = StageContext(config=cfg, store=store, workdir=tmp_path, round=1)
    report = run_stage(funnel.STAGE, ctx1)
    assert report["n_passed"] == 3, [c.reason for c in store.candidates(1)]
    screened = run_stage(screen.STAGE, ctx1)
    assert screened["n_screened"] == 3 and screened["n_pool_carried"] == 0
    run_stage(acquire.STAGE, ctx1)
    (picked,) = store.round_queries(1)
    label_hashes(store, [picked.hash], settings=cfg.oracle, workdir=tmp_path, round=1)
    run_stage(update.STAGE, ctx1)
    round_1 = {p.hash: p for p in store.round_predictions(1)}
    left_out = [p for p in round_1.values() if p.relaxed_hash != picked.hash]
    assert len(left_out) == 2

    # Round 2 generates nothing new: the pool alone fills its batch.
    store.add_generated(2, [])
    ctx2 = StageContext(config=cfg, store=store, workdir=tmp_path, round=2)
    assert {p.hash for p in carried_candidates(cfg, store=store, round=2)} == {p.hash for p in left_out}
    run_stage(funnel.STAGE, ctx2)
    rescored = run_stage(screen.STAGE, ctx2)
    assert rescored["n_screened"] == 0 and rescored["n_pool_carried"] == 2 and rescored["pool_age_max"] == 1
    round_2 = {p.hash: p for p in store.round_predictions(2)}
    assert set(round_2) == {p.hash for p in left_out}
    for h, p in round_2.items():
        info = p.data["pool"]
        assert info["first_round"] == 1 and info["age"] == 1
        if info["rescore"] == "static":
            # Same model, same geometry: the batched prediction gives the energy the relaxation ended with.
            assert p.relaxed_hash == round_1[h].relaxed_hash
            assert p.energy_per_atom == pytest.approx(round_1[h].energy_per_atom, abs=1e-4)
            assert info["max_force"] <= cfg.acquisition.pool.rerelax_force
        else:
            # The stored geometry was far from the minimum (4 steps): relaxed again, further down.
            assert info["max_force"] > cfg.acquisition.pool.rerelax_force
            assert p.energy_per_atom < round_1[h].energy_per_atom
    assert {p.data["pool"]["rescore"] for p in round_2.values()} == {"static", "relaxed"}
    run_stage(acquire.STAGE, ctx2)
    (queried,) = store.round_queries(2)
    assert queried.hash in {p.relaxed_hash for p in round_2.values()}
    assert queried.hash != picked.hash

    # Once labelled, a candidate leaves the pool; the third one is carried into round 3.
    label_hashes(store, [queried.hash], settings=cfg.oracle, workdir=tmp_path, round=2)
    run_stage(update.STAGE, ctx2)
    assert len(carried_candidates(cfg, store=store, round=3)) == 1
    # Without the pool a round offers only what it generated.
    assert carried_candidates(config(acquisition={"pool": {"carry_over": False}}), store=store, round=3) == []
