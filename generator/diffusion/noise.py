"""The three forward noise processes, one per field, independent of the denoiser.

Time t runs over (0, 1]; t = 1 is the prior. Units: lattices in Å, fractional coordinates unitless.

* `MaskedTypeDiffusion` — absorbing-state D3PM on atom types: each atom is independently replaced by the
  mask token with probability t.
* `WrappedCoordinateDiffusion` — variance-exploding diffusion on the 3-torus; σ is divided by N^⅓ so the
  Cartesian noise scale does not depend on the atom count N (cells grow like N^⅓ at fixed density).
* `SymmetricLatticeDiffusion` — variance-preserving diffusion on the symmetric lattice P = (L Lᵀ)^½ whose
  limit is a cubic cell c·μ(N)·I + noise, μ(N) = (N/ρ)^⅓ for the data's mean atomic density ρ and c chosen
  so the limit's mean volume is exactly N/ρ.
"""

from __future__ import annotations

import math

import torch

MASK = 0  # type token of a masked atom; real tokens are atomic numbers 1..MAX_Z


class MaskedTypeDiffusion:
    """Absorbing (mask) diffusion over atom types with a linear schedule: P(masked at t) = t."""

    field = "types"

    def mask_probability(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def forward(self, z0: torch.Tensor, t_atom: torch.Tensor, *, generator: torch.Generator | None = None):
        """Return (z_t, mask) for atom types `z0` and per-atom times `t_atom`."""
        u = torch.rand(z0.shape, generator=generator)
        mask = u < self.mask_probability(t_atom)
        return torch.where(mask, torch.full_like(z0, MASK), z0), mask

    def unmask_probability(self, t: float, s: float) -> float:
        """Probability that an atom masked at time t is revealed by time s < t."""
        return 1.0 if s <= 0 else (t - s) / t


def _wrapped_normal_score(delta: torch.Tensor, sigma: torch.Tensor, n_images: int = 3) -> torch.Tensor:
    """∇ log of a wrapped normal density at displacement `delta` (periodic, period 1)."""
    k = torch.arange(-n_images, n_images + 1, dtype=delta.dtype)
    d = delta.unsqueeze(-1) + k
    s2 = (sigma**2).unsqueeze(-1)
    logw = -(d**2) / (2 * s2)
    w = torch.softmax(logw, dim=-1)
    return -(w * d).sum(-1) / sigma**2


_LAMBDA_TABLE: tuple[torch.Tensor, torch.Tensor] | None = None


def _lambda_table() -> tuple[torch.Tensor, torch.Tensor]:
    """(log σ grid, E[(σ·score)²]) by Monte Carlo with a fixed seed, computed once per process."""
    global _LAMBDA_TABLE
    if _LAMBDA_TABLE is None:
        gen = torch.Generator().manual_seed(0)
        log_sig = torch.linspace(math.log(1e-4), math.log(4.0), 200)
        sig = log_sig.exp().unsqueeze(1).double()
        eps = torch.randn(200, 4000, generator=gen, dtype=torch.float64)
        delta = torch.remainder(sig * eps + 0.5, 1.0) - 0.5
        score = _wrapped_normal_score(delta, sig)
        _LAMBDA_TABLE = (log_sig, ((sig * score) ** 2).mean(1).float().clamp_min(1e-8))
    return _LAMBDA_TABLE


class WrappedCoordinateDiffusion:
    """VE diffusion of fractional coordinates on the torus.

    σ(t, N) = σ_min^(1-t) σ_max^t / N^⅓. The network predicts the score scaled by σ and divided by
    sqrt(λ(σ)), λ(σ) = E[(σ·score)²] per coordinate, so the regression target has unit scale for every σ.
    """

    field = "coords"

    def __init__(self, *, sigma_min: float = 0.01, sigma_max: float = 1.5):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._log_sig_grid, self._lam_grid = _lambda_table()

    def sigma(self, t: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        base = self.sigma_min ** (1 - t) * self.sigma_max**t
        return base / num_atoms.float() ** (1.0 / 3.0)

    def lam(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ(σ) = E[(σ·score)²] per coordinate, interpolated from a Monte-Carlo table."""
        x = sigma.log().clamp(self._log_sig_grid[0], self._log_sig_grid[-1])
        pos = (x - self._log_sig_grid[0]) / (self._log_sig_grid[1] - self._log_sig_grid[0])
        i0 = pos.floor().long().clamp(0, len(self._log_sig_grid) - 2)
        w = pos - i0
        return self._lam_grid[i0] * (1 - w) + self._lam_grid[i0 + 1] * w

    def forward(
        self, x0: torch.Tensor, sigma_atom: torch.Tensor, *, generator: torch.Generator | None = None
    ):
        """Return (x_t in [0,1), normalised score target) for coordinates `x0` and per-atom σ (column)."""
        eps = torch.randn(x0.shape, generator=generator)
        xt = torch.remainder(x0 + sigma_atom * eps, 1.0)
        delta = torch.remainder(xt - x0 + 0.5, 1.0) - 0.5
        score = _wrapped_normal_score(delta, sigma_atom.expand_as(delta))
        target = sigma_atom * score / self.lam(sigma_atom).sqrt()
        return xt, target

    def score_from_output(self, out: torch.Tensor, sigma_atom: torch.Tensor) -> torch.Tensor:
        return out * self.lam(sigma_atom).sqrt() / sigma_atom

    def prior(self, n_atoms_total: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(n_atoms_total, 3, generator=generator)

    def langevin_step(
        self, x: torch.Tensor, score: torch.Tensor, *, sigma: torch.Tensor, snr: float, noise: torch.Tensor
    ) -> torch.Tensor:
        """Corrector: one Langevin step of size `snr`·σ² at noise level σ (per-atom column), wrapped to [0, 1)."""
        step = snr * sigma**2
        return torch.remainder(x + step * score + (2 * step).sqrt() * noise, 1.0)

    def reverse_step(
        self,
        x: torch.Tensor,
        score: torch.Tensor,
        *,
        sigma_t: torch.Tensor,
        sigma_s: torch.Tensor,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        """Predictor: the reverse-VE step from level σ_t to σ_s on the torus (no noise on the last step)."""
        dvar = (sigma_t**2 - sigma_s**2).clamp_min(0)
        x = x + dvar * score
        if noise is not None:
            x = x + dvar.sqrt() * noise
        return torch.remainder(x, 1.0)


# Symmetric noise: 6 independent N(0,1) components; off-diagonals scaled by 1/√2 so that the
# Frobenius norm is isotropic over symmetric matrices.
_IU = torch.triu_indices(3, 3)
_OFF_SCALE = torch.tensor([1.0 if i == j else 1.0 / math.sqrt(2) for i, j in _IU.T.tolist()])


def sym_to_vec(m: torch.Tensor) -> torch.Tensor:
    """(…,3,3) symmetric → (…,6) with off-diagonals multiplied by √2 (inverse of `vec_to_sym`)."""
    return m[..., _IU[0], _IU[1]] / _OFF_SCALE


def vec_to_sym(v: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(*v.shape[:-1], 3, 3, dtype=v.dtype)
    vals = v * _OFF_SCALE
    out[..., _IU[0], _IU[1]] = vals
    out[..., _IU[1], _IU[0]] = vals
    return out


class SymmetricLatticeDiffusion:
    """VP diffusion on y = (P/μ(N) − c·I)/σ_L, a 6-vector; prior y ~ N(0, I).

    ᾱ(t) = exp(−(β_min t + ½(β_max − β_min) t²)). At t = 1, P = μ(N)(c·I + σ_L·E) with symmetric Gaussian E,
    which is a cubic cell of mean volume N/ρ.
    """

    field = "lattice"

    def __init__(
        self, *, density: float, sigma_l: float = 0.3, beta_min: float = 0.1, beta_max: float = 20.0
    ):
        self.density = density
        self.sigma_l = sigma_l
        self.beta_min = beta_min
        self.beta_max = beta_max
        # E[det(cI + σE)] = c³ − 3cσ²v_off with off-diagonal variance v_off = ½; solve for E[det] = 1.
        c = 1.0
        for _ in range(50):
            f = c**3 - 1.5 * c * sigma_l**2 - 1.0
            c -= f / (3 * c**2 - 1.5 * sigma_l**2)
        self.c = c

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))

    def mu(self, num_atoms: torch.Tensor) -> torch.Tensor:
        return (num_atoms.float() / self.density) ** (1.0 / 3.0)

    def encode(self, lattice: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """Symmetric lattice (B,3,3) in Å → normalised 6-vector y."""
        p = lattice / self.mu(num_atoms)[:, None, None]
        return sym_to_vec(p - self.c * torch.eye(3)) / self.sigma_l

    def decode(self, y: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        """Normalised 6-vector y → symmetric lattice (B,3,3) in Å."""
        p = self.c * torch.eye(3) + self.sigma_l * vec_to_sym(y)
        return p * self.mu(num_atoms)[:, None, None]

    def forward(self, y0: torch.Tensor, t: torch.Tensor, *, generator: torch.Generator | None = None):
        """Return (y_t, ε) for clean `y0` (B,6) and times `t` (B,)."""
        eps = torch.randn(y0.shape, generator=generator)
        ab = self.alpha_bar(t)[:, None]
        return ab.sqrt() * y0 + (1 - ab).sqrt() * eps, eps

    def prior(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, 6, generator=generator)

    def clean_estimate(self, y: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
        """The clean lattice y₀ implied by the predicted noise `eps` at time t (clamped to ±8)."""
        ab_t = self.alpha_bar(torch.tensor(t))
        return ((y - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-8, 8)

    def reverse_step(
        self, y: torch.Tensor, y0: torch.Tensor, *, t: float, s: float, generator: torch.Generator
    ) -> torch.Tensor:
        """DDPM ancestral step from t to s < t given the clean estimate `y0`; at s = 0 the estimate itself."""
        if s <= 0:
            return y0
        ab_t = self.alpha_bar(torch.tensor(t))
        ab_s = self.alpha_bar(torch.tensor(s))
        a_ts = ab_t / ab_s
        mean = (ab_s.sqrt() * (1 - a_ts) * y0 + a_ts.sqrt() * (1 - ab_s) * y) / (1 - ab_t)
        var = (1 - a_ts) * (1 - ab_s) / (1 - ab_t)
        return mean + var.clamp_min(0).sqrt() * torch.randn(y.shape, generator=generator)


def make_noise_processes(*, density: float, sigma_l: float = 0.3) -> dict[str, object]:
    """One noise process per field, keyed by field name."""
    return {
        "types": MaskedTypeDiffusion(),
        "coords": WrappedCoordinateDiffusion(),
        "lattice": SymmetricLatticeDiffusion(density=density, sigma_l=sigma_l),
    }
