"""Phonons with the shipped CHGNet: diamond Si is dynamically stable, cubic BaTiO3 is not (its polar Γ mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from emulator import EmulatorError
from emulator.phonons import PhononResult, phonon_spectrum

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def silicon() -> PhononResult:
    return phonon_spectrum(
        structure=Structure.from_file(ROOT / "configs" / "structures" / "Si_mp-149.cif"),
        min_length=8.0,
        mesh=(6, 6, 6),
    )


def test_silicon_has_no_imaginary_modes(silicon):
    assert silicon.relaxed and silicon.relax_converged
    assert silicon.n_imaginary == 0
    assert silicon.min_frequency > 0
    # the three acoustic modes at Γ are zero, the optical triplet is degenerate (15.5 THz measured; PBE-trained
    # potentials are softer)
    assert silicon.acoustic_gamma_max < 0.05
    optical = silicon.gamma_frequencies[3:]
    assert max(optical) - min(optical) < 0.05
    assert 11.0 < optical[0] < 16.5


def test_cubic_barium_titanate_has_the_ferroelectric_instability():
    cubic = Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(4.0), ["Ba", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )
    result = phonon_spectrum(structure=cubic, min_length=7.0, mesh=(4, 4, 4))
    assert result.n_imaginary > 0
    assert result.min_frequency < -1.0
    # the soft polar mode at Γ: a triply degenerate imaginary optical mode
    assert result.min_frequency_q == (0.0, 0.0, 0.0)
    assert sum(f < -1.0 for f in result.gamma_frequencies) == 3


def test_result_round_trips_through_json(silicon):
    back = PhononResult.from_dict(json.loads(json.dumps(silicon.to_dict())))
    assert back.to_dict() == silicon.to_dict()


def test_bad_settings_are_refused(silicon):
    with pytest.raises(EmulatorError, match="displacement > 0"):
        phonon_spectrum(structure=silicon.structure, displacement=0.0)
