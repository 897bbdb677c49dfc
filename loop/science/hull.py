"""Convex hull of formation energies in the oracle's level of theory only.

Every energy on this hull comes from the same oracle with the same settings: elemental references, known compounds
and new discoveries alike. Materials Project (or any other) energies must never be mixed in, because absolute
energies from different codes, pseudopotentials and cutoffs are not comparable.

Units: total energy eV, energy per atom eV/atom, energy above hull eV/atom.

Missing references: a chemical system can only be placed on a hull once every one of its elements has an oracle
energy. `OracleHull.e_above_hull` (one candidate) raises `MissingReferenceError` in that case; the vectorised
`OracleHull.evaluate` never raises for it but returns NaN with a one-line reason per candidate, so the screen
stage can keep the rest of its batch and ask the oracle for the missing elements.

Uncertainty: with the hull held fixed, E_hull = E - E_hull_energy(composition), so the standard deviation of the
emulator's E_hull equals the standard deviation of its energy per atom (ensemble spread, eV/atom). The hull's own
uncertainty is ignored because it is built from oracle labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition, DummySpecies, Element
from pymatgen.entries.computed_entries import ComputedEntry

from loop.errors import InputError
from loop.science.verdicts import STABLE_TOLERANCE


class HullError(InputError, ValueError):
    """Bad input for the hull (no entries, duplicate id, non-finite energy, unreadable composition)."""


class MissingReferenceError(HullError):
    """A composition contains an element that has no oracle energy yet, so it cannot be placed on the hull."""


@dataclass(frozen=True)
class HullEntry:
    """One oracle result placed on the hull.

    Attributes:
        entry_id: Unique id (e.g. the structure hash in the campaign store).
        composition: Composition of the whole cell (formula string or pymatgen `Composition`).
        energy_per_atom: Oracle energy per atom, eV/atom.
    """

    entry_id: str
    composition: Composition | str
    energy_per_atom: float

    @classmethod
    def from_total_energy(cls, *, entry_id: str, composition: Composition | str, energy: float) -> HullEntry:
        """Build from the total energy of the cell (eV) whose composition is `composition`."""
        comp = _as_composition(composition)
        return cls(entry_id=entry_id, composition=comp, energy_per_atom=float(energy) / comp.num_atoms)


@dataclass
class HullEvaluation:
    """Energies above the hull for many candidates (output of `OracleHull.evaluate`).

    Attributes:
        e_above_hull: (n,) eV/atom, NaN where the candidate could not be placed.
        e_above_hull_std: (n,) eV/atom; equals the energy std passed in (hull held fixed), NaN if none given.
        hull_energy_per_atom: (n,) energy of the hull at each composition, eV/atom (NaN where not placed).
        reasons: n entries, None when placed, else a one-line reason (e.g. missing elemental references).
    """

    e_above_hull: np.ndarray
    e_above_hull_std: np.ndarray
    hull_energy_per_atom: np.ndarray
    reasons: list[str | None] = field(default_factory=list)

    @property
    def placed(self) -> np.ndarray:
        """(n,) bool: which candidates have a finite energy above hull."""
        return np.isfinite(self.e_above_hull)


def _as_composition(value: Composition | str) -> Composition:
    if isinstance(value, Composition):
        comp = value
    else:
        try:
            comp = Composition(value)
        except Exception as exc:
            raise HullError(
                f"cannot read composition {value!r}: {exc}; pass a formula such as 'Li2O'"
            ) from None
    if comp.num_atoms <= 0:
        raise HullError(f"composition {value!r} is empty; pass a formula with at least one atom")
    # Oxidation-state decorations (Fe2+) do not change the hull; dummy species (Xx) cannot be placed on it.
    unknown = [str(el) for el in comp.elements if isinstance(el, DummySpecies)]
    if not unknown:
        comp = comp.element_composition
    if unknown:
        raise HullError(
            f"cannot read composition {value!r}: {', '.join(unknown)} is not an element; use element symbols only"
        )
    return comp


def _chemsys_key(comp: Composition) -> frozenset[str]:
    return frozenset(el.symbol for el in comp.elements)


class OracleHull:
    """Convex hull built from oracle results, one pymatgen `PhaseDiagram` per chemical system (built lazily).

    Args:
        entries: Oracle results; ids must be unique and energies finite.

    Raises:
        HullError: No entries, a duplicate id, a non-finite energy or an unreadable composition.
    """

    def __init__(self, entries: Iterable[HullEntry]) -> None:
        self._entries: dict[str, ComputedEntry] = {}
        for entry in entries:
            if entry.entry_id in self._entries:
                raise HullError(
                    f"duplicate hull entry id {entry.entry_id!r}; each oracle result needs its own id"
                )
            if not math.isfinite(entry.energy_per_atom):
                raise HullError(
                    f"entry {entry.entry_id!r} has non-finite energy {entry.energy_per_atom}; drop failed labels"
                )
            comp = _as_composition(entry.composition)
            self._entries[entry.entry_id] = ComputedEntry(
                comp, entry.energy_per_atom * comp.num_atoms, entry_id=entry.entry_id
            )
        if not self._entries:
            raise HullError("no oracle entries for the hull; label the elemental references first")
        self._references = frozenset(
            e.composition.elements[0].symbol for e in self._entries.values() if e.composition.is_element
        )
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    @classmethod
    def from_entries(cls, entries: Iterable[HullEntry]) -> OracleHull:
        """Build the hull from oracle entries (see `HullEntry`)."""
        return cls(entries)

    def missing_references(self, composition: Composition | str) -> list[str]:
        """Elements of `composition` with no elemental oracle entry yet (empty when it can be placed)."""
        return sorted(_chemsys_key(_as_composition(composition)) - self._references)

    def phase_diagram(self, chemsys: Iterable[str]) -> PhaseDiagram:
        """The `PhaseDiagram` of a chemical system, from every entry whose elements lie inside it (cached).

        Raises:
            MissingReferenceError: Some element of `chemsys` has no elemental oracle entry.
        """
        key = frozenset(str(Element(s)) for s in chemsys)
        if key not in self._diagrams:
            missing = sorted(key - self._references)
            if missing:
                raise MissingReferenceError(
                    f"no oracle energy for element(s) {', '.join(missing)}; label the elemental reference(s) first"
                )
            inside = [e for e in self._entries.values() if _chemsys_key(e.composition) <= key]
            self._diagrams[key] = PhaseDiagram(inside, elements=[Element(s) for s in sorted(key)])
        return self._diagrams[key]

    def hull_energy_per_atom(self, composition: Composition | str) -> float:
        """Energy of the hull at `composition`, eV/atom (raises `MissingReferenceError` when not placeable)."""
        comp = _as_composition(composition)
        return float(self.phase_diagram(_chemsys_key(comp)).get_hull_energy_per_atom(comp))

    def e_above_hull(self, composition: Composition | str, energy_per_atom: float) -> float:
        """Energy above the hull of one candidate, eV/atom (negative: it would lower the hull).

        Args:
            composition: Candidate composition.
            energy_per_atom: Candidate energy in the oracle's level of theory (or an emulator fitted to it), eV/atom.

        Raises:
            MissingReferenceError: An element of the candidate has no elemental oracle entry yet.
        """
        return float(energy_per_atom) - self.hull_energy_per_atom(composition)

    def evaluate(
        self,
        compositions: Sequence[Composition | str],
        energies_per_atom: Sequence[float] | np.ndarray,
        energies_std: Sequence[float] | np.ndarray | None = None,
    ) -> HullEvaluation:
        """Energies above the hull for many candidates; one `PhaseDiagram` per chemical system is reused.

        Args:
            compositions: n candidate compositions.
            energies_per_atom: (n,) energies, eV/atom.
            energies_std: (n,) ensemble spread of the energies, eV/atom (copied to `e_above_hull_std`).

        Returns:
            A `HullEvaluation`; candidates that cannot be placed get NaN and a reason (never an exception).

        Raises:
            HullError: Lengths differ or a composition is unreadable.
        """
        energies = np.asarray(energies_per_atom, dtype=float).reshape(-1)
        n = len(compositions)
        if energies.shape[0] != n:
            raise HullError(
                f"got {n} compositions but {energies.shape[0]} energies; pass one energy per candidate"
            )
        if energies_std is None:
            std = np.full(n, np.nan)
        else:
            std = np.asarray(energies_std, dtype=float).reshape(-1)
            if std.shape[0] != n:
                raise HullError(
                    f"got {n} compositions but {std.shape[0]} energy stds; pass one per candidate"
                )
        hull_e = np.full(n, np.nan)
        reasons: list[str | None] = [None] * n
        # Hull energies depend on the reduced composition only; many candidates share one.
        cache: dict[Composition, float | str] = {}
        for i, value in enumerate(compositions):
            comp = _as_composition(value)
            reduced = comp.reduced_composition
            if reduced not in cache:
                try:
                    cache[reduced] = self.hull_energy_per_atom(reduced)
                except MissingReferenceError as exc:
                    cache[reduced] = str(exc)
            result = cache[reduced]
            if isinstance(result, str):
                reasons[i] = result
            else:
                hull_e[i] = result
            if not math.isfinite(energies[i]):
                reasons[i] = reasons[i] or "non-finite candidate energy"
        e_hull = energies - hull_e
        e_hull[~np.isfinite(e_hull)] = np.nan
        return HullEvaluation(
            e_above_hull=e_hull, e_above_hull_std=std, hull_energy_per_atom=hull_e, reasons=reasons
        )

    def entry_e_above_hull(self) -> dict[str, float]:
        """Energy above hull of every oracle entry, eV/atom (NaN for entries missing a reference)."""
        out: dict[str, float] = {}
        for entry_id, entry in self._entries.items():
            try:
                pd = self.phase_diagram(_chemsys_key(entry.composition))
            except MissingReferenceError:
                out[entry_id] = math.nan
                continue
            out[entry_id] = entry.energy_per_atom - float(pd.get_hull_energy_per_atom(entry.composition))
        return out

    def stable_ids(self, *, tolerance: float = STABLE_TOLERANCE) -> list[str]:
        """Ids of entries on the hull (E_hull <= `tolerance`, eV/atom), in insertion order.

        Of several entries at the same composition and energy, all are reported.
        """
        return [i for i, e in self.entry_e_above_hull().items() if e <= tolerance]

    def decomposition(self, composition: Composition | str) -> dict[str, float]:
        """Stable oracle entries the composition decomposes into: entry id -> atomic fraction (sums to 1).

        Raises:
            MissingReferenceError: An element of the composition has no elemental oracle entry yet.
        """
        comp = _as_composition(composition)
        decomp = self.phase_diagram(_chemsys_key(comp)).get_decomposition(comp)
        return {entry.entry_id: float(amount) for entry, amount in decomp.items()}

    def formation_energy_per_atom(self, composition: Composition | str, energy_per_atom: float) -> float:
        """Formation energy per atom relative to the lowest elemental oracle entries, eV/atom.

        Raises:
            MissingReferenceError: An element of the composition has no elemental oracle entry yet.
        """
        comp = _as_composition(composition)
        pd = self.phase_diagram(_chemsys_key(comp))
        refs = sum(pd.el_refs[el].energy_per_atom * comp.get_atomic_fraction(el) for el in comp.elements)
        return float(energy_per_atom) - float(refs)

    def entries_in(self, chemsys: Iterable[str]) -> list[HullEntry]:
        """Oracle entries whose elements all lie inside `chemsys`, as `HullEntry` (for plots and reports)."""
        key = frozenset(str(Element(s)) for s in chemsys)
        return [
            HullEntry(entry_id=i, composition=e.composition, energy_per_atom=e.energy_per_atom)
            for i, e in self._entries.items()
            if _chemsys_key(e.composition) <= key
        ]
