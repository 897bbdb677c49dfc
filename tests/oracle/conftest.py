from __future__ import annotations

import os

# Before numpy loads its BLAS: the 2-core test machine is shared, threads would oversubscribe it.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

STRUCTURES = Path(__file__).resolve().parents[2] / "configs" / "structures"


@pytest.fixture(scope="session")
def si() -> Structure:
    return Structure.from_file(STRUCTURES / "Si_mp-149.cif")


@pytest.fixture(scope="session")
def nacl_rattled() -> Structure:
    """Primitive NaCl with Na displaced, so forces are non-zero and symmetry is broken."""
    s = Structure.from_file(STRUCTURES / "NaCl_mp-22862.cif")
    s.translate_sites([0], [0.03, -0.02, 0.01], frac_coords=False)
    return s


@pytest.fixture(scope="session")
def cu_rattled() -> Structure:
    """Conventional fcc Cu (4 atoms) with deterministic displacements."""
    s = Structure(Lattice.cubic(3.62), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    rng = np.random.default_rng(7)
    for i in range(len(s)):
        s.translate_sites([i], rng.normal(0, 0.05, 3), frac_coords=False)
    return s
