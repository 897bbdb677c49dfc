"""Stages of a round on real data: references (complete hull), substitution that searches structure types,
discoveries, withholding, and the hull update in the campaign's one vocabulary (EMT labels, Cu-Au)."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generator.diffusion.generator import SHIPPED_CHECKPOINT, DiffusionGenerator, DiffusionSettings
from generator.substitution import SubstitutionGenerator
from loop.config import CampaignConfig, validate_config
from loop.errors import InputError
from loop.runtime.labelling import label_hashes
from loop.runtime.screening_tiers import CheapEstimate
from loop.science.structures import structure_hash
from loop.store import CampaignStore, Generated, Prediction, Query
from loop.views.candidate_pool import carried_candidates
from loop.views.known_index import known_index
from loop.views.oracle_hull import discoveries
from loop.views.withholding import withheld_records, withheld_structures
from loop.work.funnel import run_funnel
from loop.work.generation import (
    generate_candidates,
    round_breadth,
    spent_decorations,
    substitution_candidates,
)
from loop.work.hull_update import update_hull
from loop.work.references import reference_pool
from loop.work.retraining import generator_breadth_check, withheld_training_ids
from loop.work.screening import cheap_only

B32 = "AB:227:4:a_b"


def config(**kw):
    data = {"name": "t", "chemical_systems": ["Li-Al"], "oracle": {"kind": "emt"}, **kw}
    return validate_config(data)


def spacegroup(structure: Structure) -> int:
    return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number()


def test_reference_pool_is_complete_for_li_al():
    pool = reference_pool(config())
    elements = [k for k in pool if len(k.structure.composition) == 1]
    compounds = [k for k in pool if len(k.structure.composition) > 1]
    ids = {k.id for k in elements}
    assert "ase-ref:Li-bcc" in ids  # bcc Li is in no bundled row: ASE's reference state fills the gap
    fcc_al = [
        k
        for k in elements
        if k.structure.composition.reduced_formula == "Al" and spacegroup(k.structure) == 225
    ]
    assert len(fcc_al) == 1  # bundled (mpts_52) fcc Al and ASE's fcc Al are one polymorph
    matcher = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1.0, primitive_cell=False)
    for i, a in enumerate(elements):
        assert len(a.structure) <= 8
        for b in elements[i + 1 :]:
            same = a.structure.composition.reduced_formula == b.structure.composition.reduced_formula
            assert not (same and matcher.fit(a.structure, b.structure)), (a.id, b.id)
    assert {"Li", "Al"} == {k.structure.composition.reduced_formula for k in elements}
    assert {"Li3Al2", "Li2Al", "LiAl3", "LiAl"} <= {
        k.structure.composition.reduced_formula for k in compounds
    }
    # cI16 Li is a small distortion of bcc Li but another crystal for the oracle: both are references
    assert {"mp-567337", "ase-ref:Li-bcc"} <= ids
    assert all(len(k.structure) <= 12 for k in compounds)
    held = reference_pool(config(withhold=["LiAl", "mp-16506"]))
    formulas = [k.structure.composition.reduced_formula for k in held]
    assert "LiAl" not in formulas and "mp-16506" not in {k.id for k in held} and "LiAl3" in formulas
    with pytest.raises(InputError, match="no elemental crystal"):
        reference_pool(config(chemical_systems=["Fr-Li"]))  # no francium crystal, bundled or in ASE


def test_withheld_records_round_trip_through_the_store(tmp_path):
    cfg = config(withhold=["all_compounds"])
    records = withheld_records(cfg)
    formulas = {r["formula"] for r in records}
    assert {"LiAl", "Li3Al2", "Li9Al4", "LiAl3", "Li2Al", "Li3Al"} <= formulas
    assert all(r["material_id"].startswith("mp-") for r in records)
    store = CampaignStore.in_workdir(tmp_path)
    store.set_meta("withheld", records)
    back = withheld_structures(store)
    assert [k.id for k in back] == [r["material_id"] for r in records]
    assert all(k.structure.composition.reduced_formula == k.properties["formula"] for k in back)
    assert withheld_records(config()) == []
    assert withheld_training_ids(cfg)  # some of them are in the generator's training split
    assert set(withheld_training_ids(cfg)) <= {r["material_id"] for r in records}


def test_substitution_searches_structure_types_and_does_not_repeat_parents(tmp_path):
    cfg = config(generator={"substitution": {"max_candidates_per_parent": 2}})
    store = CampaignStore.in_workdir(tmp_path)
    known = known_index(cfg, store=store, before_round=1)
    made, counts = substitution_candidates(
        cfg, store=store, round=1, name="substitution", n=40, discoveries=[], known=known
    )
    assert len(made) == 40 and counts["spent_prototypes"] == 0
    b32 = [
        c
        for c in made
        if c.structure.composition.reduced_formula == "LiAl" and spacegroup(c.structure) == 227
    ]
    assert b32 and b32[0].info["parent_prototype"] == B32
    fresh = known_index(cfg, store=store, before_round=1)
    assert all(fresh.find(c.structure) is None for c in made)  # nothing bundled is proposed again
    assert len({structure_hash(c.structure) for c in made}) == len(made)  # no child twice
    assert all(len(c.structure) <= cfg.generator.funnel.max_atoms for c in made)
    for c in made:
        store.add_structure(c.structure, source=c.source, parent=c.parent, round=1, provenance=c.info)
    used = {c.info["parent_prototype"] for c in made}

    def round_2(cfg: CampaignConfig) -> tuple[list, dict]:
        return substitution_candidates(
            cfg,
            store=store,
            round=2,
            name="substitution",
            n=40,
            discoveries=[],
            known=known_index(cfg, store=store, before_round=2),
        )

    # Generated but never screened: the children were dropped, so their prototypes are not spent.
    _, counts_dropped = round_2(cfg)
    assert counts_dropped["spent_prototypes"] == 0
    # Screened and unlabelled: the children stay in the candidate pool, so their prototypes are spent.
    _screen(store, 1, made)
    again, counts2 = round_2(cfg)
    assert counts2["spent_prototypes"] == len(used)
    # a structure type is spent per formula it was decorated with (A2B3 types fit Li2Al3 and Li3Al2)
    pairs = {(c.info["parent_prototype"], c.structure.composition.reduced_formula) for c in made}
    assert not pairs & {(c.info["parent_prototype"], c.structure.composition.reduced_formula) for c in again}
    ionic = [c for c in again if not c.info["operation"].startswith("decoration")]
    assert not used & {c.info["parent_prototype"] for c in ionic}
    assert not {c.parent for c in made} & {c.parent for c in ionic}
    # Without the pool nothing carries over and nothing is labelled: the prototypes come back.
    no_pool = config(
        generator={"substitution": {"max_candidates_per_parent": 2}},
        acquisition={"pool": {"carry_over": False}},
    )
    _, counts_no_pool = round_2(no_pool)
    assert counts_no_pool["spent_prototypes"] == 0


def cu_au(kind: str) -> Structure:
    a = 3.75
    if kind == "Cu":
        return Structure(
            Lattice(0.5 * 3.61 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), ["Cu"], [[0, 0, 0]]
        )
    if kind == "Au":
        return Structure(
            Lattice(0.5 * 4.08 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), ["Au"], [[0, 0, 0]]
        )
    if kind == "Cu3Au":  # L1_2
        return Structure(
            Lattice.cubic(a),
            ["Au", "Cu", "Cu", "Cu"],
            [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
        )
    if kind == "CuAu":  # L1_0
        return Structure(Lattice.tetragonal(2.8, 3.7), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    # B2 CuAu with a squeezed lattice: far above the hull
    return Structure(Lattice.cubic(2.6), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_update_hull_counts_hits_and_discoveries_exclude_references(tmp_path):
    cfg = config(chemical_systems=["Cu-Au"], near_stable=0.05)
    store = CampaignStore.in_workdir(tmp_path)
    store.set_meta("config", cfg.model_dump(mode="json"))
    h = {
        k: store.add_structure(
            cu_au(k),
            source="seed" if k in ("Cu", "Au", "CuAu") else "substitution",
            round=0 if k in ("Cu", "Au", "CuAu") else 1,
        )
        for k in ("Cu", "Au", "CuAu", "Cu3Au", "B2")
    }
    store.add_queries(
        0,
        [
            Query(hash=h[k], strategy="references", rank=i, score=None)
            for i, k in enumerate(("Cu", "Au", "CuAu"))
        ],
    )
    store.add_queries(
        1, [Query(hash=h[k], strategy="p_stable", rank=i, score=0.5) for i, k in enumerate(("Cu3Au", "B2"))]
    )
    label_hashes(store, list(h.values()), settings=cfg.oracle, workdir=tmp_path, round=1)
    update = update_hull(cfg, store=store, round=1)
    verdicts, report = update.verdicts, update.report
    e_hull = {v.hash: v.e_hull for v in verdicts}
    rule = cfg.stability_rule
    for v in verdicts:
        assert v.stable == rule.is_stable(v.e_hull) and v.hit == rule.is_hit(v.e_hull)
    expected_hits = [k for k in ("Cu3Au", "B2") if rule.is_hit(e_hull[h[k]])]
    assert expected_hits == ["Cu3Au"]  # L1_2 Cu3Au is a hit in EMT, squeezed B2 CuAu is not
    assert e_hull[h["B2"]] > 0.05 and report["n_hits_new"] == len(expected_hits)
    assert report["hit_rate"] == pytest.approx(len(expected_hits) / 2)
    assert report["n_stable_new"] + report["n_near_stable_new"] == report["n_hits_new"]
    store.set_stability(1, verdicts)
    found = discoveries(cfg, store)
    assert {k.id for k in found} == {h[k] for k in expected_hits}  # never the round-0 references
    assert h["Cu"] not in {k.id for k in found} and h["CuAu"] not in {k.id for k in found}


def _pool(store: CampaignStore, rnd: int, made) -> None:
    """Store a round's children and screen them, so they stay in the candidate pool (unlabelled)."""
    for c in made:
        store.add_structure(c.structure, source=c.source, parent=c.parent, round=rnd, provenance=c.info)
    _screen(store, rnd, made)


