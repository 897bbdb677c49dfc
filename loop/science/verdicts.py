"""The campaign's one vocabulary of stability: what "stable", "near-stable" and "hit" mean, everywhere.

Acquisition, the hull update, status, export, the science report and MLflow all judge an energy above the oracle
hull (eV/atom) with the functions here, so that a "hit" means one thing in every place it is counted:

* **stable**: on the oracle hull, E_hull <= `STABLE_TOLERANCE` (numerical noise of the hull construction);
* **near-stable**: above the hull but within the campaign's `near_stable` threshold;
* **hit**: stable or near-stable, i.e. E_hull <= the campaign's `near_stable` threshold (+ the tolerance). This
  is what acquisition targets (P(E_hull <= threshold)) and what hit rates and discovery counts count.

Units: eV/atom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

# On the hull within the float noise of the hull construction (qhull), eV/atom.
STABLE_TOLERANCE = 1e-6


class Verdict(StrEnum):
    """The stability class of one labelled structure."""

    STABLE = "stable"
    NEAR_STABLE = "near_stable"
    UNSTABLE = "unstable"
    UNPLACED = "unplaced"  # no finite E_hull (failed label, missing elemental reference)


@dataclass(frozen=True)
class StabilityRule:
    """The campaign's stability thresholds.

    Attributes:
        near_stable: Largest energy above the oracle hull that still counts as a hit, eV/atom.
        tolerance: Distance from the hull that counts as on it, eV/atom.
    """

    near_stable: float
    tolerance: float = STABLE_TOLERANCE

    def __post_init__(self) -> None:
        if not (self.near_stable >= 0 and math.isfinite(self.near_stable)):
            raise ValueError(f"near_stable must be a finite energy >= 0 eV/atom, got {self.near_stable}")

    @property
    def hit_threshold(self) -> float:
        """E_hull (eV/atom) at or below which a structure is a hit; acquisition targets this value."""
        return self.near_stable + self.tolerance

    def is_stable(self, e_hull: float | None) -> bool:
        return e_hull is not None and math.isfinite(e_hull) and e_hull <= self.tolerance

    def is_hit(self, e_hull: float | None) -> bool:
        return e_hull is not None and math.isfinite(e_hull) and e_hull <= self.hit_threshold

    def is_discovery(self, e_hull: float | None, *, first_round: int | None) -> bool:
        """A discovery is a hit the campaign itself queried (first in round >= 1), never a round-0 reference."""
        return self.is_hit(e_hull) and (first_round or 0) >= 1

    def classify(self, e_hull: float | None) -> Verdict:
        if e_hull is None or not math.isfinite(e_hull):
            return Verdict.UNPLACED
        if self.is_stable(e_hull):
            return Verdict.STABLE
        if self.is_hit(e_hull):
            return Verdict.NEAR_STABLE
        return Verdict.UNSTABLE


__all__ = ["STABLE_TOLERANCE", "StabilityRule", "Verdict"]
