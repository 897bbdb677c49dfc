"""`matloop generate`: sample crystals from the diffusion model, written batch by batch."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from generator.diffusion import iter_sample_batches, parse_conditions, validate_conditions
from generator.diffusion.adherence import AdherenceTally
from generator.diffusion.sampler import SamplingOptions
from loop.errors import InputError
from loop.science.structures import write_structures

BATCH = 100


def generate_to_file(
    *,
    n: int,
    out: Path,
    conditions: Sequence[str],
    checkpoint: Path | None,
    num_atoms: int | None,
    steps: int | None,
    seed: int,
    guidance_scale: float | None = None,
    charge_balance: bool = True,
) -> dict[str, Any]:
    """Sample `n` crystals into `out` (an .extxyz file, or a folder of CIFs for any other name).

    Conditions are validated before anything is written; each batch is appended as soon as it is sampled, so a
    killed run keeps every finished batch.

    Raises:
        InputError: `out` already exists or a checkpoint is missing (conditions raise `GeneratorError`).
    """
    out = Path(out)
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new --out (nothing is overwritten)")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"{checkpoint}: no such checkpoint file")
    parsed = parse_conditions(list(conditions))
    tally = AdherenceTally(conditions=validate_conditions(parsed))
    started = time.time()
    written = 0

    def write(batch: list[Structure]) -> None:
        nonlocal written
        out.parent.mkdir(parents=True, exist_ok=True)
        names = [f"{written + i:06d}_{s.composition.reduced_formula}" for i, s in enumerate(batch)]
        write_structures(batch, out, names=names)  # appends to an extxyz file, or adds CIFs to the folder
        written += len(batch)
        tally.add(batch)

    options = SamplingOptions(batch_size=BATCH, charge_balance=charge_balance)
    if steps is not None:
        options = replace(options, steps=steps)
    if guidance_scale is not None:
        options = replace(options, guidance_scale=guidance_scale)
    for batch in iter_sample_batches(
        n=n, conditions=parsed, checkpoint=checkpoint, num_atoms=num_atoms, seed=seed, options=options
    ):
        write(batch)
    return {
        "n_written": written,
        "out": str(out),
        "seconds": time.time() - started,
        "conditions": dict(parsed),
        "adherence": tally.summary(),
    }
