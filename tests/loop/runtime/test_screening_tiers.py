"""Screening in tiers on real small data (Cu-Au, SevenNet-0 labels, the pretrained CHGNet ensemble): the cheap tier ranks
the candidates, the relaxed share is what `screening:` says, the others are stored with their estimate and never
offered, a round still spends its budget, and `matloop screen` writes its table or refuses bad input."""

from __future__ import annotations

import csv
import json
import math
from functools import partial
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from loop.campaign import run_stage
from loop.cli.screen import run_screen
from loop.config import validate_config
from loop.errors import InputError
from loop.runtime.control import StopRequested
from loop.runtime.labelling import label_hashes
from loop.runtime.screening_cache import TierCache, cache_dir, in_blocks
from loop.runtime.screening_tiers import CheapEstimate, TiersConfig, relaxed_share
from loop.stages import acquire, funnel, screen
from loop.stages.base import StageContext
from loop.store import Generated
from loop.views.candidate_pool import acquisition_pool, carried_candidates
from tests.loop import cli_process
from tests.loop.cu_au_store import d022, fcc, seeded_store


def config(**kw):
    return validate_config(
        {
            "name": "tiers",
            "chemical_systems": ["Cu-Au"],
            # SevenNet-0 labels: the pretrained CHGNet and it agree on Cu and Au to within a few tens of meV/atom, so the
            # emulator's energies and the oracle hull compare without a refit (two labels make a poor one).
            "oracle": {"kind": "mlff"},
            "emulator": {"n_members": 2},
            "emulator_training": {"relax_steps": 40},
            "acquisition": {"strategy": "greedy", "budget": 2},
            "execution": {"kind": "inline"},
            "tracking": {"enabled": False},
            **kw,
        }
    )


def candidates() -> dict[str, Structure]:
    """Three cells near a minimum, and the same three pulled apart along c to 1.6x (far above any minimum; the shape
    change is too large for the funnel's matcher to call them duplicates)."""
    cuau3 = d022(4.0)
    cuau3.replace_species({"Cu": "Au", "Au": "Cu"})  # site by site: a swap
    near = {
        "d022": d022(),
        "hexagonal": Structure(Lattice.hexagonal(2.7, 4.4), ["Cu", "Au"], [[0, 0, 0], [1 / 3, 2 / 3, 0.5]]),
        "cuau3_d022": cuau3,
    }
    far = {}
    for name, s in near.items():
        a, b, c = s.lattice.matrix
        far[f"{name}_stretched"] = Structure(Lattice([a, b, 1.6 * c]), s.species, s.frac_coords)
    return {**near, **far}


def test_relaxed_share_takes_the_margin_the_best_fraction_and_the_floor_up_to_the_cap():
    nan = float("nan")
    estimates = [
        CheapEstimate(energy_per_atom=0.0, energy_per_atom_std=0.0, e_hull=e, e_hull_std=s)
        for e, s in [(0.9, 0.1), (0.2, 0.05), (1.5, 0.1), (0.45, 0.0), (nan, nan), (3.0, 0.5), (0.7, 0.3)]
    ]
    margin_only = relaxed_share(estimates, settings=TiersConfig(margin=0.5, keep_fraction=0.0, floor=1))
    # optimistic bounds: 0.8, 0.15, 1.4, 0.45, -, 2.5, 0.4; within 0.5: positions 1, 6, 3 (best first)
    assert margin_only.indices == [1, 6, 3] and set(margin_only.why.values()) == {"margin"}
    wider = relaxed_share(estimates, settings=TiersConfig(margin=0.1, keep_fraction=0.5, floor=1))
    assert wider.indices == [1, 6, 3, 0] and set(wider.why.values()) == {"top_fraction"}
    floored = relaxed_share(estimates, settings=TiersConfig(margin=0.0, keep_fraction=0.0, floor=5, cap=5))
    assert floored.indices == [1, 6, 3, 0, 2]  # the unplaced one is never relaxed
    capped = relaxed_share(estimates, settings=TiersConfig(margin=10.0, keep_fraction=0.0, floor=1, cap=2))
    assert capped.indices == [1, 6]