def _screen(store: CampaignStore, rnd: int, made) -> None:
    """Record a screening prediction for each stored child (relaxed in place, 0.1 eV/atom above the hull)."""
    store.add_predictions(
        rnd,
        [
            Prediction(
                hash=structure_hash(c.structure),
                relaxed_hash=structure_hash(c.structure),
                model="pretrained",
                energy_per_atom=-3.0,
                energy_per_atom_std=0.01,
                e_hull=0.1,
                e_hull_std=0.02,
                data={"reason": None},
            )
            for c in made
        ],
    )


def test_the_generate_stage_searches_structure_types_for_a_generator_that_declares_it(tmp_path, monkeypatch):
    """The capability, not the generator's name, decides: with `supports_prototype_search` the substitution
    generator gets the structure-type search (parents from every unspent bundled prototype); without it, one
    context holding the campaign's discoveries, which a fresh campaign does not have, so it has no parents."""
    cfg = config(
        generator={
            "mix": {"diffusion": 0, "substitution": 6, "random_search": 0},
            "substitution": {"max_candidates_per_parent": 2},
        }
    )
    store = CampaignStore.in_workdir(tmp_path)
    assert SubstitutionGenerator.supports_prototype_search
    searched = generate_candidates(cfg, store=store, round=1, generator_checkpoint=None).candidates
    assert len(searched) == 6 and all(c.info.get("parent_prototype") for c in searched)
    monkeypatch.setattr(SubstitutionGenerator, "supports_prototype_search", False)
    plain = generate_candidates(cfg, store=store, round=1, generator_checkpoint=None).candidates
    assert plain == []


