"""Condition parsing and validation: good requests parse, bad ones raise a one-line GeneratorError."""

from __future__ import annotations

import pytest

from generator.base import GeneratorError
from generator.diffusion import parse_conditions, sample_structures, validate_conditions
from generator.diffusion.conditions import encode_batch


def test_parse_key_value_and_ranges():
    parsed = parse_conditions(["band_gap=1.5:3.0", "chemical_system=Li-Fe-O", "space_group=225", "hhi=1500"])
    assert parsed == {
        "band_gap": "1.5:3.0",
        "chemical_system": "Li-Fe-O",
        "space_group": "225",
        "hhi": "1500",
    }
    conds = validate_conditions(parsed)
    assert (conds["band_gap"].low, conds["band_gap"].high) == (1.5, 3.0)
    assert conds["chemical_system"].elements == (3, 8, 26)
    assert conds["space_group"].value == 225
    assert conds["hhi"].value == 1500
    # tuples from a GenerationContext and aliases are accepted too
    conds = validate_conditions({"e_hull": (0.0, 0.05), "chemsys": ["Na", "Cl"]})
    assert conds["e_above_hull"].high == 0.05 and conds["chemical_system"].elements == (11, 17)


def test_ranges_draw_targets_inside_the_range():
    conds = validate_conditions({"band_gap": "1.5:3.0", "space_group": "62"})
    enc = encode_batch(conds, 500)
    values, present = enc["band_gap"]
    assert present.all() and values.min() >= 1.5 and values.max() <= 3.0 and values.std() > 0.3
    assert (enc["space_group"][0] == 62).all()


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"colour": "red"}, "unknown property"),
        ({"chemical_system": "Li-Xx-O"}, "unknown element 'Xx'"),
        ({"chemical_system": "Li-Li"}, "repeats"),
        ({"band_gap": "3:1"}, "low > high"),
        ({"band_gap": "12:15"}, "impossible"),
        ({"band_gap": "-2"}, "impossible"),
        ({"band_gap": "wide"}, "not a number"),
        ({"e_above_hull": "nan"}, "not a finite number"),
        ({"space_group": "231"}, "1-230"),
        ({"space_group": "Fm-3m"}, "1-230"),
        ({"magnetic_density": "0.5:0.9"}, "impossible"),
        ({"bulk_modulus": "-100:-1"}, "impossible"),
    ],
)
def test_bad_conditions_are_rejected_with_one_line(conditions, message):
    with pytest.raises(GeneratorError, match=message) as info:
        validate_conditions(conditions)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["band_gap", "=3", "band_gap="])
def test_malformed_strings_are_rejected(text):
    with pytest.raises(GeneratorError, match="KEY=VALUE"):
        parse_conditions([text])


def test_repeated_key_is_rejected():
    with pytest.raises(GeneratorError, match="twice"):
        parse_conditions(["hhi=100", "hhi=200"])


def test_sample_structures_validates_before_sampling(tmp_path):
    with pytest.raises(GeneratorError, match="unknown property"):
        sample_structures(n=2, conditions={"density": "3"})
    with pytest.raises(GeneratorError, match="not found"):
        sample_structures(n=2, conditions={}, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(GeneratorError, match="too small"):
        sample_structures(n=2, conditions={"chemical_system": "Li-Fe-P-O"}, num_atoms=3)
    with pytest.raises(GeneratorError, match="outside 1-20"):
        sample_structures(n=2, conditions={}, num_atoms=40)
