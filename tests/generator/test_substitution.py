"""Substitution and SAPS candidates from real bundled parents, and the prototype search for a target system."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generator.base import GenerationContext, GeneratorError, get_generator_class
from generator.seeds import Withholding, load_seeds, seed_table
from generator.substitution import (
    SubstitutionGenerator,
    SubstitutionSettings,
    decorate,
    decorated_candidates,
    decoration_map,
    partial_decoration,
    prototype_decorations,
    prototype_parents,
    substitution_score,
)
from loop.science.funnel import Funnel, FunnelConfig, KnownIndex

MP20 = ["mp_20/train", "mp_20/val"]


@pytest.fixture(scope="module")
def parents():
    return load_seeds(splits=MP20, limit=100, seed=0)


@pytest.fixture(scope="module")
def candidates(parents):
    return SubstitutionGenerator().generate(n=400, context=GenerationContext(known=parents), seed=0)


def test_candidates_are_charge_balanced_with_provenance(parents, candidates):
    assert len(candidates) >= 200
    ids = {p.id for p in parents}
    for cand in candidates:
        assert cand.source == "substitution" and cand.parent in ids
        assert cand.info["operation"] in {"substitution", "saps"} and cand.info["substitutions"]
        comp = cand.structure.composition
        assert comp.reduced_formula == cand.info["formula"]
        # pymatgen's own oxidation-state search, independent of the generator's fast check;
        # intermetallic parents give intermetallic children, where formal charges do not apply
        metallic = all(el.is_metal for el in comp.elements)
        assert metallic or Composition(comp.reduced_formula).oxi_state_guesses(max_sites=-1), (
            comp.reduced_formula
        )
    assert {c.info["operation"] for c in candidates} == {"substitution", "saps"}
    assert len({c.parent for c in candidates}) >= 30


def test_substitution_applies_the_recorded_species_map(parents, candidates):
    by_id = {p.id: p.structure for p in parents}
    for cand in candidates:
        if cand.info["operation"] != "substitution":
            continue
        parent = by_id[cand.parent]
        mapping = {
            old.rstrip("+-0123456789"): new.rstrip("+-0123456789")
            for old, new in cand.info["substitutions"].items()
        }
        expected = [mapping.get(site.specie.symbol, site.specie.symbol) for site in parent]
        assert [site.specie.symbol for site in cand.structure] == expected
        assert np.allclose(cand.structure.frac_coords, parent.frac_coords)
        assert cand.info["score"] >= SubstitutionSettings().threshold


def test_saps_keeps_lattice_and_lowers_symmetry(parents, candidates):
    by_id = {p.id: p.structure for p in parents}
    saps = [c for c in candidates if c.info["operation"] == "saps"]
    assert len(saps) >= 50
    for cand in saps[:60]:
        parent = by_id[cand.parent]
        assert np.allclose(cand.structure.lattice.matrix, parent.lattice.matrix)
        changed = [
            i for i, (a, b) in enumerate(zip(parent, cand.structure, strict=True)) if a.specie != b.specie
        ]
        assert changed == cand.info["sites"] and 0 < len(changed) < cand.info["orbit_size"]
        parent_sga = SpacegroupAnalyzer(parent, symprec=0.1)
        child_sga = SpacegroupAnalyzer(cand.structure, symprec=0.1)
        assert len(child_sga.get_symmetry_operations()) < len(parent_sga.get_symmetry_operations())
        assert child_sga.get_space_group_number() == cand.info["spacegroup"]


def test_funnel_keeps_only_candidates_unlike_any_known_crystal(candidates):
    table = seed_table()
    formulas = {c.structure.composition.reduced_formula for c in candidates}
    reduced = table["pretty_formula"].map(lambda f: Composition(f).reduced_formula)
    same = load_seeds(exclude_ids=set(table["material_id"][~reduced.isin(formulas)]))
    assert same, "some substitutions should recreate known mp_20 compounds"
    index = KnownIndex()
    index.add_known(same, origin="seed")
    kept, report = Funnel(FunnelConfig(), known=index).run(candidates)
    assert report.removed["not_novel"] > 0 and kept
    matcher = StructureMatcher()
    for cand in kept:
        formula = cand.structure.composition.reduced_formula
        for known in same:
            if known.structure.composition.reduced_formula == formula:
                assert not matcher.fit(cand.structure, known.structure), (cand.info, known.id)


def test_target_chemical_system_is_respected():
    target = {"Li", "Fe", "P", "O"}
    parents = load_seeds(chemical_systems=["Li-Fe-P-O"], max_foreign_elements=2, limit=150)
    out = SubstitutionGenerator().generate(
        n=150, context=GenerationContext(known=parents, chemical_systems=["Li-Fe-P-O"]), seed=1
    )
    assert len(out) >= 50
    assert all({e.symbol for e in c.structure.composition.elements} <= target for c in out)
    by_id = {p.id: p for p in parents}
    from_outside = [
        c for c in out if not {e.symbol for e in by_id[c.parent].structure.composition.elements} <= target
    ]
    assert from_outside, "parents outside the system must be substituted into it"
    assert any({e.symbol for e in c.structure.composition.elements} == target for c in out)


def test_reproducible_registered_and_bad_input(parents):
    gen = get_generator_class("substitution")(settings=SubstitutionSettings(saps_fractions=[0.5]))
    a = gen.generate(n=30, context=GenerationContext(known=parents[:20]), seed=3)
    b = gen.generate(n=30, context=GenerationContext(known=parents[:20]), seed=3)
    assert [(c.parent, c.info) for c in a] == [(c.parent, c.info) for c in b]
    assert all(c.info.get("fraction", 0.5) == 0.5 for c in a)
    assert substitution_score("Mn2+", "Fe2+") > substitution_score("Mn2+", "Ba2+")
    with pytest.raises(ValidationError):
        SubstitutionSettings(saps_fractions=[1.5])
    with pytest.raises(ValidationError):
        SubstitutionSettings(treshold=0.1)
    with pytest.raises(GeneratorError, match="unknown element"):
        gen.generate(n=5, context=GenerationContext(known=parents, chemical_systems=["Li-Zz"]))
    with pytest.raises(GeneratorError):
        gen.generate(n=-1, context=GenerationContext(known=parents))
    with pytest.raises(GeneratorError):
        substitution_score("Fe9+", "Fe2+")


def test_intermetallic_parents_give_intermetallic_candidates():
    parents = load_seeds(chemical_systems=["Cu-Au"], max_foreign_elements=1, limit=120)
    out = SubstitutionGenerator().generate(
        n=20, context=GenerationContext(known=parents, chemical_systems=["Cu-Au"]), seed=0
    )
    assert len(out) == 20
    by_id = {p.id: p.structure for p in parents}
    for cand in out:
        assert {e.symbol for e in cand.structure.composition.elements} <= {"Cu", "Au"}
        assert cand.structure.composition != by_id[cand.parent].composition
    assert any(len(c.structure.composition.elements) == 2 for c in out)


B32 = "AB:227:4:a_b"  # NaTl type: AB, Fd-3m, 4 atoms in the primitive cell, Wyckoff 8a and 8b


def natl_type(a: float, first: str, second: str) -> Structure:
    """A B32 (NaTl-type) crystal built by hand: two interpenetrating diamond sublattices, lattice constant a (Å)."""
    lattice = Lattice(0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]))
    coords = [[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5], [0.75, 0.75, 0.75]]
    return Structure(lattice, [first, first, second, second], coords)


@pytest.fixture(scope="module")
def li_al_parents():
    return prototype_parents(chemical_systems=["Li-Al"], limit=40)


def test_prototype_parents_offer_each_structure_type_once(li_al_parents):
    keys = [p.properties["prototype"] for p in li_al_parents]
    assert len(keys) == 40 and len(set(keys)) == 40
    scores = [p.properties["prototype_score"] for p in li_al_parents]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    gen = SubstitutionGenerator()
    for parent in li_al_parents:
        comp = parent.structure.composition
        # parents come from other chemical systems, and every one of them can be substituted into Li-Al
        assert len(comp) >= 2 and not {e.symbol for e in comp.elements} <= {"Li", "Al"}
        assert gen.parent_score(comp.reduced_formula, ["Li-Al"]) == pytest.approx(
            parent.properties["prototype_score"]
        )
        sga = SpacegroupAnalyzer(parent.structure, symprec=0.1)
        assert parent.properties["prototype"].split(":")[1:3] == [
            str(sga.get_space_group_number()),
            str(len(parent.structure)),
        ]
    b32 = [p for p in li_al_parents if p.properties["prototype"] == B32]
    assert len(b32) == 1 and b32[0].properties["prototype_members"] >= 2  # e.g. LiIn and LiZn: one parent


def test_li_al_substitution_proposes_b32_lial(li_al_parents):
    """The audit's missed phase: B32 LiAl (NaTl type) must come out of the bundled B32 parents."""
    gen = SubstitutionGenerator(settings=SubstitutionSettings(max_candidates_per_parent=2))
    out = gen.generate(
        n=200, context=GenerationContext(known=li_al_parents, chemical_systems=["Li-Al"]), seed=0
    )
    assert all({e.symbol for e in c.structure.composition.elements} <= {"Li", "Al"} for c in out)
    b32 = [
        c
        for c in out
        if c.structure.composition.reduced_formula == "LiAl"
        and SpacegroupAnalyzer(c.structure, symprec=0.1).get_space_group_number() == 227
    ]
    assert b32, "no Fd-3m LiAl among the substitution candidates"
    assert b32[0].info["parent_prototype"] == B32
    assert StructureMatcher().fit(b32[0].structure, natl_type(6.37, "Li", "Al"))
    assert len({c.parent for c in out}) >= 30  # the search spans many structure types, not one parent


