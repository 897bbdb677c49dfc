"""Predictor–corrector sampling with classifier-free guidance and exact chemical-system masking.

Per step t → s (t = k/S): a Langevin corrector on the fractional coordinates at level t, then one
predictor evaluation that (i) moves coordinates by a reverse-VE step on the torus, (ii) takes an ancestral
(DDPM) step for the lattice and (iii) reveals each masked atom with probability (t − s)/t, drawing its type
from the guided x₀ prediction restricted to the allowed elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from generator.diffusion.conditions import Condition, encode_batch
from generator.diffusion.denoiser import N_TOKENS, Denoiser
from generator.diffusion.noise import MASK


@dataclass
class RawSample:
    """A sampled crystal: atomic numbers, fractional coordinates in [0,1), symmetric lattice in Å."""

    z: np.ndarray
    frac: np.ndarray
    lattice: np.ndarray


def _guided(model: Denoiser, guidance: float, cond, uncond, **inputs):
    out_c = model(conditions=cond, **inputs)
    if uncond is None:
        return out_c
    out_u = model(conditions=uncond, **inputs)
    return tuple(u + guidance * (c - u) for c, u in zip(out_c, out_u, strict=True))


def _enforce_system(
    tokens: np.ndarray, new: np.ndarray, offsets: np.ndarray, required: Sequence[int], order: np.ndarray
) -> None:
    """Reassign newly revealed atoms so every required element can still appear (in place).

    Keeps #missing elements ≤ #still-masked atoms in each crystal; `order` ranks elements per atom
    (most likely first) to pick which missing element a reassigned atom takes.
    """
    req = set(required)
    for c in range(len(offsets) - 1):
        a, b = offsets[c], offsets[c + 1]
        tok = tokens[a:b]
        masked = int((tok == MASK).sum())
        present = [int(x) for x in tok if x != MASK]
        missing = [e for e in required if e not in present]
        need = len(missing) - masked
        if need <= 0:
            continue
        for i in np.nonzero(new[a:b])[0]:
            if need <= 0:
                break
            el = int(tok[i])
            if present.count(el) > 1 or el not in req:
                ranked = [e for e in order[a + i] if e in missing]
                target = ranked[0] if ranked else missing[0]
                present.remove(el)
                present.append(target)
                tok[i] = target
                missing.remove(target)
                need -= 1


@torch.no_grad()
def sample_raw(
    *,
    model: Denoiser,
    noise: dict,
    num_atoms: Sequence[int],
    allowed_z: Sequence[int],
    conditions: dict[str, Condition],
    guidance: float = 2.0,
    steps: int = 100,
    corrector_snr: float = 0.2,
    mask_system: bool = True,
    type_temperature: float = 1.0,
    min_distance: float = 0.0,
    generator: torch.Generator,
) -> list[RawSample]:
    """Sample one batch of crystals with the given atom counts.

    Args:
        model: Denoiser (eval mode).
        noise: Noise processes keyed by field ("types", "coords", "lattice").
        num_atoms: Atom count of each crystal in the batch.
        allowed_z: Elements the model may emit (training vocabulary).
        conditions: Validated conditions; empty means unconditional.
        guidance: Classifier-free guidance scale (1 = plain conditional).
        steps: Number of predictor steps (each with one corrector step: 2 evaluations, ×2 with guidance).
        corrector_snr: Langevin step size as a fraction of σ_t².
        mask_system: Enforce a requested chemical system exactly (type logits masked to its elements and
            every element placed); False leaves adherence to guidance alone (for measuring it).
        type_temperature: Softmax temperature for drawing atom types (< 1 favours likely elements).
        min_distance: If > 0 (Å), pairs closer than this are pushed apart (a projection, applied during the
            last 20% of the steps and after the last one); 0 leaves the coordinates to the model alone.
        generator: Random generator.

    Returns:
        The sampled crystals.
    """
    n = torch.tensor(list(num_atoms), dtype=torch.long)
    b = n.shape[0]
    total = int(n.sum())
    n_atom = torch.repeat_interleave(n, n)
    offsets = np.concatenate([[0], np.cumsum(n.numpy())])

    allowed = torch.zeros(N_TOKENS, dtype=torch.bool)
    allowed[list(allowed_z)] = True
    required: tuple[int, ...] = ()
    if "chemical_system" in conditions and mask_system:
        required = conditions["chemical_system"].elements
        allowed = torch.zeros(N_TOKENS, dtype=torch.bool)
        allowed[list(required)] = True
    allowed[MASK] = False
    cond = encode_batch(conditions, b, generator=generator) if conditions else {}
    uncond = {} if conditions and guidance != 1.0 else None

    coords, lat = noise["coords"], noise["lattice"]
    tokens = torch.full((total,), MASK, dtype=torch.long)
    x = coords.prior(total, generator=generator)
    y = lat.prior(b, generator=generator)

    def evaluate(t: float):
        tt = torch.full((b,), t)
        return _guided(
            model,
            guidance,
            cond,
            uncond,
            tokens=tokens,
            frac=x,
            lattice_y=y,
            lattice=lat.decode(y, n),
            num_atoms=n,
            t=tt,
        )

    for k in range(steps, 0, -1):
        t, s = k / steps, (k - 1) / steps
        sig_t = coords.sigma(torch.tensor(t), n_atom)[:, None]
        sig_s = coords.sigma(torch.tensor(s), n_atom)[:, None]
        # corrector: one Langevin step on the coordinates at level t
        if corrector_snr > 0:
            _, c_out, _ = evaluate(t)
            score = coords.score_from_output(c_out, sig_t)
            step = corrector_snr * sig_t**2
            x = torch.remainder(
                x + step * score + (2 * step).sqrt() * torch.randn(x.shape, generator=generator), 1.0
            )
        logits, c_out, eps = evaluate(t)
        # predictor: reverse VE step on the torus
        score = coords.score_from_output(c_out, sig_t)
        dvar = (sig_t**2 - sig_s**2).clamp_min(0)
        x = x + dvar * score
        if k > 1:
            x = x + dvar.sqrt() * torch.randn(x.shape, generator=generator)
        x = torch.remainder(x, 1.0)
        if min_distance > 0 and t <= 0.2:
            x = separate_close_atoms(x, lat.decode(y, n), n, min_distance=min_distance, iterations=3)
        # lattice: DDPM ancestral step
        ab_t = lat.alpha_bar(torch.tensor(t))
        ab_s = lat.alpha_bar(torch.tensor(s)) if k > 1 else torch.tensor(1.0)
        y0 = ((y - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-8, 8)
        a_ts = ab_t / ab_s
        mean = (ab_s.sqrt() * (1 - a_ts) * y0 + a_ts.sqrt() * (1 - ab_s) * y) / (1 - ab_t)
        var = (1 - a_ts) * (1 - ab_s) / (1 - ab_t)
        y = mean + var.clamp_min(0).sqrt() * torch.randn(y.shape, generator=generator) if k > 1 else y0
        # types: reveal masked atoms
        masked = tokens == MASK
        if masked.any():
            p_reveal = noise["types"].unmask_probability(t, s)
            reveal = masked & (torch.rand(total, generator=generator) < p_reveal)
            if reveal.any():
                lg = (logits / type_temperature).masked_fill(~allowed, float("-inf"))
                drawn = torch.multinomial(torch.softmax(lg[reveal], dim=-1), 1, generator=generator).squeeze(
                    1
                )
                tokens = tokens.clone()
                tokens[reveal] = drawn
                if required:
                    tok_np = tokens.numpy().copy()
                    order = torch.argsort(lg, dim=-1, descending=True)[:, : len(required)].numpy()
                    _enforce_system(tok_np, reveal.numpy(), offsets, required, order)
                    tokens = torch.from_numpy(tok_np)
    lattice = lat.decode(y, n)
    if min_distance > 0:
        x = separate_close_atoms(x, lattice, n, min_distance=min_distance, iterations=20)
    out = []
    for c in range(b):
        a, e = offsets[c], offsets[c + 1]
        out.append(
            RawSample(z=tokens[a:e].numpy().copy(), frac=x[a:e].numpy().copy(), lattice=lattice[c].numpy())
        )
    return out


def separate_close_atoms(
    frac: torch.Tensor,
    lattice: torch.Tensor,
    num_atoms: torch.Tensor,
    *,
    min_distance: float,
    iterations: int,
) -> torch.Tensor:
    """Push apart atom pairs closer than `min_distance` Å (minimum image of the wrapped fractional difference).

    Each violating pair moves symmetrically along its separation vector by half the violation per iteration;
    returns new fractional coordinates in [0, 1).
    """
    b = num_atoms.shape[0]
    offsets = torch.cumsum(num_atoms, 0) - num_atoms
    src_l, dst_l, eb_l = [], [], []
    for c in range(b):
        i, j = torch.triu_indices(int(num_atoms[c]), int(num_atoms[c]), offset=1)
        src_l.append(i + offsets[c])
        dst_l.append(j + offsets[c])
        eb_l.append(torch.full((i.shape[0],), c))
    src, dst, eb = torch.cat(src_l), torch.cat(dst_l), torch.cat(eb_l)
    if src.numel() == 0:
        return frac
    inv = torch.linalg.inv(lattice)
    x = frac.clone()
    for _ in range(iterations):
        delta = torch.remainder(x[dst] - x[src] + 0.5, 1.0) - 0.5
        cart = torch.einsum("ei,eij->ej", delta, lattice[eb])
        d = cart.norm(dim=-1)
        viol = (min_distance - d).clamp_min(0)
        if not (viol > 0).any():
            break
        # coincident atoms: separate along an arbitrary fixed direction
        direction = torch.where(
            d[:, None] > 1e-6, cart / d.clamp_min(1e-6)[:, None], torch.tensor([1.0, 0.0, 0.0])
        )
        shift = torch.einsum("ej,eji->ei", 0.5 * viol[:, None] * direction, inv[eb])
        x = x.index_add(0, dst, shift).index_add(0, src, -shift)
    return torch.remainder(x, 1.0)


def draw_num_atoms(
    hist: Sequence[float], n: int, *, minimum: int = 1, generator: torch.Generator
) -> list[int]:
    """Draw atom counts from the training histogram (index = atom count), at least `minimum`."""
    p = torch.tensor(hist, dtype=torch.float64)
    p[: max(1, minimum)] = 0.0
    if p.sum() <= 0:
        return [max(1, minimum)] * n
    return torch.multinomial(p / p.sum(), n, replacement=True, generator=generator).tolist()
