"""The reference-energy refit and bootstrap resampling on real EMT labels (no network involved)."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Element

from emulator.calibration import calibration_metrics
from emulator.training import bootstrap_weights, composition_fractions, refit_reference_shift
from tests.emulator.emt_data import emt_cells


def _fractions(data) -> np.ndarray:
    return composition_fractions([np.array([site.specie.Z for site in d.structure]) for d in data])


def test_refit_is_well_posed_with_three_labels_and_keeps_unseen_elements() -> None:
    data = emt_cells(3, seed=5)
    fractions = _fractions(data)
    target = np.array([d.energy_per_atom for d in data])
    # Residuals of a model that is off by a constant -4 eV/atom (CHGNet vs EMT is of that order).
    shift = refit_reference_shift(fractions=fractions, residuals=target + 4.0, alpha=1e-3)
    assert np.all(np.isfinite(shift))
    seen = {site.specie.Z for d in data for site in d.structure}
    unseen = [z for z in range(1, 95) if z not in seen]
    assert np.all(shift[np.array(unseen) - 1] == 0.0)
    assert shift[Element("Fe").Z - 1] == 0.0
    # With fewer labels than elements the ridge still explains the labels closely.
    np.testing.assert_allclose(fractions @ shift, target + 4.0, atol=0.05)


def test_refit_recovers_per_element_offsets_from_many_labels() -> None:
    data = emt_cells(40, seed=6)
    fractions = _fractions(data)
    true = np.zeros(94)
    for symbol, value in {
        "Cu": -3.0,
        "Ag": -2.5,
        "Au": -3.2,
        "Ni": -4.1,
        "Pd": -3.7,
        "Pt": -5.0,
        "Al": -3.4,
    }.items():
        true[Element(symbol).Z - 1] = value
    residuals = fractions @ true
    shift = refit_reference_shift(fractions=fractions, residuals=residuals, alpha=1e-6)
    np.testing.assert_allclose(shift, true, atol=1e-3)


def test_bootstrap_weights_are_resamples_that_differ_between_members() -> None:
    w = bootstrap_weights(n_members=4, n_data=50, seed=0, bootstrap=True)
    assert w.shape == (4, 50)
    np.testing.assert_array_equal(w.sum(axis=1), 50)
    assert len({tuple(row) for row in w}) == 4
    assert np.all((w == 0).sum(axis=1) > 5)  # each member leaves roughly a third out
    np.testing.assert_array_equal(bootstrap_weights(n_members=2, n_data=5, seed=0, bootstrap=False), 1.0)


def test_calibration_metrics_on_emt_energies() -> None:
    data = emt_cells(12, seed=7)
    target = np.array([d.energy_per_atom for d in data])
    rng = np.random.default_rng(0)
    std = rng.uniform(0.01, 0.2, size=len(target))
    predicted = target + std * rng.choice([-0.5, 3.0], size=len(target))  # errors proportional to std
    c = calibration_metrics(predicted=predicted, std=std, target=target)
    assert c["spearman_std_abs_error"] > 0.8
    assert c["frac_within_1sigma"] == np.mean(np.abs(predicted - target) <= std)
    assert c["frac_within_1sigma"] <= c["frac_within_2sigma"]
    assert np.isnan(
        calibration_metrics(predicted=target, std=np.zeros(12), target=target)["spearman_std_abs_error"]
    )