def test_per_formula_lets_polymorphs_compete_for_relaxation_and_the_floor_still_fills():
    """Every estimate lies within the margin (a hull of the elements only): with `per_formula: 1` the margin
    relaxes the best of each (generator, formula), the floor then adds the best bounds overall."""
    estimates = [
        CheapEstimate(energy_per_atom=0.0, energy_per_atom_std=0.0, e_hull=e, e_hull_std=0.0)
        for e in (-1.0, -1.2, -0.5, -0.9, -0.4)
    ]
    groups = [("substitution", "TiO2"), ("substitution", "TiO2"), ("substitution", "Ti2O"),
              ("diffusion", "TiO2"), ("substitution", "Ti2O")]  # fmt: skip
    every = relaxed_share(estimates, settings=TiersConfig(floor=1))
    assert every.indices == [1, 0, 3, 2, 4]
    best = relaxed_share(
        estimates, settings=TiersConfig(floor=1, keep_fraction=1.0, per_formula=1), groups=groups
    )
    assert best.indices == [1, 3, 2] and set(best.why.values()) == {"margin"}
    floored = relaxed_share(estimates, settings=TiersConfig(floor=4, per_formula=1), groups=groups)
    assert floored.indices == [1, 0, 3, 2] and floored.why[0] == "floor"
    with pytest.raises(ValueError, match="per_formula"):
        relaxed_share(estimates, settings=TiersConfig(per_formula=1))


def test_a_tier_resumed_after_a_stop_computes_only_the_blocks_not_cached(tmp_path):
    computed: list[list[str]] = []

    def compute(block: list[str]) -> list[dict[str, float]]:
        computed.append(block)
        return [{"value": float(len(h))} for h in block]

    hashes = [f"h{i:02d}" for i in range(10)]
    cache = TierCache(tmp_path, tier="cheap", key="model-a")
    asked = iter([False, False, True])
    with pytest.raises(StopRequested):
        in_blocks(
            hashes,
            compute,
            cache=cache,
            should_stop=lambda: next(asked),
            progress=lambda n: None,
            stop=StopRequested,
            block=4,
        )
    assert computed == [hashes[:4], hashes[4:8]]
    with (tmp_path / "cheap.jsonl").open("a") as fh:
        fh.write('{"key": "model-a", "hash": "h08", "resu')  # torn by a kill
    seen = []
    rows = in_blocks(
        hashes,
        compute,
        cache=cache,
        should_stop=lambda: False,
        progress=seen.append,
        stop=StopRequested,
        block=4,
    )
    assert computed[2:] == [hashes[8:]] and seen == [8] and list(rows) == hashes
    # Another emulator's results are not taken.
    other = in_blocks(
        hashes,
        compute,
        cache=TierCache(tmp_path, tier="cheap", key="model-b"),
        should_stop=lambda: False,
        progress=lambda n: None,
        stop=StopRequested,
        block=10,
    )
    assert computed[3:] == [hashes] and other == rows


