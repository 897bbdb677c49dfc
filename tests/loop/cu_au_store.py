"""Cu-Au cells and a campaign store seeded with its references, for the tests that run stages on real small data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from loop.config import CampaignConfig
from loop.runtime.labelling import label_hashes
from loop.store import CampaignStore, Query


def fcc(element: str, a: float) -> Structure:
    """The one-atom fcc cell of `element` with cubic lattice parameter `a`, Å."""
    return Structure(Lattice(0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])), [element], [[0, 0, 0]])


def d022(a: float = 3.8) -> Structure:
    """A D0_22-like Cu3Au cell (the bundled Cu3Au is L1_2), 8 atoms, tetragonal with c = 2a (Å)."""
    coords = [
        [0, 0, 0],
        [0.5, 0.5, 0.5],
        [0, 0.5, 0.25],
        [0.5, 0, 0.25],
        [0, 0.5, 0.75],
        [0.5, 0, 0.75],
        [0.5, 0.5, 0],
        [0, 0, 0.5],
    ]
    return Structure(Lattice.tetragonal(a, 2 * a), ["Au", "Au", "Cu", "Cu", "Cu", "Cu", "Cu", "Cu"], coords)


def seeded_store(workdir: Path, cfg: CampaignConfig) -> CampaignStore:
    """A campaign store in `workdir` whose round 0 labelled fcc Cu and fcc Au (the hull's end points) with the
    config's oracle."""
    store = CampaignStore.in_workdir(workdir)
    store.set_meta("config", cfg.model_dump(mode="json"))
    store.set_meta("identity", {"name": cfg.name, "chemical_systems": cfg.chemical_systems})
    refs = [store.add_structure(fcc(el, a), source="seed", round=0) for el, a in (("Cu", 3.61), ("Au", 4.08))]
    store.add_queries(
        0, [Query(hash=h, strategy="references", rank=i, score=None) for i, h in enumerate(refs)]
    )
    label_hashes(store, refs, settings=cfg.oracle, workdir=workdir, round=0)
    return store
