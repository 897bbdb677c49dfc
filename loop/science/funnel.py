"""The candidate funnel: design filters, structural validity, charge balance, deduplication and novelty.

Filters run cheapest first; each candidate is removed by the first filter it fails, and the report counts
removals per filter with a reason per candidate (these become funnel metrics). Deduplication pre-buckets by
reduced formula and a neighbour-distance fingerprint (`loop.science.fingerprint`) and calls pymatgen's
StructureMatcher only inside a bucket, on structures reduced once and cached.

Units: distances Å, volumes Å³/atom, HHI on pymatgen's 0-10000 scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Structure

from generator.base import Candidate, GeneratorError, KnownStructure
from generator.chemistry import is_charge_balanced, parse_chemical_system
from generator.sanity import MIN_DISTANCE
from generator.seeds import SPLITS, Withholding, seed_loaders
from loop.design.requirements import DesignConfig
from loop.science.fingerprint import Fingerprint, fingerprint

FILTERS = (
    "elements",
    "chemical_system",
    "max_atoms",
    "hhi",
    "invalid_structure",
    "volume",
    "min_distance",
    "graph",
    "charge_balance",
    "duplicate_in_batch",
    "known",
    "not_novel",
)
"""Filter names in the order they run; `FunnelReport.removed` has one count per name."""


class FunnelError(ValueError):
    """A funnel configuration or input that cannot be used."""


class MatcherSettings(BaseModel):
    """StructureMatcher tolerances (pymatgen defaults) and the fingerprint pre-filter.

    Attributes:
        ltol: Fractional length tolerance.
        stol: Site tolerance, as a fraction of (V/N)^(1/3).
        angle_tol: Angle tolerance in degrees.
        fingerprint_tolerance: Largest fingerprint distance (dimensionless, at 1 Å³/atom) for which the
            matcher is still called. On mp_20 polymorph pairs the matcher's matches lay within 0.21.
    """

    model_config = ConfigDict(extra="forbid")

    ltol: float = Field(0.2, gt=0)
    stol: float = Field(0.3, gt=0)
    angle_tol: float = Field(5.0, gt=0)
    fingerprint_tolerance: float = Field(0.25, gt=0)

    def matcher(self) -> StructureMatcher:
        return StructureMatcher(
            ltol=self.ltol, stol=self.stol, angle_tol=self.angle_tol, primitive_cell=True, scale=True
        )


class FunnelConfig(BaseModel):
    """What the funnel keeps. Embedded in the campaign config as `generator.funnel`.

    The design rules that need only a composition (elements, cost) are the campaign's `design:` section
    (`loop.design.requirements`); the funnel applies them through that one implementation.

    Attributes:
        chemical_systems: Target systems such as "Li-Fe-P-O"; a candidate must lie inside one (empty: any).
        max_atoms: Largest number of sites in the cell.
        volume_per_atom: Accepted range of cell volume per atom, Å³.
        min_distance: Absolute minimum interatomic distance, Å.
        min_distance_factor: Pairs closer than this fraction of the sum of the two atomic radii are rejected.
        charge_balance: "allowed" (the compositions generation asks for: `generator.chemistry.classify_counts`,
            full oxidation-state lists, anion-rich and metal-rich compounds), "pymatgen" (ICSD-based
            oxidation-state guesses), "common" (SMACT-style, common oxidation states) or "off".
        allow_intermetallics: Let all-metal compositions (e.g. Cu-Au) through the charge-balance filter.
        deduplicate: Remove duplicates within the batch and of structures the campaign already knows.
        require_novel: Remove candidates matching a seed structure.
        matcher: Matcher tolerances.
    """

    model_config = ConfigDict(extra="forbid")

    chemical_systems: list[str] = Field(default_factory=list)
    max_atoms: int | None = Field(40, gt=0)
    volume_per_atom: tuple[float, float] = (4.0, 150.0)
    min_distance: float = Field(MIN_DISTANCE, ge=0)
    min_distance_factor: float = Field(0.5, ge=0)
    charge_balance: Literal["allowed", "pymatgen", "common", "off"] = "allowed"
    allow_intermetallics: bool = True
    deduplicate: bool = True
    require_novel: bool = True
    matcher: MatcherSettings = Field(default_factory=MatcherSettings)

    @field_validator("chemical_systems")
    @classmethod
    def _known_systems(cls, value: list[str]) -> list[str]:
        try:
            for system in value:
                parse_chemical_system(system)
        except GeneratorError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _volume_range(self) -> FunnelConfig:
        low, high = self.volume_per_atom
        if not 0 < low < high:
            raise ValueError(
                f"volume_per_atom must be (low, high) with 0 < low < high, got {self.volume_per_atom}"
            )
        return self


@dataclass
class _Entry:
    id: str
    origin: str
    fingerprint: Fingerprint | None  # None: computed when the entry's bucket is first searched
    source: Structure | Callable[[], Structure]
    reduced: Structure | None = None


class KnownIndex:
    """Structures the campaign knows, bucketed for fast duplicate lookup; grows incrementally.

    Entries carry an origin: "seed" (the seed data; a match means "not novel") or anything else such as
    "campaign" (a match means "already known"). Structures may be given lazily as zero-argument callables
    (e.g. reading from the campaign store); they are loaded only when a candidate lands in their bucket.
    With `add_lazy` even the fingerprint waits until then, so indexing all ~41k bundled crystals
    (`from_seed_data`) costs about a second and only the CIFs of candidates' formulas are ever parsed.
    """

    def __init__(self, *, matcher: MatcherSettings | None = None) -> None:
        self.settings = matcher or MatcherSettings()
        self._matcher = self.settings.matcher()
        self._entries: list[_Entry] = []
        self._buckets: dict[str, list[int]] = {}
        self._vectors: dict[str, np.ndarray] = {}
        self.n_loaded = 0  # lazily given structures loaded so far

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_seed_data(
        cls,
        *,
        splits: Sequence[str] = SPLITS,
        matcher: MatcherSettings | None = None,
        withhold: Withholding | None = None,
    ) -> KnownIndex:
        """Index every bundled crystal (mp_20 and mpts_52, origin "seed") except the withheld ones, without
        parsing any CIF up front."""
        index = cls(matcher=matcher)
        for ident, formula, loader in seed_loaders(splits=splits, withhold=withhold):
            index.add_lazy(id=ident, formula=formula, loader=loader, origin="seed")
        return index

    def add_lazy(
        self, *, id: str, formula: str, loader: Callable[[], Structure], origin: str = "campaign"
    ) -> None:
        """Add a structure known only by its reduced formula until a candidate with that formula arrives.

        Args:
            id: Its id.
            formula: Its pymatgen reduced formula (the bucket key).
            loader: Zero-argument callable returning the structure.
            origin: "seed" for seed data, else e.g. "campaign".
        """
        self._entries.append(_Entry(id=id, origin=origin, fingerprint=None, source=loader))
        self._buckets.setdefault(formula, []).append(len(self._entries) - 1)
        self._vectors.pop(formula, None)

    def _load(self, entry: _Entry) -> Structure:
        if callable(entry.source):
            entry.source = entry.source()
            self.n_loaded += 1
        return entry.source

    def add(
        self,
        *,
        id: str,
        structure: Structure | Callable[[], Structure],
        fp: Fingerprint | str | None = None,
        origin: str = "campaign",
        reduced: Structure | None = None,
    ) -> Fingerprint:
        """Add one structure.

        Args:
            id: Its id in the campaign store or seed data.
            structure: The structure, or a callable returning it (needed only if its fingerprint is given).
            fp: Its stored fingerprint (object or `to_str` text); computed when omitted.
            origin: "seed" for seed data, else e.g. "campaign".
            reduced: Its `reduce_for_matching` form, if already computed.

        Returns:
            The fingerprint, for the caller to store beside the structure.
        """
        if fp is None:
            if callable(structure):
                structure = structure()
            fp = fingerprint(structure)
        elif isinstance(fp, str):
            fp = Fingerprint.from_str(fp)
        self._entries.append(_Entry(id=id, origin=origin, fingerprint=fp, source=structure, reduced=reduced))
        self._buckets.setdefault(fp.formula, []).append(len(self._entries) - 1)
        self._vectors.pop(fp.formula, None)
        return fp

    def add_known(self, known: Iterable[KnownStructure], *, origin: str = "seed") -> None:
        """Add `KnownStructure`s (e.g. from `generator.seeds.load_seeds`)."""
        for item in known:
            self.add(id=item.id, structure=item.structure, origin=origin)

    def _reduced(self, entry: _Entry) -> Structure:
        if entry.reduced is None:
            entry.reduced = reduce_for_matching(self._load(entry), self._matcher)
        return entry.reduced

    def find(
        self,
        structure: Structure,
        *,
        fp: Fingerprint | None = None,
        cache: dict[str, Any] | None = None,
        seed: bool = True,
        other: bool = True,
    ) -> tuple[str, str] | None:
        """Find a known structure matching `structure`.

        Args:
            structure: The query.
            fp: Its fingerprint, if already computed.
            cache: A dict kept by the caller across lookups of the same query; holds its reduced form
                under "reduced" so it is computed at most once.
            seed: Search entries of origin "seed".
            other: Search entries of any other origin.

        Returns:
            (id, origin) of the first match, closest fingerprint first, or None.
        """
        fp = fp or fingerprint(structure)
        bucket = self._buckets.get(fp.formula)
        if not bucket:
            return None
        vectors = self._vectors.get(fp.formula)
        if vectors is None:
            for i in bucket:
                entry = self._entries[i]
                if entry.fingerprint is None:
                    entry.fingerprint = fingerprint(self._load(entry))
            width = max(len(self._entries[i].fingerprint.vector) for i in bucket)
            vectors = np.full((len(bucket), width), np.inf)
            for row, i in enumerate(bucket):
                vec = self._entries[i].fingerprint.vector
                vectors[row, : len(vec)] = vec
            self._vectors[fp.formula] = vectors
        if vectors.shape[1] != len(fp.vector):
            return None
        dist = (
            np.max(np.abs(vectors - np.asarray(fp.vector)), axis=1)
            if len(fp.vector)
            else np.zeros(len(bucket))
        )
        order = np.argsort(dist)
        tol = self.settings.fingerprint_tolerance
        cache = cache if cache is not None else {}
        for row in order:
            if dist[row] > tol:
                break
            entry = self._entries[bucket[row]]
            if not (seed if entry.origin == "seed" else other):
                continue
            if "reduced" not in cache:
                cache["reduced"] = reduce_for_matching(structure, self._matcher)
            reduced = cache["reduced"]
            candidate = self._reduced(entry)
            if len(candidate) != len(reduced):
                # primitive cells of matching structures have the same size (no supercell matching)
                continue
            if self._matcher.fit(reduced, candidate, skip_structure_reduction=True):
                return entry.id, entry.origin
        return None


def reduce_for_matching(structure: Structure, matcher: StructureMatcher) -> Structure:
    """Primitive, Niggli-reduced, element-only copy, as StructureMatcher would compute on every call."""
    plain = structure.copy()
    plain.remove_oxidation_states()
    return matcher._get_reduced_structure(plain, primitive_cell=True, niggli=True)


@dataclass
class Rejection:
    """Why one candidate was removed.

    Attributes:
        index: Position of the candidate in the input batch.
        filter: Name of the filter (one of `FILTERS`).
        reason: Human-readable detail.
        match_id: Id of the matching structure for "known"/"not_novel"; for "duplicate_in_batch", the input
            position (as text) of the earlier candidate that was kept.
    """

    index: int
    filter: str
    reason: str
    match_id: str | None = None


@dataclass
class FunnelReport:
    """Counts per filter and a reason per rejected candidate.

    Attributes:
        n_in: Candidates offered.
        n_kept: Candidates kept.
        removed: Filter name -> number removed by it (every name in `FILTERS`, zeros included).
        rejections: One entry per removed candidate.
        kept_indices: Input positions of the kept candidates, in output order.
        fingerprints: `Fingerprint.to_str()` of each kept candidate, for the store and `KnownIndex.add`.
    """

    n_in: int = 0
    n_kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    rejections: list[Rejection] = field(default_factory=list)
    kept_indices: list[int] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)

    def reject(self, index: int, filter_: str, reason: str, match_id: str | None = None) -> None:
        self.removed[filter_] += 1
        self.rejections.append(Rejection(index=index, filter=filter_, reason=reason, match_id=match_id))

    def metrics(self, prefix: str = "funnel_") -> dict[str, float]:
        """Flat numbers for a tracker: in, kept and removed per filter."""
        out = {f"{prefix}in": float(self.n_in), f"{prefix}kept": float(self.n_kept)}
        out.update({f"{prefix}removed_{k}": float(v) for k, v in self.removed.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "n_in": self.n_in,
            "n_kept": self.n_kept,
            "removed": dict(self.removed),
            "rejections": [vars(r).copy() for r in self.rejections],
            "kept_indices": list(self.kept_indices),
            "fingerprints": list(self.fingerprints),
        }


class Funnel:
    """Apply a `FunnelConfig` to batches of candidates.

    Args:
        config: The filters to apply.
        known: Everything the campaign already knows (seed data with origin "seed", discoveries otherwise).
            The funnel only reads it; the loop adds structures it stores.
        design: The design requirements whose composition rules (elements, cost) it applies; None: none.
    """

    def __init__(
        self,
        config: FunnelConfig | None = None,
        *,
        known: KnownIndex | None = None,
        design: DesignConfig | None = None,
    ) -> None:
        self.config = config or FunnelConfig()
        self.known = known if known is not None else KnownIndex(matcher=self.config.matcher)
        self.design = design or DesignConfig()

    def run(
        self,
        candidates: Sequence[Candidate],
        *,
        chemical_systems: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[Candidate], FunnelReport]:
        """Filter a batch.

        Args:
            candidates: The batch, in priority order (the first of two duplicates is kept).
            chemical_systems: Overrides `config.chemical_systems` for this batch (e.g. the round's targets).
            progress: Called with 1 after each candidate is judged.

        Returns:
            The kept candidates (input order) and the report.

        Raises:
            FunnelError: On an unparseable chemical system.
        """
        cfg = self.config
        try:
            systems = [parse_chemical_system(s) for s in (chemical_systems or cfg.chemical_systems)]
        except GeneratorError as exc:
            raise FunnelError(str(exc)) from None
        report = FunnelReport(n_in=len(candidates))
        batch = KnownIndex(matcher=self.known.settings)
        kept: list[Candidate] = []
        for index, cand in enumerate(candidates):
            if progress is not None and index:
                progress(1)
            verdict = self._design(cand.structure, systems)
            verdict = verdict or self._validity(cand.structure)
            if verdict is None and cfg.charge_balance != "off":
                comp = cand.structure.composition
                if not is_charge_balanced(
                    comp, rule=cfg.charge_balance, allow_intermetallics=cfg.allow_intermetallics
                ):
                    verdict = ("charge_balance", f"{comp.reduced_formula} has no neutral oxidation states")
            if verdict is not None:
                report.reject(index, *verdict)
                continue
            fp = fingerprint(cand.structure)
            if cfg.deduplicate or cfg.require_novel:
                cache: dict[str, Any] = {}
                if cfg.deduplicate:
                    hit = batch.find(cand.structure, fp=fp, cache=cache)
                    if hit is not None:
                        report.reject(
                            index, "duplicate_in_batch", f"same structure as candidate {hit[0]}", hit[0]
                        )
                        continue
                hit = self.known.find(
                    cand.structure, fp=fp, cache=cache, seed=cfg.require_novel, other=cfg.deduplicate
                )
                if hit is not None:
                    match_id, origin = hit
                    if origin == "seed":
                        report.reject(index, "not_novel", f"matches seed structure {match_id}", match_id)
                    else:
                        report.reject(index, "known", f"matches known structure {match_id}", match_id)
                    continue
                batch.add(
                    id=str(index),
                    structure=cand.structure,
                    fp=fp,
                    origin="batch",
                    reduced=cache.get("reduced"),
                )
            kept.append(cand)
            report.kept_indices.append(index)
            report.fingerprints.append(fp.to_str())
        if progress is not None and candidates:
            progress(1)
        report.n_kept = len(kept)
        return kept, report

    def _design(self, structure: Structure, systems: list[frozenset[str]]) -> tuple[str, str] | None:
        cfg = self.config
        composition = structure.composition
        if (
            self.design.elements.active
            and (verdict := self.design.elements.assess(composition)).status != "pass"
        ):
            return "elements", verdict.detail
        elements = {el.symbol for el in composition.element_composition.elements}
        if systems and not any(elements <= s for s in systems):
            return "chemical_system", f"{'-'.join(sorted(elements))} outside the target chemical systems"
        if cfg.max_atoms is not None and len(structure) > cfg.max_atoms:
            return "max_atoms", f"{len(structure)} atoms > {cfg.max_atoms}"
        # A composition without HHI data is removed too: its supply risk cannot be judged.
        if self.design.cost.active and (verdict := self.design.cost.assess(composition)).status != "pass":
            return (
                "hhi",
                verdict.detail if verdict.value is None else f"{verdict.value:g} above {verdict.detail}",
            )
        return None

    def _validity(self, structure: Structure) -> tuple[str, str] | None:
        cfg = self.config
        n = len(structure)
        if n == 0:
            return "invalid_structure", "empty structure"
        if not structure.is_ordered:
            return "invalid_structure", "partial occupancies; give an ordered structure"
        if not (np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords))):
            return "invalid_structure", "non-finite lattice or coordinates"
        vpa = structure.volume / n
        low, high = cfg.volume_per_atom
        if not low <= vpa <= high:
            return "volume", f"volume {vpa:.2f} Å³/atom outside [{low}, {high}]"
        short = shortest_contact(structure, min_distance=cfg.min_distance, factor=cfg.min_distance_factor)
        if short is not None:
            a, b, d, limit = short
            return "min_distance", f"{a}-{b} distance {d:.2f} Å < {limit:.2f} Å"
        # The screen could not predict it, nor the emulator train on it, however plausible the cell. (Imported
        # here: the campaign config imports this module, and the emulator room imports CHGNet.)
        from emulator.graphs import graph_problem

        if (problem := graph_problem(structure)) is not None:
            return "graph", problem
        return None


def _radius(symbol: str) -> float:
    radius = Element(symbol).atomic_radius
    return float(radius) if radius is not None else 1.0


def shortest_contact(
    structure: Structure, *, min_distance: float, factor: float
) -> tuple[str, str, float, float] | None:
    """The worst too-short pair, if any.

    A pair (i, j) is too short when d_ij < max(min_distance, factor * (r_i + r_j)), r = atomic radius in Å.

    Returns:
        (species i, species j, distance Å, limit Å) of the pair with the smallest d/limit, or None.
    """
    symbols = [site.specie.symbol for site in structure]
    radii = np.array([_radius(s) for s in symbols])
    cutoff = max(min_distance, factor * 2 * float(radii.max()))
    if cutoff <= 0:
        return None
    centres, neighbours, _, dists = structure.get_neighbor_list(cutoff)
    if len(centres) == 0:
        return None
    limits = np.maximum(min_distance, factor * (radii[centres] + radii[neighbours]))
    ratio = dists / limits
    worst = int(np.argmin(ratio))
    if ratio[worst] >= 1.0:
        return None
    return symbols[centres[worst]], symbols[neighbours[worst]], float(dists[worst]), float(limits[worst])
