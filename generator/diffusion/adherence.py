"""How well sampled crystals honour each requested condition, judged from the structures themselves.

Chemical system, space group and HHI follow from a structure and are checked for every sample. Band gap,
energy above hull, magnetic density and bulk modulus need a property model (a DFT or ML calculation after
relaxation) and are reported as not judged here; `benchmarks/generator_property_shift.py` judges them with
CHGNet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Structure

from generator.diffusion.conditions import Condition
from generator.diffusion.data import hhi_score

STRUCTURAL = ("chemical_system", "space_group", "hhi")


def space_group_number(structure: Structure, *, symprec: float = 0.1) -> int:
    """spglib space-group number of a structure at `symprec` (Å); 0 where spglib cannot decide."""
    try:
        return int(structure.get_space_group_info(symprec=symprec)[1])
    except Exception:  # spglib gives up on badly distorted cells: such a sample honours no group
        return 0


@dataclass
class AdherenceTally:
    """Running count of samples that honour each condition (feed batches with `add`).

    Args:
        conditions: Validated conditions of the request.
        symprec: Symmetry tolerance for the space-group check (Å).
    """

    conditions: dict[str, Condition]
    symprec: float = 0.1
    n: int = 0
    honoured: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, structures: Iterable[Structure]) -> None:
        for s in structures:
            self.n += 1
            for name, cond in self.conditions.items():
                if name not in STRUCTURAL:
                    continue
                ok = self._honours(s, name, cond)
                self.honoured[name] = self.honoured.get(name, 0) + int(ok)

    def _honours(self, s: Structure, name: str, cond: Condition) -> bool:
        if name == "chemical_system":
            return {el.Z for el in s.composition.elements} == set(cond.elements)
        if name == "space_group":
            return space_group_number(s, symprec=self.symprec) == int(cond.value or 0)
        value = hhi_score(s)
        self.values.setdefault(name, []).append(value)
        if value != value:  # an element without HHI data
            return False
        if cond.value is not None:  # an exact target: within 5 % of the scale (500 of 10,000)
            return abs(value - cond.value) <= 500.0
        return bool(cond.low <= value <= cond.high)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per condition: request, samples checked, fraction honoured and how it was judged."""
        out: dict[str, dict[str, Any]] = {}
        for name, cond in self.conditions.items():
            row: dict[str, Any] = {"request": cond.describe(), "n": self.n}
            if name in STRUCTURAL:
                row["honoured"] = self.honoured.get(name, 0) / self.n if self.n else None
                row["judged_by"] = {
                    "chemical_system": "element set equals the request",
                    "space_group": f"spglib space group at symprec {self.symprec:g} Å equals the request",
                    "hhi": "HHI production score (pymatgen table) in range (±500 for an exact value)",
                }[name]
                vals = [v for v in self.values.get(name, []) if v == v]
                if vals:
                    row["mean"] = sum(vals) / len(vals)
            else:
                row["honoured"] = None
                row["judged_by"] = "not judged: needs a property calculation (DFT or ML after relaxation)"
            out[name] = row
        return out


def describe_summary(summary: dict[str, dict[str, Any]]) -> list[str]:
    """One human-readable line per condition."""
    lines = []
    for name, row in summary.items():
        if row["honoured"] is None:
            lines.append(f"{name}={row['request']}: {row['judged_by']}")
        else:
            lines.append(
                f"{name}={row['request']}: {100 * row['honoured']:.0f} % of {row['n']} honoured "
                f"({row['judged_by']})"
            )
    return lines