def test_withheld_and_spent_prototypes_are_not_parents(li_al_parents):
    b32 = next(p for p in li_al_parents if p.properties["prototype"] == B32)
    hidden = prototype_parents(chemical_systems=["Li-Al"], withhold=Withholding(ids=frozenset({b32.id})))
    assert b32.id not in {p.id for p in hidden}
    # another crystal of the same type takes its place, unless that prototype was already used
    assert any(p.properties["prototype"] == B32 for p in hidden)
    spent = prototype_parents(chemical_systems=["Li-Al"], limit=40, exclude_prototypes={B32})
    assert B32 not in {p.properties["prototype"] for p in spent}


def test_decoration_maps_elements_by_share_and_keeps_the_anion_an_anion():
    score, mapping = decoration_map("NaCl", "FeO")
    assert dict(mapping) == {"Na": "Fe", "Cl": "O"} and 0 < score <= 1
    assert dict(decoration_map("Al2O3", "V2O3")[1]) == {"Al": "V", "O": "O"}
    assert decoration_map("NaCl", "V2O3") is None  # anonymous formulas differ
    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    child = decorate(rocksalt, {"Na": "Fe", "Cl": "O"})
    assert child.composition.reduced_formula == "FeO" and len(child) == len(rocksalt)
    assert child.volume < rocksalt.volume  # Fe and O are smaller atoms than Na and Cl
    assert SpacegroupAnalyzer(child).get_space_group_number() == 225


