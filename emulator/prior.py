"""The round-0 ensemble: readout heads distilled from the pretrained head on bootstrap resamples of MP crystals.

Before any oracle label exists, K copies of the pretrained CHGNet agree exactly (std = 0), which makes the first
acquisition blind. Instead, member 0 keeps the pretrained head and members 1..K-1 get freshly initialised heads
(own seed) trained to reproduce the pretrained head's per-site energies on a bootstrap resample of a small bundled
set of Materials Project crystals. The members therefore agree where the trunk's features look like MP training
crystals and extrapolate differently elsewhere (compressed cells, unusual chemistries): the spread is a measure of
distance from the data, which is what the acquisition needs in round 0.

The distillation set also holds the Materials Project cells of the molecular elements (H2, N2, O2, F2, Cl2;
`MOLECULAR_FILE`): without them the heads put O2 cells 0.7-1.0 eV/atom above the pretrained head, and a campaign
whose only labels are elemental references (every compound withheld) refitted O's reference energy on those cells,
about 0.5 eV too low for every oxide that followed (`benchmarks/convention_prior.py`).

Units: site energies eV.
"""

from __future__ import annotations

import copy
import warnings
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Structure
from torch import Tensor, nn

from emulator.multihead import MultiHeadChgnet

PRIOR_FILE = "mp20_prior.csv.gz"
MOLECULAR_FILE = "molecular_elements.csv.gz"
MOLECULAR_COPIES = 4


def _bundled(name: str) -> tuple[Structure, ...]:
    with resources.files("emulator.data").joinpath(name).open("rb") as handle:
        frame = pd.read_csv(handle, compression="gzip")
    with warnings.catch_warnings():
        # pymatgen notes every rounded fractional coordinate of these well-formed CIFs
        warnings.simplefilter("ignore", UserWarning)
        return tuple(Structure.from_str(cif, fmt="cif") for cif in frame["cif"])


@cache
def prior_structures() -> tuple[Structure, ...]:
    """The bundled MP crystals used for head distillation (≤ 12 atoms each)."""
    return _bundled(PRIOR_FILE)


@cache
def molecular_structures() -> tuple[Structure, ...]:
    """The bundled MP cells of the molecular elements (18 cells of H2, N2, O2, F2, Cl2; 2-16 atoms)."""
    return _bundled(MOLECULAR_FILE)


def reinitialise(head: nn.Module, *, seed: int) -> nn.Module:
    """A copy of `head` with fresh PyTorch-default weights drawn from `seed`."""
    fresh = copy.deepcopy(head)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for module in fresh.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    torch.random.set_rng_state(generator_state)
    fresh.requires_grad_(True)
    return fresh


@torch.no_grad()
def site_features(
    model: MultiHeadChgnet, structures: tuple[Structure, ...], *, batch_size: int
) -> list[Tensor]:
    """Trunk features per structure, each (n_atoms, 64)."""
    graphs = [model.base.graph_converter(s) for s in structures]
    out: list[Tensor] = []
    for start in range(0, len(graphs), batch_size):
        chunk = graphs[start : start + batch_size]
        g = model.batch(chunk, compute_stress=False)
        feas = model.site_features(g)
        out.extend(torch.split(feas.detach(), [len(c.atomic_number) for c in chunk]))
    return out


def distil_heads(
    model: MultiHeadChgnet,
    *,
    seed: int,
    n_steps: int,
    batch_size: int,
    n_structures: int | None = None,
) -> dict[str, float]:
    """Replace heads 1..K-1 by re-initialised heads distilled from the pretrained head (in place).

    Args:
        model: The ensemble; head 0 is left as the pretrained head.
        seed: Base seed; member k uses `seed + k` for its initialisation and bootstrap resample.
        n_steps: Full-batch Adam steps per head.
        batch_size: Graphs per trunk forward when computing features.
        n_structures: Use only the first n bundled MP crystals (None = all); the molecular element cells always.

    Returns:
        Metrics: mean absolute distillation error of the distilled heads on their own resample, eV/atom.
    """
    crystals, molecular = prior_structures()[:n_structures], molecular_structures()
    features = site_features(model, crystals + molecular, batch_size=batch_size)
    teacher = model.base.mlp
    with torch.no_grad():
        targets = [teacher(f).view(-1) for f in features]
    # Each molecular cell enters the pool MOLECULAR_COPIES times: with one copy among ~270 crystals, a resample
    # left a head 0.5 eV/atom off on O2.
    pool = np.concatenate(
        [np.arange(len(crystals)), np.repeat(np.arange(len(crystals), len(features)), MOLECULAR_COPIES)]
    )
    errors = []
    for k in range(1, model.n_heads):
        rng = np.random.default_rng(seed + k)
        picks = pool[rng.integers(0, len(pool), size=len(pool))]
        x = torch.cat([features[i] for i in picks])
        y = torch.cat([targets[i] for i in picks])
        head = reinitialise(teacher, seed=seed + k)
        optimiser = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in range(n_steps):
            optimiser.zero_grad()
            loss = torch.mean((head(x).view(-1) - y) ** 2)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            errors.append(float(torch.mean(torch.abs(head(x).view(-1) - y))))
        model.heads[k] = head
    return {"distil_site_mae": float(np.mean(errors)) if errors else 0.0}
