"""The bundled known crystals (mp_20 + mpts_52), their index, withholding and ASE's elemental reference states."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ase import data as ase_data
from ase.build import bulk
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generator.prototypes import structure_prototype, without_sites
from generator.seeds import (
    DATA_ROOT,
    SPLITS,
    SeedDataError,
    Withholding,
    bundled_formulas,
    load_seeds,
    reference_state,
    reference_states,
    seed_table,
)


def elements_of(known) -> set[str]:
    return {el.symbol for el in known.structure.composition.elements}


def test_chemical_system_filter_and_properties():
    seeds = load_seeds(chemical_systems=["Li-Fe-P-O"])
    assert len(seeds) >= 20
    assert all(elements_of(k) <= {"Li", "Fe", "P", "O"} for k in seeds)
    assert any(elements_of(k) == {"Li", "Fe", "P", "O"} for k in seeds)
    table = seed_table().set_index("material_id")
    for k in seeds:
        row = table.loc[k.id]
        assert isinstance(k.structure, Structure) and k.id.startswith("mp-")
        assert k.properties["spacegroup"] == row["spacegroup.number"]
        assert k.structure.composition.reduced_formula == Composition(row["pretty_formula"]).reduced_formula
        if "band_gap" in k.properties:
            assert k.properties["band_gap"] == pytest.approx(row["band_gap"])
    assert any("formation_energy_per_atom" in k.properties for k in seed_properties_sample())


def seed_properties_sample():
    return load_seeds(splits=["mp_20/train"], limit=200, seed=2)


def test_both_data_sets_are_bundled_once_per_material():
    table = seed_table()
    assert set(table["split"]) == set(SPLITS)
    assert table["material_id"].is_unique
    raw = sum(len(pd.read_csv(DATA_ROOT / f"{s}.csv.gz", usecols=["material_id"])) for s in SPLITS)
    assert len(table) < raw  # materials present in mp_20 and mpts_52 are kept once
    # mpts_52 completes the Li-Al system: two more LiAl polymorphs and fcc Al (audit of the demo)
    lial = load_seeds(chemical_systems=["Li-Al"])
    by_formula = {}
    for k in lial:
        by_formula.setdefault(k.structure.composition.reduced_formula, set()).add(k.properties["spacegroup"])
    assert {194, 64} <= by_formula["LiAl"]
    assert 225 in by_formula["Al"]


def test_index_matches_the_structures():
    """The shipped index (reduced formula, anonymous formula, cell size, prototype) agrees with the parsed CIFs."""
    table = seed_table()
    sample = table.sample(150, random_state=3)
    for known in load_seeds(ids=sample["material_id"]):
        row = table.set_index("material_id").loc[known.id]
        comp = known.structure.composition
        assert row["reduced_formula"] == comp.reduced_formula
        assert row["anonymous_formula"] == comp.anonymized_formula
        assert row["n_sites"] == len(known.structure)
        key = structure_prototype(known.structure)
        # the crystal's own key, or that of its type in another setting (joined by the index)
        assert row["prototype"] == key or without_sites(row["prototype"]) == without_sites(key)
    assert bundled_formulas()["mp-134"] == "Al"


def test_withholding_hides_ids_formulas_and_all_compounds():
    plain = load_seeds(chemical_systems=["Li-Al"])
    ids = {k.id for k in plain}
    by_id = Withholding(ids=frozenset({"mp-16506"}))
    assert "mp-16506" in ids and "mp-16506" not in {
        k.id for k in load_seeds(chemical_systems=["Li-Al"], withhold=by_id)
    }
    by_formula = load_seeds(chemical_systems=["Li-Al"], withhold=Withholding(formulas=frozenset({"LiAl"})))
    assert "LiAl" not in {k.structure.composition.reduced_formula for k in by_formula}
    assert len(by_formula) == len(plain) - sum(
        k.structure.composition.reduced_formula == "LiAl" for k in plain
    )
    everything = Withholding(compounds_in=(frozenset({"Li", "Al"}),))
    left = load_seeds(chemical_systems=["Li-Al"], withhold=everything)
    assert left and all(len(elements_of(k)) == 1 for k in left)  # elements are never withheld
    # compounds of other systems stay (e.g. substitution parents)
    assert load_seeds(chemical_systems=["Li-In"], min_elements=2, withhold=everything)
    assert everything.covers(material_id="x", reduced_formula="Li3Al2", elements={"Li", "Al"})
    assert not everything.covers(material_id="x", reduced_formula="LiIn", elements={"Li", "In"})
    assert not Withholding()


def _ase_buildable():
    for z, state in enumerate(ase_data.reference_states):
        if not state or state.get("symmetry") not in {
            "fcc",
            "bcc",
            "hcp",
            "diamond",
            "sc",
            "bct",
            "rhombohedral",
        }:
            continue
        symbol = ase_data.chemical_symbols[z]
        try:
            yield symbol, bulk(symbol)
        except Exception:  # ASE itself builds no crystal for this element
            continue


def test_reference_states_match_ase_bulk():
    """Every elemental crystal ASE can build is reproduced (same structure and volume) without ASE Atoms."""
    matcher = StructureMatcher(primitive_cell=True, scale=False, ltol=0.01, stol=0.01, angle_tol=0.5)
    n = 0
    for symbol, atoms in _ase_buildable():
        known = reference_state(symbol)
        assert known is not None, symbol
        ours = known.structure
        theirs = AseAtomsAdaptor.get_structure(atoms)
        assert len(ours) == len(theirs), symbol
        assert ours.volume == pytest.approx(theirs.volume, rel=1e-6), symbol  # same lattice constants
        assert matcher.fit(ours, theirs), symbol
        n += 1
    assert n >= 60
    li, al = (reference_state(e) for e in ("Li", "Al"))
    assert li.id == "ase-ref:Li-bcc" and SpacegroupAnalyzer(li.structure).get_space_group_number() == 229
    assert al.id == "ase-ref:Al-fcc" and SpacegroupAnalyzer(al.structure).get_space_group_number() == 225
    assert al.structure.lattice.a == pytest.approx(4.05 / np.sqrt(2))
    assert reference_state("O") is None  # a molecule, no crystal
    assert [k.id for k in reference_states(["H", "Cu"])] == ["ase-ref:Cu-fcc"]


def test_elements_limit_and_reproducible_order():
    a = load_seeds(elements=["Na", "Cl", "K", "Br"], limit=5, seed=1)
    b = load_seeds(elements=["Na", "Cl", "K", "Br"], limit=5, seed=1)
    c = load_seeds(elements=["Na", "Cl", "K", "Br"], seed=2)
    assert [k.id for k in a] == [k.id for k in b] and len(a) == 5
    assert all(elements_of(k) <= {"Na", "Cl", "K", "Br"} for k in c) and len(c) > 5
    assert [k.id for k in c[:5]] != [k.id for k in a]
    without = load_seeds(elements=["Na", "Cl", "K", "Br"], exclude_ids=[a[0].id])
    assert a[0].id not in {k.id for k in without} and len(without) == len(c) - 1


def test_bad_requests_raise_seed_data_error():
    with pytest.raises(SeedDataError, match="unknown element"):
        load_seeds(chemical_systems=["Li-Xx"])
    with pytest.raises(SeedDataError, match="split"):
        load_seeds(splits=["test"])
    with pytest.raises(SeedDataError, match="limit"):
        load_seeds(limit=-1)
    with pytest.raises(SeedDataError, match="unknown element"):
        reference_state("Zz")


def test_one_structure_type_described_in_two_settings_is_one_prototype():
    """CrB4 and MnB4 (Pnnm) share a type, but spglib puts the metal on 2a in one and on 2b in the other; the shipped
    index joins the two descriptions, so substitution offers the type once."""
    table = seed_table().set_index("material_id")
    raw = {m: structure_prototype(load_seeds(ids=[m])[0].structure) for m in ("mp-1078278", "mp-1078253")}
    assert raw == {"mp-1078278": "AB4:58:10:a_gg", "mp-1078253": "AB4:58:10:b_gg"}
    assert table.loc["mp-1078278", "prototype"] == table.loc["mp-1078253", "prototype"] == "AB4:58:10:a_gg"