def test_every_structure_type_of_an_allowed_composition_is_decorated_once():
    held = Withholding(compounds_in=(frozenset({"V", "O"}),))
    found = prototype_decorations(weights={"VO": 1.0, "V2O3": 0.5, "V": 1.0}, max_sites=12, withhold=held)
    pairs = [(d.prototype, d.formula) for d in found]
    assert len(pairs) == len(set(pairs)) and {f for _, f in pairs} == {"VO", "V2O3"}
    assert ("AB:225:2:a_b", "VO") in pairs  # rock salt
    assert all(d.prototype.startswith("AB:") == (d.formula == "VO") for d in found)
    table = seed_table().set_index("material_id")
    assert not any(table.loc[d.material_id, "element_set"] <= {"V", "O"} for d in found)  # withheld
    assert [d.rank_score for d in found] == sorted((d.rank_score for d in found), reverse=True)
    fewer = prototype_decorations(
        weights={"VO": 1.0, "V2O3": 0.5}, max_sites=12, withhold=held, exclude={("AB:225:2:a_b", "VO")}
    )
    assert len(fewer) == len(found) - 1
    children = list(decorated_candidates(found[:5]))
    assert [c.structure.composition.reduced_formula for c in children] == [d.formula for d in found[:5]]
    assert all(c.info["operation"] == "decoration" and c.info["parent_prototype"] for c in children)


