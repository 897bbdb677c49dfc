"""Molecular dynamics with the shipped CHGNet: a real (short) NVT run of a small crystal."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from emulator import EmulatorError
from emulator.dynamics import MDTrajectory, run_md
from emulator.force_field import smallest_supercell


def _li2o() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.62), ["Li", "O"], [[0.25] * 3, [0, 0, 0]])


@pytest.fixture(scope="module")
def run() -> MDTrajectory:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_md(
            structure=_li2o(),
            temperature=500.0,
            duration=0.1,
            equilibration=0.1,
            min_length=5.0,
            frame_interval=5,
            seed=3,
        )


def test_supercell_is_the_smallest_wide_enough_cell():
    cell, repeats = smallest_supercell(_li2o(), min_length=5.0)
    supercell = cell * repeats
    assert len(supercell) == 24  # the 3-atom primitive cell, 2x2x2: not the 12-atom conventional one
    m = supercell.lattice.matrix
    heights = [supercell.volume / np.linalg.norm(np.cross(m[(i + 1) % 3], m[(i + 2) % 3])) for i in range(3)]
    assert min(heights) >= 5.0
    assert min(supercell.lattice.abc) >= 5.0


def test_nvt_run_thermalises_and_keeps_the_crystal(run):
    assert run.positions.shape == (11, 24, 3)
    assert run.frame_time == pytest.approx(0.01)
    assert run.duration == pytest.approx(0.1)
    # Bussi thermostat: the kinetic temperature of 24 atoms fluctuates by ~20 % per frame around the target
    assert 300.0 < run.mean_temperature < 700.0
    # a solid at 500 K: atoms rattle about their sites (tenths of an Å), nothing hops across the cell
    step = np.linalg.norm(np.diff(run.positions, axis=0), axis=-1)
    assert step.max() < 0.5  # unwrapped: no jump of a lattice vector between frames
    displacement = np.linalg.norm(run.displacements()[:, -1], axis=-1)
    assert 0.01 < displacement.mean() < 0.6
    assert run.final.composition == run.structure.composition


def test_trajectory_round_trips_through_json(run):
    back = MDTrajectory.from_dict(json.loads(json.dumps(run.to_dict())))
    assert np.abs(back.positions - run.positions).max() < 1e-5
    assert back.structure == run.structure
    assert (back.temperature, back.seed, back.supercell) == (run.temperature, run.seed, run.supercell)
    np.testing.assert_allclose(back.frac_coords, run.frac_coords, atol=1e-5)


def test_same_seed_same_run():
    kwargs = {
        "structure": _li2o(),
        "temperature": 300.0,
        "duration": 0.01,
        "equilibration": 0.0,
        "min_length": 5.0,
    }
    a, b = run_md(**kwargs, seed=1), run_md(**kwargs, seed=1)
    c = run_md(**kwargs, seed=2)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert np.abs(a.positions[-1] - c.positions[-1]).max() > 1e-4


def test_bad_settings_are_refused():
    with pytest.raises(EmulatorError, match="temperature > 0"):
        run_md(structure=_li2o(), temperature=-5.0, duration=0.1)
    with pytest.raises(EmulatorError, match="min_length"):
        run_md(structure=_li2o(), temperature=300.0, duration=0.1, min_length=0.0)