def test_a_multivalent_oxide_round_spans_many_formulas(tmp_path):
    """Mn-O with every known compound withheld: each generator covers several compositions in one round, and
    the candidates that pass the funnel span at least three formulas (the diffusion sampler alone, conditioned on
    the system, used to give MnO2 only)."""
    cfg = config(
        chemical_systems=["Mn-O"],
        withhold=["all_compounds"],
        generator={
            "mix": {"diffusion": 8, "substitution": 12, "random_search": 8},
            "diffusion": {"steps": 10},
            "funnel": {"max_atoms": 20},
        },
    )
    store = CampaignStore.in_workdir(tmp_path)
    made = generate_candidates(cfg, store=store, round=1, generator_checkpoint=None).candidates
    per_source: dict[str, set[str]] = {}
    for c in made:
        per_source.setdefault(c.source, set()).add(c.structure.composition.reduced_formula)
    assert all(len(per_source[name]) >= 2 for name in ("diffusion", "substitution", "random_search")), (
        per_source
    )
    # Random search starts after the compositions the diffusion sampler went through: none is made twice.
    assert not per_source["diffusion"] & per_source["random_search"], per_source
    rows = [
        Generated(
            hash=store.add_structure(
                c.structure, source=c.source, parent=c.parent, round=1, provenance=c.info
            ),
            source=c.source,
        )
        for c in made
    ]
    passed = [o for o in run_funnel(cfg, store=store, round=1, candidates=rows).outcomes if o.passed]
    formulas = {store.structure_row(o.hash).reduced_formula for o in passed}
    assert len(formulas) >= 3, formulas
    report = round_breadth(made)
    assert report["distinct_formulas"] == len(set().union(*per_source.values()))
    assert report["distinct_prototypes"] >= report["distinct_formulas"]


