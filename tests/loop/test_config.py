from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loop.config import load_config, validate_config
from loop.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    config = load_config(path)
    assert config.chemical_systems and config.oracle.kind and config.emulator.kind


def test_default_config_spells_out_every_section():
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    for section in ("generator", "emulator", "oracle", "acquisition", "tracking", "execution", "stop"):
        assert section in data


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: x\nchemical_systems: [Cu-Au]\noracle: {kind: gpaw, cutof: 400}\n",
            "oracle.cutof: unknown key",
        ),
        ("name: x\nchemical_systems: [Cu-Au]\noracle: {kind: gpaw, cutoff: lots}\n", "oracle.cutoff"),
        ("name: x\nchemical_systems: [Cu-Au]\nacquisition: {budget: -1}\n", "acquisition.budget"),
        (
            "name: x\nchemical_systems: [Cu-Au]\nacquisition: {strategy: magic}\n",
            "unknown acquisition strategy",
        ),
        ("name: x\nchemical_systems: [Cu-Xx]\n", "unknown element 'Xx'"),
        ("name: x\nchemical_systems: [Cu-Au]\ngenerator: {mix: {gan: 3}}\n", "unknown generator"),
        ("name: x\nchemical_systems: [Cu-Au]\nexecution: {kind: scheduler}\n", "scheduler_address"),
        (
            "name: x\nchemical_systems: [Cu-Au]\nemulator: {kind: chgnet_ensemble, n_members: 1}\n",
            "emulator.n_members",
        ),
        ("name: x\nchemical_systems: [Cu-Au]\nbogus: 1\n", "bogus: unknown key"),
        ("chemical_systems: [Cu-Au]\n", "name: Field required"),
        ("name: x\nchemical_systems: [Cu-Au\n", "invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_configs_give_one_line_with_the_key_path(tmp_path, text, message):
    with pytest.raises(InputError) as err:
        load_config(_write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("withhold", "message"),
    [
        ("[Al]", "withhold: Al is an element"),
        ("[mp-134]", "withhold: mp-134 is an element"),  # fcc Al
        ("[mp-999999999]", "withhold: mp-999999999 is not a bundled material id"),
        ("[NaCl]", "withhold: NaCl lies outside the chemical systems"),
        ("[all-compounds]", "is neither a material id"),
    ],
)
def test_bad_withhold_gives_one_line(tmp_path, withhold, message):
    with pytest.raises(InputError) as err:
        load_config(_write(tmp_path, f"name: x\nchemical_systems: [Li-Al]\nwithhold: {withhold}\n"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_withhold_and_stability_rule(tmp_path):
    config = load_config(
        _write(
            tmp_path,
            "name: x\nchemical_systems: [Li-Al]\nnear_stable: 0.02\nwithhold: [mp-16506, AlLi, all_compounds]\n",
        )
    )
    held = config.withholding
    assert held.ids == {"mp-16506"} and held.formulas == {"LiAl"}
    assert held.compounds_in == (frozenset({"Li", "Al"}),)
    assert config.stability_rule.near_stable == 0.02 and config.stability_rule.is_hit(0.02)
    assert not load_config(_write(tmp_path, "name: x\nchemical_systems: [Li-Al]\n")).withholding


def test_old_acquisition_threshold_is_refused_with_the_fix(tmp_path):
    with pytest.raises(InputError) as err:
        load_config(
            _write(tmp_path, "name: x\nchemical_systems: [Li-Al]\nacquisition: {stability_threshold: 0.1}\n")
        )
    text = str(err.value)
    assert "acquisition" in text and "stability_threshold was removed" in text and "near_stable" in text


def _generator_config(section):
    return validate_config({"name": "g", "chemical_systems": ["Li-Al"], "generator": section})


def test_generator_sections_are_a_union_told_apart_by_name():
    from generator.base import generator_names, get_generator_class

    config = _generator_config({"diffusion": {"steps": 60}, "substitution": {"max_candidates_per_parent": 2}})
    gen = config.generator
    assert gen.diffusion.steps == 60 and gen.substitution.max_candidates_per_parent == 2
    for name in generator_names():  # every registered generator has settings, its defaults when left out
        assert isinstance(gen.settings_for(name), get_generator_class(name).Settings)
    dumped = config.model_dump(mode="json")["generator"]
    assert dumped["diffusion"]["steps"] == 60 and "settings" not in dumped  # the YAML's shape, for tracking
    assert _generator_config(dumped).generator == gen


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"diffusion": {"steps": 1}},
            "config: generator.diffusion.steps: Input should be greater than or equal to 2",
        ),
        ({"diffusion": {"stepz": 3}}, "config: generator.diffusion.stepz: unknown key"),
        ({"mix": {"gan": 3}}, "config: generator.mix: Value error, unknown generator(s) ['gan']"),
        ({"gan": {}}, "config: generator.gan: unknown key"),
    ],
)
def test_generator_section_errors_name_the_key(section, message):
    with pytest.raises(InputError) as info:
        _generator_config(section)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_the_emulator_learns_the_oracles_energy_convention():
    """An uncorrected oracle (GPAW, SevenNet-0) gets an emulator that starts its O offsets at MP2020's corrections;
    the toy EMT does not; a value the user wrote stands."""
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert validate_config(data).emulator.convention_prior is True
    assert validate_config({**data, "oracle": {"kind": "mlff"}}).emulator.convention_prior is True
    assert validate_config({**data, "oracle": {"kind": "emt"}}).emulator.convention_prior is False
    mine = {**data, "emulator": {**data["emulator"], "convention_prior": False}}
    assert validate_config(mine).emulator.convention_prior is False
