"""Dynamical stability: rock-salt NaCl passes, cubic BaTiO3 (the parent of the ferroelectric phases) fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from loop.design.dynamical import DynamicalResult, dynamical_stability
from loop.design.requirements import Status
from loop.errors import InputError

ROOT = Path(__file__).resolve().parents[3]


def test_rock_salt_is_dynamically_stable():
    nacl = Structure.from_file(ROOT / "configs" / "structures" / "NaCl_mp-22862.cif")
    result = dynamical_stability(structure=nacl, min_length=8.0, mesh=(6, 6, 6))
    assert result.status is Status.PASS
    assert result.n_imaginary == 0 and result.min_frequency > 0
    assert "no imaginary modes" in result.reason
    assert DynamicalResult.from_dict(json.loads(json.dumps(result.to_dict()))).to_dict() == result.to_dict()


def test_cubic_barium_titanate_is_dynamically_unstable():
    cubic = Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(4.0), ["Ba", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )
    result = dynamical_stability(structure=cubic, min_length=7.0, mesh=(4, 4, 4))
    assert result.status is Status.FAIL
    assert result.n_imaginary > 0 and result.min_frequency < -1.0
    assert "below -0.1 THz" in result.reason


def test_negative_tolerance_is_refused():
    with pytest.raises(InputError, match="tolerance must be >= 0"):
        dynamical_stability(structure=Structure(Lattice.cubic(3.0), ["Si"], [[0, 0, 0]]), tolerance=-1.0)
