"""The package surface: registry, lazy imports, settings models for the campaign config."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated, Union

import pytest
from pydantic import BaseModel, Field, ValidationError

import oracle
from oracle import get_oracle_class, make_oracle, oracle_names, settings_models


def test_every_oracle_is_registered_by_name():
    assert oracle_names() == ["cp2k", "emt", "espresso", "gpaw", "mlff", "vasp"]
    for name in oracle_names():
        cls = get_oracle_class(name)
        assert cls.name == name
        assert make_oracle(cls.Settings()).settings.kind == name
    assert get_oracle_class("emt").is_dft is False and get_oracle_class("gpaw").is_dft is True
    with pytest.raises(KeyError, match="unknown oracle 'castep'"):
        get_oracle_class("castep")


def test_import_does_not_load_calculator_codes():
    code = (
        "import sys, oracle; print(sorted(m for m in ('gpaw', 'ase.calculators.cp2k') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_settings_models_form_a_discriminated_union():
    union = Annotated[Union[settings_models()], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007

    class Config(BaseModel):
        oracle: union  # type: ignore[valid-type]

    parsed = Config.model_validate({"oracle": {"kind": "gpaw", "cutoff": 500, "mpi_ranks": 2}})
    assert isinstance(parsed.oracle, oracle.GPAWSettings) and parsed.oracle.cutoff == 500
    with pytest.raises(ValidationError):
        Config.model_validate({"oracle": {"kind": "gpaw", "cutof": 500}})
