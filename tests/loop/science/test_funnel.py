"""The candidate funnel on real mp_20 crystals: filters, reasons, dedup and novelty."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.analysis.hhi import HHIModel
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from generator.base import Candidate
from generator.seeds import Withholding, load_seeds, seed_loaders
from loop.design.requirements import DesignConfig
from loop.science.fingerprint import Fingerprint, FingerprintError, fingerprint
from loop.science.funnel import FILTERS, Funnel, FunnelConfig, FunnelError, KnownIndex


@pytest.fixture(scope="module")
def seeds():
    return load_seeds(limit=300, seed=7)


def disguise(structure: Structure, *, seed: int) -> Structure:
    """A rotated, site-permuted 2x1x1 supercell of `structure` (same crystal, different cell)."""
    rng = np.random.default_rng(seed)
    sc = structure.copy()
    sc.make_supercell([[2, 0, 0], [0, 1, 0], [0, 1, 1]])
    rot = Rotation.random(random_state=seed).as_matrix()
    perm = rng.permutation(len(sc))
    return Structure(Lattice(sc.lattice.matrix @ rot.T), [sc[i].specie for i in perm], sc.frac_coords[perm])


def cands(structures, source="test"):
    return [Candidate(structure=s, source=source) for s in structures]


def permissive(**kwargs) -> FunnelConfig:
    """Only the filters under test: no charge balance, no atom cap."""
    return FunnelConfig(**{"charge_balance": "off", "max_atoms": None, **kwargs})


def test_disguised_copies_of_known_structures_are_caught(seeds):
    index = KnownIndex()
    index.add_known(seeds[:200], origin="seed")
    copies = [disguise(k.structure, seed=i) for i, k in enumerate(seeds[:40])]
    assert all(len(c) == 2 * len(k.structure) for c, k in zip(copies, seeds[:40], strict=True))
    kept, report = Funnel(permissive(), known=index).run(cands(copies))
    assert kept == []
    assert report.removed["not_novel"] == 40
    # each copy is traced back to its own original (or an mp_20 entry the matcher calls identical)
    matcher = StructureMatcher()
    by_id = {k.id: k.structure for k in seeds}
    for rej in report.rejections:
        assert matcher.fit(by_id[rej.match_id], seeds[rej.index].structure)


def test_unseen_crystals_pass_and_campaign_matches_are_known_not_seed(seeds):
    index = KnownIndex()
    index.add_known(seeds[:100], origin="seed")
    fresh = [k.structure for k in seeds[200:260]]
    matcher = StructureMatcher()
    truly_new = [
        s
        for s in fresh
        if not any(
            matcher.fit(s, k.structure)
            for k in seeds[:100]
            if k.structure.composition.reduced_formula == s.composition.reduced_formula
        )
    ]
    kept, report = Funnel(permissive(), known=index).run(cands(truly_new))
    assert len(kept) == len(truly_new) > 50
    for i, fp in zip(report.kept_indices, report.fingerprints, strict=True):
        index.add(id=f"round1-{i}", structure=truly_new[i], fp=fp, origin="campaign")
    again = [disguise(s, seed=3) for s in truly_new[:10]]
    kept, report = Funnel(permissive(), known=index).run(cands(again))
    assert kept == [] and report.removed["known"] == 10 and report.removed["not_novel"] == 0
    assert all(r.match_id.startswith("round1-") for r in report.rejections)
    # switching novelty off lets seed look-alikes through but still catches campaign duplicates
    seed_copy = disguise(seeds[0].structure, seed=5)
    kept, report = Funnel(permissive(require_novel=False), known=index).run(cands([seed_copy, again[0]]))
    assert [c.structure for c in kept] == [seed_copy] and report.removed["known"] == 1


def test_distinct_polymorphs_are_not_merged():
    polymorphs = load_seeds(splits=["mp_20/train", "mp_20/val"], elements=["Si", "O"], min_elements=2)
    formulas = {p.structure.composition.reduced_formula for p in polymorphs}
    assert formulas == {"SiO2"} and len(polymorphs) >= 10
    matcher = StructureMatcher()
    distinct = []
    for p in polymorphs:
        if not any(matcher.fit(p.structure, d) for d in distinct):
            distinct.append(p.structure)
    kept, report = Funnel(permissive()).run(cands([*distinct, disguise(distinct[0], seed=1)]))
    assert len(kept) == len(distinct)
    assert report.removed["duplicate_in_batch"] == 1
    assert report.rejections[0].index == len(distinct) and report.rejections[0].match_id == "0"


def test_rebuild_from_stored_fingerprints_loads_structures_lazily(seeds):
    stored = [(k.id, fingerprint(k.structure).to_str(), k.structure) for k in seeds[:150]]
    loads: list[str] = []

    def loader(ident, structure):
        def load():
            loads.append(ident)
            return structure

        return load

    index = KnownIndex()
    for ident, fp, structure in stored:
        index.add(id=ident, structure=loader(ident, structure), fp=fp, origin="campaign")
    assert len(index) == 150 and loads == []
    target = seeds[5]
    kept, report = Funnel(permissive(), known=index).run(cands([disguise(target.structure, seed=9)]))
    assert kept == [] and report.rejections[0].filter == "known"
    same_formula = {
        k.id
        for k in seeds[:150]
        if k.structure.composition.reduced_formula == target.structure.composition.reduced_formula
    }
    assert set(loads) <= same_formula and target.id in set(loads) | {report.rejections[0].match_id}


def test_structural_validity_filters(seeds):
    good = seeds[0].structure
    squeezed = good.copy()
    squeezed.append(
        squeezed[0].specie, squeezed[0].coords + np.array([0.2, 0.0, 0.0]), coords_are_cartesian=True
    )
    swollen = good.copy()
    swollen.scale_lattice(good.volume * 20)
    disordered = good.copy()
    disordered.replace_species({good[0].specie: {good[0].specie: 0.5}})
    kept, report = Funnel(permissive()).run(cands([good, squeezed, swollen, disordered]))
    assert [c.structure for c in kept] == [good]
    assert (
        report.removed["min_distance"] == report.removed["volume"] == report.removed["invalid_structure"] == 1
    )
    reasons = {r.index: r.reason for r in report.rejections}
    assert "distance" in reasons[1] and "Å³/atom" in reasons[2] and "occupanc" in reasons[3]


def _rocksalt(a: str, b: str, lattice: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_charge_balance_rules_and_intermetallics():
    nacl = _rocksalt("Na", "Cl", 5.64)
    naf2 = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.5), ["Na", "F"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )
    cuau = Structure(Lattice.tetragonal(2.8, 3.7), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    batch = cands([nacl, naf2, cuau])
    for rule in ("pymatgen", "common"):
        kept, report = Funnel(FunnelConfig(charge_balance=rule, deduplicate=False)).run(batch)
        assert [c.structure.composition.reduced_formula for c in kept] == ["NaCl", "CuAu"]
        assert report.rejections[0].filter == "charge_balance" and report.rejections[0].index == 1
    strict = FunnelConfig(allow_intermetallics=False, deduplicate=False)
    kept, _ = Funnel(strict).run(batch)
    assert [c.structure.composition.reduced_formula for c in kept] == ["NaCl"]


def test_design_filters_elements_systems_atoms_hhi(seeds):
    structures = [k.structure for k in seeds[:120]]
    comps = [s.composition for s in structures]
    no_oxygen = DesignConfig(elements={"forbidden": ["O"]})
    kept, report = Funnel(permissive(), design=no_oxygen).run(cands(structures))
    assert all("O" not in c.structure.composition for c in kept)
    assert report.removed["elements"] == sum("O" in c for c in comps) > 0

    systems = sorted({"-".join(sorted(el.symbol for el in c.elements)) for c in comps})[:5]
    kept, report = Funnel(permissive(chemical_systems=systems)).run(cands(structures))
    allowed = [set(s.split("-")) for s in systems]
    assert kept and all(
        any({e.symbol for e in c.structure.composition.elements} <= a for a in allowed) for c in kept
    )
    outside = sum(not any({e.symbol for e in c.elements} <= a for a in allowed) for c in comps)
    assert report.removed["chemical_system"] == outside

    sizes = sorted(len(s) for s in structures)
    cap = sizes[len(sizes) // 2]
    kept, report = Funnel(permissive(max_atoms=cap)).run(cands(structures))
    assert all(len(c.structure) <= cap for c in kept) and report.removed["max_atoms"] == sum(
        n > cap for n in sizes
    )

    model = HHIModel()
    hhis = [model.get_hhi_production(c.element_composition) for c in comps]
    ceiling = float(np.median([h for h in hhis if h is not None]))
    kept, report = Funnel(permissive(), design=DesignConfig(cost={"max_hhi": ceiling})).run(cands(structures))
    assert kept and all(model.get_hhi_production(c.structure.composition) <= ceiling for c in kept)
    assert report.removed["hhi"] >= sum(h is not None and h > ceiling for h in hhis) > 0


def test_report_counts_metrics_and_json(seeds):
    structures = [k.structure for k in seeds[:60]] + [seeds[0].structure]
    no_oxygen = DesignConfig(elements={"forbidden": ["O"]})
    kept, report = Funnel(FunnelConfig(), design=no_oxygen).run(cands(structures))
    assert set(report.removed) == set(FILTERS)
    assert sum(report.removed.values()) == report.n_in - report.n_kept == len(report.rejections)
    assert report.n_kept == len(kept) == len(report.fingerprints) == len(report.kept_indices)
    metrics = report.metrics()
    assert metrics["funnel_in"] == 61 and metrics["funnel_kept"] == len(kept)
    assert metrics["funnel_removed_elements"] == report.removed["elements"]
    assert json.loads(json.dumps(report.to_dict()))["n_in"] == 61


def test_bad_configuration_raises_typed_errors():
    with pytest.raises(ValidationError):
        FunnelConfig(min_distanse=1.0)
    with pytest.raises(ValidationError, match="unknown element"):
        DesignConfig(elements={"forbidden": ["Xx"]})
    with pytest.raises(ValidationError, match="volume_per_atom"):
        FunnelConfig(volume_per_atom=(50.0, 10.0))
    with pytest.raises(FunnelError, match="unknown element"):
        Funnel().run([], chemical_systems=["Li-Qq"])


def test_fingerprint_is_invariant_and_round_trips(seeds):
    for k in seeds[:20]:
        fp = fingerprint(k.structure)
        other = fingerprint(disguise(k.structure, seed=1))
        assert fp.formula == other.formula and fp.distance(other) < 1e-3
        assert Fingerprint.from_str(fp.to_str()).distance(fp) < 1e-4
    with pytest.raises(FingerprintError):
        Fingerprint.from_str("no separator here")


def test_lazy_index_over_all_seed_data_parses_only_needed_cifs(seeds):
    index = KnownIndex.from_seed_data()
    assert len(index) > 20000 and index.n_loaded == 0
    picks = [k for k in seeds[:30] if k.structure.composition.reduced_formula != "SiO2"][:5]
    kept, report = Funnel(permissive(), known=index).run(
        cands([disguise(k.structure, seed=4) for k in picks])
    )
    assert kept == [] and report.removed["not_novel"] == 5
    formulas = {k.structure.composition.reduced_formula for k in picks}
    same_formula = sum(1 for _, formula, _ in seed_loaders() if formula in formulas)
    assert 5 <= index.n_loaded <= same_formula < 200


def rocksalt_nacl(a: float = 5.64) -> Structure:
    return Structure(
        Lattice(0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )


def test_find_honours_other_false_after_checking_a_seed_entry():
    """`other=False` must stay False after a seed entry was compared (it was overwritten by a structure)."""
    query = rocksalt_nacl()
    index = KnownIndex(matcher=None)
    # a seed entry that is not the query (CsCl-type NaCl) but is examined first: same fingerprint given
    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    index.add(id="seed-cscl", structure=cscl, fp=fingerprint(query), origin="seed")
    index.add(id="campaign-copy", structure=disguise(query, seed=3), origin="campaign")
    assert index.find(query, seed=True, other=False) is None
    assert index.find(query) == ("campaign-copy", "campaign")
    assert index.find(query, seed=False, other=True) == ("campaign-copy", "campaign")


def test_seed_index_covers_mpts52_and_leaves_out_withheld_crystals():
    # LiAl (P6_3/mmc, mp-1079240) is bundled only through mpts_52
    lial = load_seeds(ids=["mp-1079240"])[0]
    full = KnownIndex.from_seed_data()
    assert full.find(disguise(lial.structure, seed=2)) == ("mp-1079240", "seed")
    held = KnownIndex.from_seed_data(withhold=Withholding(formulas=frozenset({"LiAl"})))
    assert len(held) < len(full)
    assert held.find(disguise(lial.structure, seed=2)) is None
