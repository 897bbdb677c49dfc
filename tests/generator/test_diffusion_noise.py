"""The three noise processes have the marginals they claim."""

from __future__ import annotations

import math

import torch

from generator.diffusion.noise import (
    MASK,
    MaskedTypeDiffusion,
    SymmetricLatticeDiffusion,
    WrappedCoordinateDiffusion,
    _wrapped_normal_score,
    sym_to_vec,
    vec_to_sym,
)

DENSITY = 0.0579  # atoms/Å³, close to mp_20's mean


def test_wrapped_coordinates_stay_on_torus_and_reach_uniform():
    proc = WrappedCoordinateDiffusion()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 3), 0.9)
    n = torch.full((20000,), 8)
    for t, uniform in ((0.05, False), (1.0, True)):
        sigma = proc.sigma(torch.full((20000,), t), n)[:, None]
        xt, target = proc.forward(x0, sigma, generator=gen)
        assert xt.min() >= 0.0 and xt.max() < 1.0
        assert torch.isfinite(target).all()
        first_harmonic = torch.cos(2 * math.pi * (xt - 0.9)).mean().item()
        if uniform:
            assert abs(first_harmonic) < 0.03  # the limit is the uniform distribution on the torus
        else:
            assert first_harmonic > 0.99  # still concentrated at x0


def test_coordinate_noise_scales_with_atom_count():
    proc = WrappedCoordinateDiffusion()
    t = torch.tensor([0.5, 0.5])
    s1, s8 = proc.sigma(t, torch.tensor([1, 8]))
    assert torch.isclose(s1 / s8, torch.tensor(2.0))  # σ ∝ N^-⅓: same Cartesian noise at fixed density


def test_wrapped_score_matches_finite_difference():
    sigma = torch.tensor([0.05, 0.2, 0.6], dtype=torch.float64)
    x = torch.tensor([0.03, -0.31, 0.45], dtype=torch.float64)

    def logp(v):
        k = torch.arange(-8, 9, dtype=torch.float64)
        return torch.logsumexp(-((v[:, None] + k) ** 2) / (2 * sigma[:, None] ** 2), dim=1)

    h = 1e-6
    fd = (logp(x + h) - logp(x - h)) / (2 * h)
    assert torch.allclose(_wrapped_normal_score(x, sigma), fd, rtol=1e-4, atol=1e-6)


def test_normalised_coordinate_target_has_unit_scale():
    proc = WrappedCoordinateDiffusion()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(20000, 3, generator=gen)
    for sig in (0.003, 0.1, 0.3):
        _, target = proc.forward(x0, torch.full((20000, 1), sig), generator=gen)
        assert 0.9 < target.pow(2).mean().item() < 1.1


def test_lattice_limit_is_cubic_with_volume_n_over_rho():
    proc = SymmetricLatticeDiffusion(density=DENSITY)
    gen = torch.Generator().manual_seed(2)
    for n_atoms in (1, 7, 20):
        n = torch.full((40000,), n_atoms)
        lat = proc.decode(proc.prior(40000, generator=gen), n)
        vol = torch.linalg.det(lat.double())
        assert abs(vol.mean().item() / (n_atoms / DENSITY) - 1) < 0.01
        mean = lat.mean(0)
        mu = (n_atoms / DENSITY) ** (1 / 3)
        off = mean - torch.diag(torch.diagonal(mean))
        assert off.abs().max() < 0.01 * mu  # cubic on average
        assert torch.allclose(lat, lat.transpose(1, 2))  # symmetric: no rotational degrees of freedom


def test_lattice_forward_interpolates_data_and_prior():
    proc = SymmetricLatticeDiffusion(density=DENSITY)
    gen = torch.Generator().manual_seed(3)
    lattice = torch.diag(torch.tensor([3.0, 4.0, 5.0])).expand(5000, 3, 3)
    n = torch.full((5000,), 4)
    y0 = proc.encode(lattice, n)
    assert torch.allclose(proc.decode(y0, n), lattice, atol=1e-5)
    yt, _ = proc.forward(y0, torch.full((5000,), 1e-4), generator=gen)
    assert torch.allclose(yt.mean(0), y0[0], atol=0.01)
    y1, _ = proc.forward(y0, torch.ones(5000), generator=gen)
    assert y1.mean(0).abs().max() < 0.05 and abs(y1.std(0).mean().item() - 1) < 0.05
    m = torch.randn(10, 3, 3, generator=gen)
    sym = m + m.transpose(1, 2)
    assert torch.allclose(vec_to_sym(sym_to_vec(sym)), sym, atol=1e-6)


def test_mask_diffusion_marginals():
    proc = MaskedTypeDiffusion()
    gen = torch.Generator().manual_seed(4)
    z0 = torch.randint(1, 90, (50000,), generator=gen)
    for t in (0.1, 0.5, 0.9):
        zt, mask = proc.forward(z0, torch.full((50000,), t), generator=gen)
        assert abs(mask.float().mean().item() - t) < 0.01
        assert (zt[mask] == MASK).all() and (zt[~mask] == z0[~mask]).all()
    # reverse reveal probabilities compose to the forward marginal: P(masked at s | masked at t) = s / t
    t, s = 0.8, 0.3
    still = 1 - proc.unmask_probability(t, s)
    assert math.isclose(still, s / t)
    assert proc.unmask_probability(0.2, 0.0) == 1.0
