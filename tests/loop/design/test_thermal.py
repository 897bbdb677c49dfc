"""Thermal stability: the Lindemann ratio on known motions, and a real MD + quench of a stable crystal."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from emulator.dynamics import MDTrajectory
from generator.base import GenerationContext
from generator.random_search import RandomSearchGenerator, RandomSearchSettings
from loop.design.md_runs import MDSettings
from loop.design.requirements import Status
from loop.design.thermal import LINDEMANN_MAX, ThermalResult, lindemann_ratio, thermal_stability
from loop.errors import InputError


def _li2o() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.62), ["Li", "O"], [[0.25] * 3, [0, 0, 0]])


def _trajectory(*, o_step: float, li_step: float, seed: int = 0, frames: int = 200) -> MDTrajectory:
    """O atoms vibrating (o_step = 0) or random-walking, Li random-walking by li_step Å per frame."""
    rng = np.random.default_rng(seed)
    structure = _li2o().get_primitive_structure() * (3, 3, 3)
    li = np.array([s.specie.symbol == "Li" for s in structure])
    positions = np.repeat(structure.cart_coords[None], frames, axis=0)
    positions[:, ~li] += rng.normal(scale=0.1, size=(frames, int((~li).sum()), 3))
    walk = lambda n, step: np.cumsum(rng.normal(scale=step, size=(frames, n, 3)), axis=0)  # noqa: E731
    positions[:, li] += walk(int(li.sum()), li_step)
    positions[:, ~li] += walk(int((~li).sum()), o_step)
    return MDTrajectory(
        structure=structure,
        positions=positions,
        frame_time=0.01,
        timestep=2.0,
        frame_interval=5,
        temperature=1000.0,
        mean_temperature=1000.0,
        equilibration=0.0,
        seed=seed,
        supercell=(3, 3, 3),
    )


def test_lindemann_ratio_tells_a_diffusing_sublattice_from_a_molten_framework():
    fast_conductor = _trajectory(o_step=0.0, li_step=0.3)
    molten = _trajectory(o_step=0.3, li_step=0.3)
    # O vibrates by 0.1 Å per axis: 3D RMS 0.17 Å over an O-O distance of 3.27 Å
    assert lindemann_ratio(trajectory=fast_conductor, mobile_species=["Li"]) == pytest.approx(0.053, abs=0.01)
    assert lindemann_ratio(trajectory=fast_conductor, mobile_species=["Li"]) < LINDEMANN_MAX
    assert lindemann_ratio(trajectory=molten, mobile_species=["Li"]) > LINDEMANN_MAX
    # with Li counted as framework the fast conductor would look molten: why the caller names its mobile species
    assert lindemann_ratio(trajectory=fast_conductor) > LINDEMANN_MAX


def test_stable_crystal_is_retained_after_md_and_quench():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = thermal_stability(
            structure=_li2o(),
            temperature=600.0,
            duration=0.2,
            md=MDSettings(equilibration=0.05, min_length=5.0),
            mobile_species=["Li"],
        )
    assert result.status is Status.PASS and result.retained
    assert result.matched and result.rms_distance < 0.1
    assert isinstance(result.whole_cell_matched, bool)
    assert result.lindemann_ratio < 0.1
    assert abs(result.energy_change) < 0.01
    assert result.n_atoms == 24
    assert "retained" in result.reason
    assert ThermalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_bad_settings_are_refused():
    with pytest.raises(InputError, match="temperature > 0"):
        thermal_stability(structure=_li2o(), temperature=0.0, duration=1.0)


@pytest.mark.slow
def test_high_energy_random_structure_is_not_retained():
    """Real MD (shipped CHGNet): a random LiAlO2 crystal ~0.26 eV/atom above γ-LiAlO2 does not survive 1000 K."""
    generator = RandomSearchGenerator(settings=RandomSearchSettings(formulas=["LiAlO2"], max_atoms=8))
    random = generator.generate(n=1, context=GenerationContext(), seed=0)[0].structure
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = thermal_stability(
            structure=random,
            temperature=1000.0,
            duration=0.3,
            md=MDSettings(equilibration=0.1, min_length=5.0),
            mobile_species=["Li"],
        )
    assert result.status is Status.FAIL and not result.retained
    assert result.matched is False or result.lindemann_ratio > LINDEMANN_MAX
