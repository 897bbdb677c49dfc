"""Ionic conductivity: the diffusion analysis on random walks of known D (exact answers), and real MD runs."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from scipy import constants

from emulator.dynamics import MDTrajectory
from loop.design.conductivity import ConductivityResult, conductivity_from_trajectories, ionic_conductivity
from loop.design.md_runs import MDSettings
from loop.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
EA = 0.30  # eV
D_1000 = 5e-5  # cm²/s (600 K: 5e-6, an MSD of ~1.8 Å² in 6 ps)


def _true_d(temperature: float) -> float:
    return D_1000 * math.exp(-EA / (constants.k / constants.e) * (1 / temperature - 1 / 1000.0))


def _cell() -> Structure:
    """Li2O, 4x4x4 primitive cells: 128 Li, 64 O."""
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.62), ["Li", "O"], [[0.25] * 3, [0, 0, 0]])
    return li2o.get_primitive_structure() * (4, 4, 4)


def _random_walk(
    temperature: float, *, seed: int, frames: int = 301, frame_time: float = 0.02
) -> MDTrajectory:
    """Li random walk with D(T) of an Arrhenius law; O vibrating about its sites."""
    rng = np.random.default_rng(seed)
    structure = _cell()
    li = np.array([s.specie.symbol == "Li" for s in structure])
    d_a2_ps = _true_d(temperature) * 1e16 / 1e12  # cm²/s -> Å²/ps
    steps = rng.normal(scale=math.sqrt(2 * d_a2_ps * frame_time), size=(frames - 1, int(li.sum()), 3))
    positions = np.repeat(structure.cart_coords[None], frames, axis=0)
    positions[1:, li] += np.cumsum(steps, axis=0)
    positions[:, ~li] += rng.normal(scale=0.05, size=(frames, int((~li).sum()), 3))
    positions[0] = structure.cart_coords
    return MDTrajectory(
        structure=structure,
        positions=positions,
        frame_time=frame_time,
        timestep=2.0,
        frame_interval=10,
        temperature=temperature,
        mean_temperature=temperature,
        equilibration=0.0,
        seed=seed,
        supercell=(4, 4, 4),
    )


@pytest.fixture(scope="module")
def walks() -> ConductivityResult:
    runs = [_random_walk(t, seed=i) for i, t in enumerate((1000.0, 600.0, 800.0))]
    return conductivity_from_trajectories(trajectories=runs, specie="Li")


def test_diffusivity_and_activation_energy_of_known_random_walks(walks):
    assert walks.temperatures == (600.0, 800.0, 1000.0)
    assert all(walks.resolved) and walks.smoothing == ("max", "max", "max")
    for t, d in zip(walks.temperatures, walks.diffusivity, strict=True):
        assert d == pytest.approx(_true_d(t), rel=0.25)
    assert walks.extrapolated
    assert walks.activation_energy == pytest.approx(EA, abs=0.06)
    assert 0 < walks.activation_energy_std < 0.1


def test_nernst_einstein_and_the_300k_interval(walks):
    structure = _cell()
    n_per_cm3 = 128 / (structure.volume * 1e-24)

    def sigma(d: float, t: float) -> float:  # mS/cm, charge +1, Haven ratio 1
        return 1000 * n_per_cm3 * constants.e**2 * d / (constants.k * t)

    for t, d, s in zip(walks.temperatures, walks.diffusivity, walks.conductivity, strict=True):
        assert s == pytest.approx(sigma(d, t), rel=1e-6)
    true_300 = sigma(_true_d(300.0), 300.0)
    assert walks.conductivity_300k_low < true_300 < walks.conductivity_300k_high
    assert walks.conductivity_300k_low < walks.conductivity_300k < walks.conductivity_300k_high


def test_fewer_than_three_temperatures_leave_300k_unknown():
    result = conductivity_from_trajectories(
        trajectories=[_random_walk(t, seed=1) for t in (800.0, 1000.0)], specie="Li"
    )
    assert result.conductivity_300k is None and not result.extrapolated
    assert result.diffusivity[-1] == pytest.approx(_true_d(1000.0), rel=0.25)
    assert "300 K value unknown" in result.note


def test_diffusivity_falling_with_temperature_is_not_extrapolated():
    # the 1000 K walk run as if at 600 K and vice versa: D falls with T, an Arrhenius law cannot hold
    runs = [_random_walk(t, seed=i) for i, t in enumerate((600.0, 800.0, 1000.0))]
    swapped = [
        dataclasses.replace(run, temperature=t) for run, t in zip(runs, (1000.0, 800.0, 600.0), strict=True)
    ]
    result = conductivity_from_trajectories(trajectories=swapped, specie="Li")
    assert all(result.resolved)
    assert result.activation_energy < 0
    assert result.conductivity_300k is None and not result.extrapolated
    assert "does not rise with temperature" in result.note


def test_result_round_trips_through_json(walks):
    assert ConductivityResult.from_dict(json.loads(json.dumps(walks.to_dict()))) == walks


def test_bad_input_is_refused():
    run = _random_walk(1000.0, seed=0)
    with pytest.raises(InputError, match="two MD runs at one temperature"):
        conductivity_from_trajectories(trajectories=[run, run])
    with pytest.raises(InputError, match="Na is not in"):
        conductivity_from_trajectories(trajectories=[run], specie="Na")
    with pytest.raises(InputError, match="positive MD temperatures"):
        ionic_conductivity(structure=_cell(), temperatures=[], duration=1.0)


def test_lithium_oxide_shows_no_diffusion_in_short_md():
    """Real MD (shipped CHGNet): Li2O, a poor Li conductor, shows no Li hop in 0.1 ps at 800-1200 K."""
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.62), ["Li", "O"], [[0.25] * 3, [0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ionic_conductivity(
            structure=li2o,
            temperatures=[800, 1000, 1200],
            duration=0.1,
            md=MDSettings(equilibration=0.05, min_length=5.0, frame_interval=2),
        )
    assert result.n_atoms == 24 and result.n_mobile == 16
    assert not any(result.resolved)
    assert max(result.msd) < 0.5  # Å²: vibrations only
    assert result.conductivity_300k is None and not result.extrapolated
    assert "below the MD's detection limit" in result.note


@pytest.mark.slow
def test_fast_conductor_shows_lithium_hops_in_short_md():
    """Real MD (shipped CHGNet): Li7P3S11 (bundled mp-641703), a 17 mS/cm conductor, moves Li by hops at 1200 K."""
    frame = pd.read_csv(
        ROOT / "generator" / "data" / "mpts_52" / "test.csv.gz", usecols=["material_id", "cif"]
    )
    cif = frame.loc[frame["material_id"] == "mp-641703", "cif"].iloc[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(cif, fmt="cif")
        result = ionic_conductivity(
            structure=structure,
            temperatures=[1200],
            duration=0.3,
            md=MDSettings(equilibration=0.1, min_length=5.0, frame_interval=2),
        )
    assert result.n_atoms == 42
    assert result.resolved == (True,)
    assert result.msd[0] > 2.0  # Å² in 0.3 ps: hops (Li2O's vibrations above stay below 0.5 Å²)
    assert result.diffusivity[0] > 1e-5  # cm²/s
    assert result.conductivity_300k is None and "300 K value unknown" in result.note
