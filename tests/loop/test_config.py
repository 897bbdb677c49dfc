from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loop.config import load_config
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
