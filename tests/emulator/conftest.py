from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from pymatgen.core import Structure

from emulator import ChgnetEnsemble, ChgnetEnsembleSettings, LabelledStructure
from tests.emulator.emt_data import emt_cells

# One intra-op thread per process: the machine is shared (the Makefile also exports OMP_NUM_THREADS=1).
torch.set_num_threads(1)

MP20_VAL = Path(__file__).resolve().parents[2] / "generator" / "data" / "mp_20" / "val.csv.gz"

# Small but real: K=3 members, round-0 heads distilled on 64 bundled MP crystals.
SMALL = {"n_members": 3, "distill_structures": 64, "distill_steps": 200, "batch_size": 4}


@pytest.fixture(scope="session")
def mp20_crystals() -> list[Structure]:
    """12 real MP crystals (≤ 10 atoms) from the mp_20 validation split (not in the distillation set)."""
    frame = pd.read_csv(MP20_VAL).sample(frac=1.0, random_state=3)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in frame["cif"]:
            s = Structure.from_str(cif, fmt="cif")
            if len(s) <= 10:
                out.append(s)
            if len(out) == 12:
                break
    return out


@pytest.fixture(scope="session")
def emt_train() -> list[LabelledStructure]:
    return emt_cells(40, seed=1)


@pytest.fixture(scope="session")
def emt_held() -> list[LabelledStructure]:
    return emt_cells(16, seed=2)


@pytest.fixture(scope="session")
def round0() -> ChgnetEnsemble:
    """The round-0 ensemble (never fine-tuned); tests must not modify it."""
    return ChgnetEnsemble(settings=ChgnetEnsembleSettings(**SMALL))