def test_what_substitution_cannot_make_passes_to_random_search(tmp_path):
    """Li-Al with 2-atom cells: the structure-type search finds fewer children than its share of 24, and random
    search, next in the mix, makes the rest (the only composition, LiAl, round after round), so the round proposes
    the mix's total."""
    cfg = config(
        withhold=["all_compounds"],
        generator={
            "mix": {"diffusion": 0, "substitution": 24, "random_search": 4},
            "funnel": {"max_atoms": 2},
        },
    )
    store = CampaignStore.in_workdir(tmp_path)
    made = generate_candidates(cfg, store=store, round=1, generator_checkpoint=None)
    substituted = sum(c.source == "substitution" for c in made.candidates)
    assert 0 < substituted < 24
    assert made.asked == {"substitution": 24, "random_search": 4 + 24 - substituted}
    assert len(made.candidates) == 28 and made.unmade == 0
    assert {
        c.structure.composition.reduced_formula for c in made.candidates if c.source == "random_search"
    } == {"LiAl"}


def _structure_type_search(cfg: CampaignConfig, store: CampaignStore, rnd: int):
    """Round `rnd`'s substitution candidates (12, the mix's share) and counts, as the generate stage asks for them."""
    return substitution_candidates(
        cfg,
        store=store,
        round=rnd,
        name="substitution",
        n=12,
        discoveries=[],
        known=known_index(cfg, store=store, before_round=rnd),
    )


def test_substitution_proposes_new_structure_types_in_round_5(tmp_path):
    """K-O, every known compound withheld: each round's children stay in the pool (screened, unlabelled), so
    their (prototype, formula) pairs are spent; round 5 still proposes structure types never proposed before
    (the ionic table alone ran dry after round 1 on this system)."""
    cfg = config(
        chemical_systems=["K-O"], withhold=["all_compounds"], generator={"funnel": {"max_atoms": 20}}
    )
    store = CampaignStore.in_workdir(tmp_path)
    seen: set[str] = set()
    for rnd in range(1, 6):
        made, counts = _structure_type_search(cfg, store, rnd)
        prototypes = {c.info["parent_prototype"] for c in made}
        assert len(made) == 12, (rnd, counts)
        if rnd == 5:
            assert counts["decorations"] > 0 and prototypes - seen, counts
            assert len({c.structure.composition.reduced_formula for c in made}) >= 3
        seen |= prototypes
        _pool(store, rnd, made)


def test_extra_decorations_go_further_down_the_list_and_those_cut_at_the_cheap_tier_stay_in_the_pool(
    tmp_path,
):
    """K-O, every known compound withheld: `generator.extra_decorations` adds decoration candidates after the
    mix's share, which stays what it was without them. Children left at the cheap screening tier stay in the pool
    (carried to round 2's tiers), so their pairs are spent and round 2 proposes decorations not tried yet; a child
    whose cheap estimate could not be placed leaves the pool and its pair is offered again."""
    base = {"funnel": {"max_atoms": 20}}
    plain_cfg = config(chemical_systems=["K-O"], withhold=["all_compounds"], generator=base)
    cfg = config(
        chemical_systems=["K-O"], withhold=["all_compounds"], generator={**base, "extra_decorations": 30}
    )
    store = CampaignStore.in_workdir(tmp_path)
    plain, _ = _structure_type_search(plain_cfg, store, 1)
    made, _ = _structure_type_search(cfg, store, 1)
    assert [c.structure for c in made[:12]] == [c.structure for c in plain]
    extra = made[12:]
    assert len(extra) == 30 and all(c.info["operation"].startswith("decoration") for c in extra)

    def pair(c):
        return (c.info["parent_prototype"], c.info["formula"])

    decorated = [c for c in made if c.info["operation"] == "decoration"]
    unplaced = decorated[0]
    for c in made:
        store.add_structure(c.structure, source=c.source, parent=c.parent, round=1, provenance=c.info)
    cut = CheapEstimate(energy_per_atom=-3.0, energy_per_atom_std=0.01, e_hull=0.4, e_hull_std=0.02)
    lost = CheapEstimate(
        energy_per_atom=float("nan"),
        energy_per_atom_std=float("nan"),
        e_hull=float("nan"),
        e_hull_std=float("nan"),
        reason="cannot be turned into a crystal graph",
    )
    store.add_predictions(
        1,
        [
            cheap_only(
                structure_hash(c.structure), lost if c is unplaced else cut, model="pretrained", margin=0.3
            )
            for c in made
        ],
    )
    carried = {p.hash for p in carried_candidates(cfg, store=store, round=2)}
    assert carried == {structure_hash(c.structure) for c in made if c is not unplaced}
    spent = spent_decorations(cfg, store, 2)
    assert {pair(c) for c in decorated if c is not unplaced} <= spent and pair(unplaced) not in spent
    again, _ = _structure_type_search(cfg, store, 2)
    offered = {pair(c) for c in again if c.info["operation"] == "decoration"}
    assert offered and not offered & spent