@pytest.mark.slow
def test_the_cheap_tier_ranks_candidates_and_a_tiered_round_spends_its_budget(tmp_path):
    tiers = {"floor": 2, "keep_fraction": 0.0, "margin": 0.3, "sigma": 1.0, "cap": 4}
    cfg = config(screening=tiers)
    store = seeded_store(tmp_path, cfg)
    named = candidates()
    made = {name: store.add_structure(s, source="random_search", round=1) for name, s in named.items()}
    store.add_generated(1, [Generated(hash=h, source="random_search") for h in made.values()])
    ctx = StageContext(config=cfg, store=store, workdir=tmp_path, round=1)
    report = run_stage(funnel.STAGE, ctx)
    assert report["n_passed"] == len(named), [c.reason for c in store.candidates(1)]

    # A stop request after the cheap tier's block: the stage stops before relaxing, its block kept on disk.
    folder = cache_dir(tmp_path, 1)
    asked = iter([False, True])
    with pytest.raises(StopRequested):
        screen.screen(
            cfg,
            store=store,
            hashes=[c.hash for c in store.candidates(1, passed=True)],
            checkpoint=None,
            executor=None,
            round=1,
            cache_folder=folder,
            should_stop=lambda: next(asked, True),
        )
    assert len((folder / "cheap.jsonl").read_text().splitlines()) == len(named)
    assert not (folder / "relax.jsonl").exists() and not store.round_predictions(1)
    screened = run_stage(screen.STAGE, ctx)  # the resume: the stage commits, and its cache goes
    assert not folder.exists()
    n = len(named)
    assert screened["n_cheap_tier"] == n  # more candidates than the floor: every one got the cheap estimate
    predictions = {p.hash: p for p in store.round_predictions(1)}
    assert set(predictions) == set(made.values())
    cheap = {name: predictions[h].data["tier"]["cheap"] for name, h in made.items()}
    # The cheap tier ranks: every stretched cell is estimated above the cell it was stretched from.
    for name in ("d022", "hexagonal", "cuau3_d022"):
        assert cheap[f"{name}_stretched"]["e_hull"] > cheap[name]["e_hull"] + 0.1, (name, cheap)
    # The relaxed share is what the config says: the optimistic bounds within the margin, at least the best
    # `floor`, at most `cap`, best first; the stretched cells are not among them.
    bound = {name: c["e_hull"] - tiers["sigma"] * c["e_hull_std"] for name, c in cheap.items()}
    ranked = sorted(bound, key=bound.get)
    expected = {name for name in ranked if bound[name] <= tiers["margin"]} | set(ranked[: tiers["floor"]])
    expected = set(sorted(expected, key=bound.get)[: tiers["cap"]])
    relaxed = {name for name, h in made.items() if predictions[h].relaxed_hash is not None}
    assert relaxed == expected and 2 <= len(relaxed) <= 4
    assert not any(name.endswith("_stretched") for name in relaxed), bound
    assert screened["n_relaxed"] == len(relaxed) and screened["n_cheap_only"] == n - len(relaxed)
    assert screened["n_offered"] == len(relaxed)
    for name, h in made.items():
        p = predictions[h]
        if name in relaxed:
            assert p.data["tier"]["relaxed"] in ("margin", "floor")
            # relaxation only lowers the energy the cheap tier saw (same model, same hull)
            assert p.e_hull <= cheap[name]["e_hull"] + 1e-3
        else:
            # stored with its cheap estimate, no relaxed structure
            assert p.data["tier"]["relaxed"] is None and p.e_hull == pytest.approx(cheap[name]["e_hull"])
            assert "not relaxed" in p.data["reason"]

    # Only relaxed candidates are offered; the pool carries the others to round 2's tiers with their estimate.
    offered = acquisition_pool(cfg, store=store, round=1)
    assert {p.hash for p in offered} <= {made[name] for name in relaxed}
    carried = {p.hash: p for p in carried_candidates(cfg, store=store, round=2)}
    assert {h for h, p in carried.items() if p.relaxed_hash is None} == {
        h for name, h in made.items() if name not in relaxed
    }

    # The round still spends its budget of 2 oracle calls, on relaxed structures.
    picked = run_stage(acquire.STAGE, ctx)
    queries = store.round_queries(1)
    assert picked["n_queries"] == len(queries) == cfg.acquisition.budget
    relaxed_hashes = {predictions[made[name]].relaxed_hash for name in relaxed}
    assert {q.hash for q in queries} <= relaxed_hashes
    results = label_hashes(store, [q.hash for q in queries], settings=cfg.oracle, workdir=tmp_path, round=1)
    assert len(results) == 2 and all(r.ok for r in results.values())


def test_a_round_screened_with_per_formula_relaxes_the_best_cheap_estimate_of_each_formula(tmp_path):
    """Six Cu-Au cells of three formulas, all within a wide margin: with `per_formula: 1` the stage relaxes the
    best cheap estimate of each formula and leaves the others (each a stretched copy) at the cheap tier."""
    cfg = config(screening={"floor": 1, "keep_fraction": 0.0, "margin": 10.0, "per_formula": 1})
    store = seeded_store(tmp_path, cfg)
    named = candidates()
    made = {name: store.add_structure(s, source="substitution", round=1) for name, s in named.items()}
    store.add_generated(1, [Generated(hash=h, source="substitution") for h in made.values()])
    ctx = StageContext(config=cfg, store=store, workdir=tmp_path, round=1)
    run_stage(funnel.STAGE, ctx)
    report = run_stage(screen.STAGE, ctx)
    predictions = {p.hash: p for p in store.round_predictions(1)}
    cheap = {name: predictions[h].data["tier"]["cheap"]["e_hull"] for name, h in made.items()}
    best: dict[str, str] = {}
    for name, s in named.items():
        formula = s.composition.reduced_formula
        if formula not in best or cheap[name] < cheap[best[formula]]:
            best[formula] = name
    relaxed = {name for name, h in made.items() if predictions[h].relaxed_hash is not None}
    assert relaxed == set(best.values()) and len(relaxed) == len(
        {s.composition.reduced_formula for s in named.values()}
    )
    assert report["n_relaxed"] == len(relaxed) and report["n_cheap_only"] == len(named) - len(relaxed)

    # Round 2 generates nothing: the three left at the cheap tier are estimated again with the round's emulator and
    # hull, and each is now the best of its formula among the candidates in tiers, so each is relaxed; the three
    # relaxed in round 1 are re-scored at their relaxed geometry.
    ctx2 = StageContext(config=cfg, store=store, workdir=tmp_path, round=2)
    report2 = run_stage(screen.STAGE, ctx2)
    assert report2["n_screened"] == 0 and report2["n_pool_carried"] == len(named)
    assert report2["n_pool_cheap_carried"] == report2["n_pool_cheap_relaxed"] == len(named) - len(relaxed)
    again = {p.hash: p for p in store.round_predictions(2)}
    assert set(again) == set(made.values())
    for name, h in made.items():
        p = again[h]
        assert (
            p.relaxed_hash is not None and p.data["pool"]["first_round"] == 1 and p.data["pool"]["age"] == 1
        )
        if name in relaxed:
            assert p.data["pool"]["rescore"] in ("static", "relaxed"), (name, p.data)
        else:
            assert p.data["pool"]["rescore"] == "cheap tier" and p.data["tier"]["relaxed"], (name, p.data)


