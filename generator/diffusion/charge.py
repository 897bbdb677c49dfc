"""Charge balance: the SMACT-style test and a feasibility check for constrained type decoding.

The test (`charge_balanced_counts`) is the compositional-validity metric: a composition passes if it is a pure
element, if all its elements are metals (intermetallics), or if some choice of one common oxidation state per
element makes the formal charges sum to zero.

`CompositionConstraint` lets the sampler reveal atom types so that the finished crystal can still pass: before
an atom (or a whole Wyckoff orbit) takes an element, it checks that the atoms still masked could complete a
charge-balanced composition that contains every required element. With few allowed elements (a requested
chemical system) every completion is enumerated, so the check is exact. Otherwise it is exact for the last
unit and a relaxation before it (each remaining unit may take any oxidation state offered by the allowed
elements): it never rejects a completable choice, and dead ends are rare because many elements share each
oxidation state.

With a `formula`, the constraint asks for that composition exactly instead: a crystal of N atoms must end with
N / (atoms per formula unit) formula units, so a unit may only take an element still short of its share and the
units left must fill the shortfalls exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

from generator.chemistry import counts_key as _key
from generator.chemistry import is_metal, neutral_counts, oxidation_states
from generator.chemistry import reachable_charges as _charges


def charge_balanced_counts(counts: Mapping[int, int]) -> bool:
    """Charge balance of a composition given as {atomic number: count}: all metals, or `neutral_counts`."""
    key = _key(counts)
    if len(key) <= 1:
        return True
    if all(is_metal(z) for z, _ in key):
        return True
    return neutral_counts(counts)


class CompositionConstraint:
    """Which elements a unit (an atom or a Wyckoff orbit) may take so the crystal can still be completed.

    Args:
        allowed_z: Elements the sampler may emit.
        required: Elements that must all appear (a requested chemical system).
        charge_balance: Also require that a charge-balanced completion exists.
        formula: {atomic number: atoms per formula unit}: every crystal must have exactly this composition
            (then `charge_balance` is not checked: the composition was chosen by the caller).
    """

    exact_max_elements = 4  # up to this many allowed elements, completions are enumerated exactly

    def __init__(
        self,
        *,
        allowed_z: Iterable[int],
        required: Sequence[int] = (),
        charge_balance: bool = True,
        formula: Mapping[int, int] | None = None,
    ):
        self.allowed = tuple(sorted(int(z) for z in allowed_z))
        self.required = tuple(int(z) for z in required)
        self.charge_balance = charge_balance
        self.formula = (
            tuple(sorted((int(z), int(c)) for z, c in formula.items() if c > 0)) if formula else None
        )
        self._unit_charges = tuple(sorted({q for z in self.allowed for q in oxidation_states(z)}))
        self._any_metal = any(is_metal(z) for z in self.allowed)

    @functools.lru_cache(maxsize=20_000)  # noqa: B019 - one instance per sampling call, bounded cache
    def _exact(
        self, key: tuple[tuple[int, int], ...], remaining: tuple[int, ...], pool: tuple[int, ...]
    ) -> bool:
        """Try every way of giving the remaining units elements of `pool` (a few elements only)."""
        fills: set[tuple[int, ...]] = {(0,) * len(pool)}
        for m in remaining:
            fills = {(*f[:i], f[i] + m, *f[i + 1 :]) for f in fills for i in range(len(pool))}
        base = dict(key)
        for fill in fills:
            total = dict(base)
            for z, extra in zip(pool, fill, strict=True):
                total[z] = total.get(z, 0) + extra
            if all(total.get(z, 0) > 0 for z in self.required) and charge_balanced_counts(total):
                return True
        return False

    @functools.lru_cache(maxsize=20_000)  # noqa: B019 - one instance per sampling call, bounded cache
    def _remaining_sums(self, remaining: tuple[int, ...]) -> frozenset[int]:
        sums = {0}
        for m in remaining:
            sums = {s + m * q for s in sums for q in self._unit_charges}
        return frozenset(sums)

    def feasible(
        self, counts: Mapping[int, int], remaining: Sequence[int], *, max_species: int | None = None
    ) -> bool:
        """Whether `counts` (revealed atoms) can be completed by units of multiplicities `remaining`.

        With `max_species`, a crystal that already has that many elements must be completed with them.
        """
        if self.formula is not None:
            return self._fits_formula(_key(counts), tuple(sorted(remaining, reverse=True)))
        present = {z for z, c in counts.items() if c > 0}
        missing = [z for z in self.required if z not in present]
        if len(missing) > len(remaining):
            return False
        full = max_species is not None and len(present) >= max_species
        if full and missing:
            return False
        if not self.charge_balance:
            return True
        if not remaining:
            return charge_balanced_counts(counts)
        if len(present | set(missing)) <= 1:  # fill up with the one element: a pure element passes
            return True
        if full:
            return self._exact(_key(counts), tuple(sorted(remaining)), tuple(sorted(present)))
        if len(self.allowed) <= self.exact_max_elements:
            return self._exact(_key(counts), tuple(sorted(remaining)), self.allowed)
        # all-metal completion (intermetallic) — needs every missing required element to be a metal too
        if all(is_metal(z) for z in present) and all(is_metal(z) for z in missing) and self._any_metal:
            return True
        reach = self._remaining_sums(tuple(sorted(remaining)))
        return any(-q in reach for q in _charges(_key(counts)))

    @functools.lru_cache(maxsize=20_000)  # noqa: B019 - one instance per sampling call, bounded cache
    def _fits_formula(self, key: tuple[tuple[int, int], ...], remaining: tuple[int, ...]) -> bool:
        """Whether units of multiplicities `remaining` (largest first) complete `key` to whole formula units."""
        assert self.formula is not None
        per_unit = sum(c for _, c in self.formula)
        total = sum(c for _, c in key) + sum(remaining)
        if total % per_unit:
            return False
        have = dict(key)
        if set(have) - {z for z, _ in self.formula}:
            return False
        short = [c * (total // per_unit) - have.get(z, 0) for z, c in self.formula]
        if min(short) < 0:
            return False
        if all(m == 1 for m in remaining):
            return True  # single atoms fill any shortfall; the totals already agree
        return _fill(tuple(short), remaining)

    def allowed_for(
        self,
        counts: Mapping[int, int],
        multiplicity: int,
        remaining: Sequence[int],
        candidates: Sequence[int],
        *,
        max_species: int | None = None,
    ) -> list[bool]:
        """Feasibility of giving each candidate element to a unit of `multiplicity` atoms."""
        out = []
        for z in candidates:
            nxt = dict(counts)
            nxt[z] = nxt.get(z, 0) + multiplicity
            out.append(self.feasible(nxt, remaining, max_species=max_species))
        return out


@functools.lru_cache(maxsize=20_000)
def _fill(short: tuple[int, ...], remaining: tuple[int, ...]) -> bool:
    """Whether the units `remaining` (largest first) can be shared out to make every shortfall exactly zero."""
    if not remaining:
        return not any(short)
    m, rest = remaining[0], remaining[1:]
    tried = set()
    for i, s in enumerate(short):
        if s >= m and s not in tried:
            tried.add(s)  # equal shortfalls are interchangeable
            if _fill(tuple(sorted((*short[:i], s - m, *short[i + 1 :]), reverse=True)), rest):
                return True
    return False


def counts_of(zs: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for z in zs:
        out[int(z)] = out.get(int(z), 0) + 1
    return out


__all__ = [
    "CompositionConstraint",
    "charge_balanced_counts",
    "counts_of",
    "is_metal",
    "oxidation_states",
]
