"""Input checks that turn bad structures into one-line `EmulatorError`s before they reach torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

from emulator.base import EmulatorError

# CHGNet's atom embedding and AtomRef cover H..Pu.
MAX_Z = 94


def as_structure(item: Any, *, index: int) -> Structure:
    """A pymatgen Structure from a Structure or its `as_dict()`; raises EmulatorError otherwise."""
    if isinstance(item, Structure):
        return item
    if isinstance(item, dict):
        try:
            return Structure.from_dict(item)
        except Exception as err:
            raise EmulatorError(
                f"structure #{index} is an unreadable dict ({type(err).__name__}: {err})"
            ) from None
    raise EmulatorError(
        f"structure #{index} is a {type(item).__name__}, expected a pymatgen Structure or its dict"
    )


def check_structures(structures: Sequence[Any]) -> list[Structure]:
    """Validate a batch; returns Structures. Raises EmulatorError naming the first bad one."""
    if isinstance(structures, Structure):
        structures = [structures]
    if structures is None or len(structures) == 0:
        raise EmulatorError("no structures given: pass at least one crystal")
    out = []
    for index, item in enumerate(structures):
        s = as_structure(item, index=index)
        label = f"structure #{index} ({s.composition.reduced_formula if len(s) else 'empty'})"
        if len(s) == 0:
            raise EmulatorError(f"structure #{index} has no sites")
        if not s.is_ordered:
            raise EmulatorError(
                f"{label} has partial occupancies; order it first (CHGNet needs one element per site)"
            )
        for el in s.composition.elements:
            if not isinstance(el, Element) or el.Z > MAX_Z:
                raise EmulatorError(f"{label} contains {el}, outside CHGNet's elements H..Pu (Z 1-{MAX_Z})")
        if not np.all(np.isfinite(s.cart_coords)) or not np.all(np.isfinite(s.lattice.matrix)):
            raise EmulatorError(f"{label} has non-finite coordinates or lattice")
        if s.volume < 0.5 * len(s):
            raise EmulatorError(
                f"{label} has a volume of {s.volume:.3g} Å³ for {len(s)} atoms; check the cell"
            )
        out.append(s)
    return out