@pytest.mark.slow
def test_a_generator_fine_tune_that_narrows_its_proposals_is_not_deployed(tmp_path):
    """Li-Al: the shipped diffusion model, sampling the system freely, proposes 19 formulas in 48 crystals; a
    fine-tune on B32 LiAl alone (no original crystals mixed in) narrows that to 15, so the check refuses it. The
    same model compared with itself is deployed (same requests, same seed: the same crystals)."""
    cfg = config(
        generator={
            "mix": {"diffusion": 16, "substitution": 0, "random_search": 0},
            "diffusion": {"steps": 20},
            "fine_tune_check_samples": 48,
        }
    )
    store = CampaignStore.in_workdir(tmp_path)
    b32 = Structure.from_spacegroup("Fd-3m", Lattice.cubic(6.37), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    narrow = tmp_path / "b32.pt"
    DiffusionGenerator(DiffusionSettings(steps=20)).fine_tune(
        # 3e-3 left the model unstable enough that on another host it came out wider (21 formulas), not narrower
        [b32] * 64,
        checkpoint_out=narrow,
        steps=400,
        lr=1e-3,
        mix_original=0,
        batch_size=16,
    )
    refused = generator_breadth_check(cfg, store=store, round=1, before=None, after=narrow)
    assert not refused["generator_deployed"] and "(narrower)" in refused["generator_reason"]
    assert refused["generator_free_formulas_after"] < refused["generator_free_formulas_before"]
    assert refused["generator_request_formulas_before"] >= 3  # the request asks for several compositions
    # Sampling is what costs here: a third of the crystals is enough to show a model equals itself.
    cfg = cfg.model_copy(
        update={"generator": cfg.generator.model_copy(update={"fine_tune_check_samples": 16})}
    )
    same = generator_breadth_check(cfg, store=store, round=1, before=None, after=SHIPPED_CHECKPOINT)
    assert same["generator_deployed"] and "(narrower)" not in same["generator_reason"]
    assert same["generator_free_formulas_after"] == same["generator_free_formulas_before"]


def test_interstitial_orderings_join_a_ti_o_round_without_moving_random_search(tmp_path):
    """Ti-O: the interstitial generator makes its share from the compositions of the round's list with no more O
    than Ti and passes over the others, so random search, next, is asked for the same compositions as without it."""

    def round_1(mix: dict[str, int]):
        cfg = config(
            chemical_systems=["Ti-O"],
            withhold=["all_compounds"],
            generator={"mix": mix, "funnel": {"max_atoms": 10}},
        )
        return generate_candidates(cfg, store=CampaignStore.in_workdir(tmp_path / str(len(mix))), round=1,
                                   generator_checkpoint=None)  # fmt: skip

    with_it = round_1({"diffusion": 0, "substitution": 0, "interstitial": 4, "random_search": 4})
    without = round_1({"diffusion": 0, "substitution": 0, "random_search": 4})
    ordered = [c for c in with_it.candidates if c.source == "interstitial"]
    assert len(ordered) == 4 and with_it.asked == {"interstitial": 4, "random_search": 4}
    for c in ordered:
        counts = c.structure.composition.element_composition
        assert counts["Ti"] >= counts["O"] and c.info["operation"] == "interstitial"

    def formulas(made):
        return [
            c.structure.composition.reduced_formula for c in made.candidates if c.source == "random_search"
        ]

    assert formulas(with_it) == formulas(without)
