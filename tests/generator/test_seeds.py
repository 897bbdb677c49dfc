"""The bundled mp_20 seed loader."""

from __future__ import annotations

import pytest
from pymatgen.core import Composition, Structure

from generator.seeds import SeedDataError, load_seeds, seed_table


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
    return load_seeds(splits=["train"], limit=200, seed=2)


def test_substitution_parents_closest_first():
    parents = load_seeds(chemical_systems=["Li-Fe-P-O"], max_foreign_elements=1, limit=60)
    target = {"Li", "Fe", "P", "O"}
    foreign = [len(elements_of(k) - target) for k in parents]
    assert foreign == sorted(foreign) and foreign[0] == 0 and foreign[-1] == 1
    assert all(len(elements_of(k)) <= 4 for k in parents)


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
