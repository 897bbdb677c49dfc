"""One `SamplingOptions` object from config to sampler, and sampling unchanged by that restructuring.

`data/sampling_reference.json` holds crystals sampled from the shipped checkpoint by the code before the
restructuring (each field's settings threaded by hand, reverse steps inlined in the sampler), for four requests
that exercise every option; the same requests must give the same crystals now.

The sampler runs in float32, and a new numpy or scipy build moves the last bits of a lattice (measured: 5 float32
ulps, 2.4e-6 Å, after a dependency update with the same torch). The tolerances are 1e-5 (fractional) and 1e-5 Å:
far above that noise, far below any change a restructuring could make to a reverse step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from generator.diffusion import DiffusionSettings, sample_structures
from generator.diffusion.sampler import SamplingOptions

FRAC_TOL = 1e-5
LATTICE_TOL = 1e-5  # Å
REFERENCE = json.loads((Path(__file__).parent / "data" / "sampling_reference.json").read_text())


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_same_seed_and_settings_sample_the_same_crystals(case):
    request = dict(REFERENCE[case]["request"])
    structures = sample_structures(**request)
    expected = REFERENCE[case]["crystals"]
    assert len(structures) == len(expected)
    for got, want in zip(structures, expected, strict=True):
        assert [site.specie.Z for site in got] == want["z"]
        np.testing.assert_allclose(got.frac_coords, want["frac"], rtol=0, atol=FRAC_TOL)
        np.testing.assert_allclose(got.lattice.matrix, want["lattice"], rtol=0, atol=LATTICE_TOL)


def test_settings_hand_the_sampler_one_options_object_with_the_same_defaults():
    settings = DiffusionSettings()
    assert settings.sampling_options() == SamplingOptions()
    changed = DiffusionSettings(steps=60, corrector_snr=0.0, charge_balance=False).sampling_options()
    assert (changed.steps, changed.corrector_snr, changed.charge_balance) == (60, 0.0, False)
    shared = {f.name for f in dataclasses.fields(SamplingOptions)} & set(DiffusionSettings.model_fields)
    assert {name: getattr(settings, name) for name in shared} == {
        name: getattr(SamplingOptions(), name) for name in shared
    }
    with pytest.raises(TypeError):
        sample_structures(n=1, stepz=3)