def test_partial_decoration_orders_an_orbit_and_never_puts_a_cation_on_an_anion_site():
    li3al = Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.0), ["Al", "Li"], [[0, 0, 0], [0, 0.5, 0.5]])
    rng = np.random.default_rng(0)
    variant, info = partial_decoration(li3al, elements={"Li", "Al"}, settings=SubstitutionSettings(), rng=rng)
    assert info["operation"] == "decoration_saps" and info["wyckoff"] == "3c" and info["saps"] == {"Li": "Al"}
    assert variant.composition.reduced_formula == info["formula"] == "LiAl"  # 1 of the 3 Li sites
    assert len(SpacegroupAnalyzer(variant, symprec=0.1).get_symmetry_operations()) < 48
    rocksalt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.2), ["V", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    supercell = rocksalt * (2, 1, 1)  # orbits of two sites, but V and O never swap roles
    assert (
        partial_decoration(supercell, elements={"V", "O"}, settings=SubstitutionSettings(), rng=rng) is None
    )


def test_peroxides_are_decorated_like_any_ab_compound():
    # pymatgen keeps peroxides whole (reduced formula Na2O2, factor 1), so matching anonymous formulas by that
    # reduction missed every AB structure type for them; the formula unit is Na1 O1
    assert dict(decoration_map("NaS", "Na2O2")[1]) == {"Na": "Na", "S": "O"}
    assert dict(decoration_map("Li2O2", "Na2O2")[1]) == {"Li": "Na", "O": "O"}
    held = Withholding(compounds_in=(frozenset({"Na", "O"}),))
    found = prototype_decorations(weights={"Na2O2": 1.0}, max_sites=12, withhold=held)
    prototypes = {d.prototype for d in found}
    assert (
        "AB:189:12:eh_fg" in prototypes
    )  # the P-62m type of Na2O2 itself, from NaS, KS, ... (withheld here)
    child = next(decorated_candidates([d for d in found if d.prototype == "AB:189:12:eh_fg"]))
    assert child.structure.composition.reduced_formula == "Na2O2" and len(child.structure) == 12


def test_two_structure_types_of_one_space_group_and_cell_size_are_both_decorated():
    """TiO2-B (mp-554278) and the other C2/m VO2 (mp-1100908) are both AB2 in C2/m with 12 atoms; only their
    Wyckoff sites tell the types apart. Keyed without them, the two were one prototype represented by mp-1100908,
    so no Ti-O campaign ever decorated TiO2-B's type (VO2-B, mp-541404)."""
    table = seed_table().set_index("material_id")
    tio2_b, vo2_b, other = (table.loc[m, "prototype"] for m in ("mp-554278", "mp-541404", "mp-1100908"))
    assert tio2_b == vo2_b != other
    assert tio2_b.startswith("AB2:12:12:") and other.startswith("AB2:12:12:")
    held = Withholding(compounds_in=(frozenset({"Ti", "O"}),))
    found = prototype_decorations(weights={"TiO2": 1.0}, max_sites=12, withhold=held)
    assert {d.prototype for d in found} >= {tio2_b, other}
    child = next(decorated_candidates([d for d in found if d.prototype == tio2_b]))
    target = Structure.from_str(table.loc["mp-554278", "cif"], fmt="cif")
    assert child.structure.composition.reduced_formula == "TiO2"
    assert StructureMatcher().fit(child.structure, target)  # the withheld phase, offered in its own type