matloop = partial(cli_process.matloop, timeout=900)


def test_matloop_screen_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path):
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    candidates()["d022"].to(filename=str(cifs / "d022.cif"))
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a 3.0\nthis is not a CIF\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nchemical_systems: [Cu-Au]\noracle: {kind: emt}\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "table.csv"
    # Through the console entry point: exit 2, one line, no traceback, no table.
    for args in [
        (cifs, "--config", cfg, "--out", tmp_path / "table.txt"),  # unknown table format
        (tmp_path / "broken.cif", "--config", cfg, "--out", out),
        (cifs, "--workdir", empty, "--out", out),  # not a campaign
        ("--generate", 0, "--config", cfg, "--out", out),
    ]:
        proc = matloop("screen", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, (
            args,
            proc.stderr,
        )
        assert not out.exists() and not (tmp_path / "table.txt").exists()
    # The same checks in this process (the CLI turns each InputError into that one line and exit 2).
    for kwargs, message in [
        ({"files": [cifs], "config_path": None, "workdir": None}, "--config FILE"),
        ({"files": [cifs], "config_path": cfg, "workdir": tmp_path}, "--config FILE"),
        ({"files": [tmp_path / "missing.cif"], "config_path": cfg, "workdir": None}, "no such file"),
        ({"files": [empty], "config_path": cfg, "workdir": None}, "holds no CIF"),
        ({"files": [], "config_path": cfg, "workdir": None}, "not both and not neither"),
        ({"files": [cifs], "generate": 4, "config_path": cfg, "workdir": None}, "not both and not neither"),
        ({"files": [cifs], "config_path": tmp_path / "none.yaml", "workdir": None}, "no such config file"),
    ]:
        with pytest.raises(InputError, match=message):
            run_screen(**{"generate": None, **kwargs}, out=out)
        assert not out.exists()
    out.write_text("kept")
    with pytest.raises(InputError, match="already exists"):
        run_screen(files=[cifs], generate=None, config_path=cfg, workdir=None, out=out)
    assert out.read_text() == "kept"


@pytest.mark.slow
def test_matloop_screen_writes_the_table_of_real_cifs_against_a_campaign(tmp_path):
    cfg = config(screening={"floor": 2, "keep_fraction": 0.0, "margin": 0.3, "cap": 4})
    workdir = tmp_path / "campaign"
    workdir.mkdir()
    seeded_store(workdir, cfg).close()
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    named = candidates()
    for name, s in named.items():
        s.to(filename=str(cifs / f"{name}.cif"))
    fcc("Cu", 3.61).to(filename=str(cifs / "zz_fcc_cu.cif"))  # a known crystal: the funnel stops it
    out = tmp_path / "screened.csv"
    proc = matloop("screen", cifs, "--workdir", workdir, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    with out.open() as fh:
        rows = {Path(r["name"]).stem: r for r in csv.DictReader(fh)}
    assert set(rows) == {*named, "zz_fcc_cu"} and info["n_in"] == len(rows)
    assert rows["zz_fcc_cu"]["tier"] == "funnel" and "not_novel" in rows["zz_fcc_cu"]["funnel"]
    relaxed = {k for k, r in rows.items() if r["tier"] == "relaxed"}
    assert 2 <= len(relaxed) <= 4 and info["n_relaxed"] == len(relaxed)
    assert not any(k.endswith("_stretched") for k in relaxed)
    for k, r in rows.items():
        if r["tier"] == "funnel":
            continue
        assert math.isfinite(float(r["cheap_e_hull"]))
        if k in relaxed:
            assert float(r["e_hull"]) <= float(r["cheap_e_hull"]) + 1e-3 and r["relaxed_because"]
        else:
            assert r["e_hull"] == "" and r["tier"] == "cheap"
    # The same structures, every survivor relaxed, as JSON.
    again = tmp_path / "all.json"
    proc = matloop("screen", cifs, "--workdir", workdir, "--out", again, "--relax-all")
    assert proc.returncode == 0, proc.stderr
    table = json.loads(again.read_text())
    assert sum(1 for r in table if r["tier"] == "relaxed") == len(named)
