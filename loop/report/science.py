"""The science report of a campaign: one self-contained HTML file a scientist reads (`matloop report`).

Everything is read from the campaign store, during or after a run, with the one stability vocabulary of
`loop.science.verdicts`. The discoveries are judged against the campaign's *final* oracle hull (every successful label with
the campaign's oracle settings); the per-round figures are `loop.views.round_science`'s, each round judged on the hull at
its end, the same numbers MLflow and `matloop status` show. Figures are embedded as base64 PNG, structures as inline
SVG and CIF data links; the file loads nothing from anywhere and runs no script.

What counts (units eV/atom):

* an **oracle call** is one query of a round >= 1 (a failed call costs as much as a successful one); round-0
  reference labels are reported separately;
* a **hit** (discovery) is a call whose structure is stable or near-stable on the final hull and is not marked as a
  duplicate of an earlier label;
* a **rediscovery** is the first call whose structure (or the oracle's relaxed version of it) matches a withheld
  known phase with pymatgen's `StructureMatcher`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

import oracle  # noqa: F401  (registers the oracles)
from loop.config import CampaignConfig
from loop.design.requirements import REQUIREMENTS, UNITS
from loop.errors import InputError
from loop.report import plots
from loop.report.status import known_hull_distance, next_stage
from loop.report.structure_view import structure_svg
from loop.science.acquisition import PrecomputedEnsembleRegressor, candidate_matrix, get_strategy
from loop.science.hull import HullEntry, OracleHull
from loop.science.structures import SYMPREC, space_group
from loop.science.verdicts import StabilityRule, Verdict
from loop.store import CampaignStore, StoredResult, StructureRow
from loop.views.candidate_pool import first_round
from loop.views.novelty import Novelty, stored_novelty
from loop.views.round_science import (
    RoundScience,
    campaign_science,
    origin,
    prevalence,
    random_expectation,
    round_hull,
    round_roles,
    source_yield,
)
from oracle.base import OracleSettings, get_oracle_class


class ReportError(InputError):
    """The report cannot be written (no campaign in the workdir, output exists, ...); the message says the fix."""


# -- the data ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelOfTheory:
    """The oracle that defines the campaign's hull.

    Attributes:
        kind: Oracle name (e.g. "gpaw", "emt", "mlff").
        theory: What its energies are, as the oracle class declares: "dft", "surrogate" (a machine-learned force
            field) or "toy"; "unknown" when the oracle kind is not installed here (then it is not taken for DFT).
        settings: The physics settings of the oracle as configured.
        settings_hash: Key of the campaign's oracle results in the store.
    """

    kind: str
    theory: str
    settings: dict[str, Any]
    settings_hash: str

    @property
    def is_dft(self) -> bool:
        return self.theory == "dft"

    @property
    def what(self) -> str:
        """What the oracle is, as a noun phrase."""
        return {
            "dft": "DFT",
            "surrogate": "a machine-learned surrogate",
            "toy": "a toy potential",
            "non-dft": "a non-DFT potential",
        }.get(self.theory, "an oracle kind unknown here")

    @property
    def description(self) -> str:
        return f"{self.kind} ({self.what})" if self.is_dft else f"{self.kind} ({self.what}, not DFT)"


@dataclass
class Call:
    """One oracle call of a round >= 1, in campaign order (`index` counts from 1)."""

    index: int
    round: int
    hash: str
    status: str
    e_hull: float | None
    verdict: Verdict
    duplicate_of: str | None
    result: StoredResult | None

    @property
    def is_hit(self) -> bool:
        return self.verdict in (Verdict.STABLE, Verdict.NEAR_STABLE) and self.duplicate_of is None

    @property
    def relax_unconverged(self) -> bool:
        """The oracle's relaxation stopped at its step limit: the energy, and so E_hull, is an upper bound."""
        return bool(
            self.result is not None
            and self.result.ok
            and self.result.metadata.get("relax_converged") is False
        )

    @property
    def relaxation(self) -> str:
        """The oracle relaxation in a few words ("single point", "converged in 3 steps", "not converged (6 steps)")."""
        meta = self.result.metadata if self.result is not None and self.result.ok else {}
        steps = meta.get("relax_steps_taken")
        n = f"{steps} step{'' if steps == 1 else 's'}"
        if meta.get("relax_converged") is None:
            return "single point" if steps in (None, 0) else n
        if self.relax_unconverged:
            return f"not converged ({n}): E_hull is an upper bound"
        return f"converged in {n}"


@dataclass
class PoolCandidate:
    """A candidate screened in the last round: queried (with its call) or left in the pool. Energies eV/atom.

    Attributes:
        hash: The emulator-relaxed structure (what an oracle call would label).
        formula / natoms / source: What it is and which generator made it.
        e_hull / e_hull_std: The emulator's calibrated E_hull and σ.
        score: The acquisition strategy's utility (before the diversity penalty), None when it cannot be placed.
        first_round: The round it was first screened in (carried in the pool since).
        call: Its oracle call index when it was queried, else None.
        structure: The emulator-relaxed structure (for its CIF).
    """

    hash: str
    formula: str
    natoms: int
    source: str
    e_hull: float | None
    e_hull_std: float | None
    score: float | None
    first_round: int
    call: int | None
    structure: Structure | None


@dataclass
class Discovery:
    """A hit with its provenance. Energies eV/atom."""

    call: Call
    formula: str
    natoms: int
    space_group: str
    source: str
    parent: str | None
    provenance: str
    predicted_e_hull: float | None
    predicted_std: float | None
    rediscovers: str | None = None
    vs_known: float | None = None
    novelty: Novelty | None = None  # new, or the known crystal it is (`loop.views.novelty`)


@dataclass
class Withheld:
    """A known phase withheld from the campaign, and whether (when, after how many calls) the loop found it again."""

    id: str
    formula: str
    structure: Structure | None
    space_group: Any = None
    found: Call | None = None


@dataclass
class ScienceData:
    """Everything the report shows, as plain data."""

    workdir: Path
    campaign: str
    chemical_systems: list[str]
    level: LevelOfTheory
    rule: StabilityRule
    stage: str
    stopped_because: str | None
    n_references: int
    reference_ids: dict[str, str]
    rounds: list[RoundScience]  # rounds >= 1 (`loop.views.round_science`: what MLflow and status read too)
    calls: list[Call]
    discoveries: list[Discovery]
    withheld: list[Withheld]
    withheld_without_structure: list[str]
    calibration: list[tuple[int, float, float]]  # (round, σ, |error|) eV/atom
    source_yield: dict[str, dict[str, int]]
    hull: Any = None  # loop.science.hull.OracleHull, None before any label
    notes: list[str] = field(default_factory=list)
    structures: dict[str, Structure] = field(
        default_factory=dict
    )  # each discovery's oracle-relaxed structure
    pool: list[PoolCandidate] = field(default_factory=list)  # the last round's screened candidates
    pool_round: int | None = None
    strategy: str = ""
    prevalence: dict[int, tuple[float, int]] = field(
        default_factory=dict
    )  # `loop.views.round_science.prevalence`
    round_hulls: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)  # (round, hull, roles)
    shortlist: list[dict[str, Any]] = field(
        default_factory=list
    )  # `loop.runtime.shortlist` rows of the latest round


# -- reading the store ------------------------------------------------------------------------------------------------
def _check_paths(workdir: Path, out: Path, *, overwrite: bool) -> None:
    if not workdir.exists():
        raise ReportError(f"{workdir}: no such directory; pass the --workdir of a campaign")
    if not workdir.is_dir():
        raise ReportError(f"{workdir}: not a directory; pass the --workdir of a campaign")
    if not CampaignStore.exists_in(workdir):
        raise ReportError(
            f"{workdir}: not a campaign (no {CampaignStore.FILENAME}); run `matloop run CONFIG --workdir {workdir}` first"
        )
    if out.exists() and out.is_dir():
        raise ReportError(f"{out}: is a directory; pass a file name such as {out / 'report.html'}")
    if out.exists() and not overwrite:
        raise ReportError(f"{out}: exists; pass --force to overwrite it or choose another --out")
    if not out.parent.is_dir():
        raise ReportError(f"{out.parent}: no such directory for the report; create it first")


def _level_of_theory(config: Mapping[str, Any], settings_hash: str) -> LevelOfTheory:
    oracle_cfg = dict(config.get("oracle") or {})
    kind = str(oracle_cfg.get("kind", "unknown"))
    try:
        cls = get_oracle_class(kind)
    except KeyError:  # a campaign of an oracle this installation does not have
        cls = None
    if cls is None:
        theory = "unknown"
    else:
        declared = getattr(cls, "level_of_theory", None)
        theory = str(declared) if declared else ("dft" if getattr(cls, "is_dft", True) else "non-dft")
        if theory == "dft" and not getattr(cls, "is_dft", True):
            theory = "non-dft"
    # What does not change the physics of a label (limits, retries, parallel layout) stays out of the report.
    skip = {"kind", *(cls.Settings if cls is not None else OracleSettings).non_physics_fields}
    settings = {k: v for k, v in oracle_cfg.items() if k not in skip}
    return LevelOfTheory(kind=kind, theory=theory, settings=settings, settings_hash=settings_hash)


def _rule(config: Mapping[str, Any]) -> StabilityRule:
    if "near_stable" in config:
        return StabilityRule(near_stable=float(config["near_stable"]))
    return StabilityRule(near_stable=float(CampaignConfig.model_fields["near_stable"].default))


def _oracle_hull(results: Sequence[StoredResult], structures: Mapping[str, Structure]) -> Any:
    entries = [
        HullEntry.from_total_energy(
            entry_id=r.hash, composition=structures[r.hash].composition, energy=r.energy
        )
        for r in results
        if r.ok and r.energy is not None and math.isfinite(r.energy) and r.hash in structures
    ]
    return OracleHull.from_entries(entries) if entries else None


def _duplicate_of(result: StoredResult | None) -> str | None:
    if result is None:
        return None
    for where in (result.metadata, result.settings):
        value = (where or {}).get("duplicate_of")
        if value:
            return str(value)
    return getattr(result, "duplicate_of", None) or None


def _final_hash(result: StoredResult | None) -> str | None:
    """The hash of the oracle's relaxed structure when it kept one (the label's energy belongs to it)."""
    if result is None:
        return None
    value = getattr(result, "final_hash", None)
    return None if value is None or value == result.hash else str(value)


def _describe_provenance(row: StructureRow | None) -> tuple[str | None, str]:
    """(parent, what was done) in a few words, from a generated structure's stored provenance."""
    if row is None:
        return None, ""
    info = dict(row.provenance)
    source = row.source
    parent = row.parent or info.get("parent") or info.get("material_id")
    if source == "substitution":
        subs = info.get("substitutions") or {}
        text = ", ".join(f"{a}→{b}" for a, b in subs.items())
        if info.get("operation") == "saps":
            text += f" on {info.get('fraction', '?')} of Wyckoff {info.get('wyckoff', '?')}"
            text += f" (space group {info.get('parent_spacegroup', '?')} → {info.get('spacegroup', '?')})"
        if info.get("score") is not None:
            text += f", p = {float(info['score']):.3g}"
        return (None if parent is None else str(parent)), text or "substitution"
    if source == "diffusion":
        conditions = info.get("conditions") or {}
        cond = ", ".join(f"{k} = {v}" for k, v in conditions.items()) or "unconditioned"
        extra = []
        if info.get("guidance_scale") is not None:
            extra.append(f"guidance {info['guidance_scale']}")
        if info.get("steps") is not None:
            extra.append(f"{info['steps']} steps")
        if info.get("checkpoint"):
            extra.append(str(info["checkpoint"]))
        return None, cond + (f" ({', '.join(extra)})" if extra else "")
    if source == "random_search":
        bits = [str(info.get("formula", ""))]
        if info.get("formula_units") is not None:
            bits.append(f"Z = {info['formula_units']}")
        if info.get("space_group") is not None:
            bits.append(f"space group {info['space_group']}")
        return None, ", ".join(b for b in bits if b) or "random search"
    if source == "interstitial":
        text = f"{info.get('guest', '?')} on {info.get('holes', '?')} holes of {parent or 'the metal'}"
        if info.get("shortest_guest_distance") is not None:
            text += f", shortest {info.get('guest', '?')}-{info.get('guest', '?')} {info['shortest_guest_distance']} Å"
        return (None if parent is None else str(parent)), text
    if source == "seed":
        return (None if parent is None else str(parent)), str(info.get("role", "known structure"))
    return (None if parent is None else str(parent)), ", ".join(f"{k} = {v}" for k, v in info.items())


def _settings_text(settings: Mapping[str, Any]) -> str:
    parts = []
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        parts.append(f"{key} {value}")
    return "; ".join(parts)


def _withheld(store: CampaignStore, config: Mapping[str, Any]) -> tuple[list[Withheld], list[str]]:
    """Withheld known phases and, for a store that does not record them, the config's `withhold:` entries.

    The campaign records each withheld crystal in the store's meta `withheld` (material_id, formula, spacegroup,
    structure as a pymatgen dict); structures stored with source "withheld" are read too.
    """
    found: dict[str, Withheld] = {}
    meta = store.get_meta("withheld")
    for k, item in enumerate(meta if isinstance(meta, list) else []):
        if not isinstance(item, dict):
            continue
        structure = None
        if isinstance(item.get("structure"), dict):
            try:
                structure = Structure.from_dict(item["structure"])
            except Exception:
                structure = None
        if structure is None and item.get("hash") and store.has_structure(str(item["hash"])):
            structure = store.get_structure(str(item["hash"]))
        wid = str(item.get("material_id") or item.get("id") or item.get("hash") or f"withheld-{k + 1}")
        formula = str(item.get("formula") or (structure.composition.reduced_formula if structure else "?"))
        group = item.get("spacegroup")
        found[wid] = Withheld(id=wid, formula=formula, structure=structure, space_group=group)
    rows = store.structure_rows(where="source = ?", params=("withheld",))
    structures = store.get_structures([r.hash for r in rows])
    for r in rows:
        wid = str(r.provenance.get("material_id") or r.parent or r.hash)
        if wid not in found:
            found[wid] = Withheld(id=wid, formula=r.reduced_formula, structure=structures.get(r.hash))
    listed = config.get("withhold") or []
    # Only a store that records nothing leaves the config's entries (ids, formulas, all_compounds) unresolved.
    unresolved = [] if meta is not None or found else [str(x) for x in listed]
    return list(found.values()), unresolved


def _match_rediscoveries(
    withheld: list[Withheld], calls: list[Call], structures: Mapping[str, Structure]
) -> None:
    matcher = StructureMatcher()
    for w in withheld:
        if w.structure is None:
            continue
        formula = w.structure.composition.reduced_formula
        for call in calls:
            if call.status != "ok":
                continue
            tried = [structures.get(call.hash), structures.get(_final_hash(call.result) or "")]
            if any(
                s is not None and s.composition.reduced_formula == formula and matcher.fit(s, w.structure)
                for s in tried
            ):
                w.found = call
                break


def collect(workdir: Path) -> ScienceData:
    """Read a campaign's store into `ScienceData` (read-only; safe while the campaign runs).

    Raises:
        ReportError: `workdir` holds no campaign.
    """
    workdir = Path(workdir)
    if not CampaignStore.exists_in(workdir):
        raise ReportError(f"{workdir}: not a campaign (no {CampaignStore.FILENAME})")
    store = CampaignStore.in_workdir(workdir)
    try:
        identity = store.get_meta("identity")
        if not identity:
            raise ReportError(
                f"{workdir}: {CampaignStore.FILENAME} holds no campaign yet; run `matloop run` first"
            )
        config = store.get_meta("config") or {}
        level = _level_of_theory(config, str(identity.get("oracle", "")))
        rule = _rule(config)
        results = store.oracle_results(settings_hash=level.settings_hash or None)
        by_hash = {r.hash: r for r in results}
        rows = {r.hash: r for r in store.structure_rows()}
        structures = store.get_structures(list(by_hash))
        hull = _oracle_hull(results, structures)
        e_hull = hull.entry_e_above_hull() if hull is not None else {}

        queries = store.queries_by_round()
        reference_ids = {
            q.hash: str((row.parent if (row := rows.get(q.hash)) else None) or "") for q in queries.get(0, [])
        }
        calls: list[Call] = []
        for q_round, q in ((r, q) for r, qs in sorted(queries.items()) if r >= 1 for q in qs):
            res = by_hash.get(q.hash)
            eh = e_hull.get(q.hash)
            eh = None if eh is None or not math.isfinite(eh) else float(eh)
            calls.append(
                Call(
                    index=len(calls) + 1,
                    round=q_round,
                    hash=q.hash,
                    status="pending" if res is None else res.status,
                    e_hull=eh,
                    verdict=rule.classify(eh),
                    duplicate_of=_duplicate_of(res),
                    result=res,
                )
            )
        predictions = {
            (rnd, p.relaxed_hash): p
            for rnd, preds in store.predictions_by_round().items()
            for p in preds
            if p.relaxed_hash
        }

        sciences = campaign_science(store)
        rounds = [x for x in sciences if x.round >= 1]
        calibration = [
            (x.round, sd, abs(pred - true)) for x in rounds for pred, sd, true in x.screening_pairs
        ]

        withheld, unmatched = _withheld(store, config)
        finals = [h for c in calls if (h := _final_hash(c.result))]
        _match_rediscoveries(withheld, calls, store.get_structures([c.hash for c in calls] + finals))
        rediscovered = {w.found.hash: w.id for w in withheld if w.found is not None}

        # On the final hull a discovery that lowered it reads 0.000; against the known phases alone (the round-0
        # references) it shows by how much it beat them.
        vs_known = known_hull_distance(
            [c.hash for c in calls if c.is_hit],
            results={h: r for h, r in by_hash.items() if r.ok},
            rows=rows,
            first=store.first_query_rounds(),
        )
        discoveries = []
        novelty = stored_novelty(store)
        for c in calls:
            if not c.is_hit:
                continue
            made_from = origin(rows, c.hash)
            parent, what = _describe_provenance(made_from)
            if parent in rows:  # a structure of this campaign (an earlier discovery or reference)
                parent = f"{rows[parent].reduced_formula} {parent} (this campaign)"
            p = predictions.get((c.round, c.hash))
            s = structures.get(c.hash)
            discoveries.append(
                Discovery(
                    call=c,
                    formula=s.composition.reduced_formula
                    if s is not None
                    else (row.reduced_formula if (row := rows.get(c.hash)) else "?"),
                    natoms=len(s) if s is not None else (row.nsites if (row := rows.get(c.hash)) else 0),
                    space_group=space_group(structures.get(_final_hash(c.result) or c.hash, s)),
                    source="?" if made_from is None else made_from.source,
                    parent=parent,
                    provenance=what,
                    predicted_e_hull=None if p is None else p.e_hull,
                    predicted_std=None if p is None else p.e_hull_std,
                    rediscovers=rediscovered.get(c.hash),
                    vs_known=vs_known.get(c.hash),
                    novelty=novelty.get(c.hash),
                )
            )
        discoveries.sort(
            key=lambda d: (d.call.e_hull if d.call.e_hull is not None else math.inf, d.call.index)
        )

        yields = (
            source_yield(sciences, rounds=range(1, max(x.round for x in sciences) + 1)) if sciences else {}
        )
        rnd, stage = next_stage(store)
        pool_round, pool, strategy = _pool(store, config, calls)
        judged = [x.round for x in sciences if x.judged]
        notes = []
        if not calls:
            notes.append("No oracle call after round 0 yet: the hull holds the references only.")
        return ScienceData(
            workdir=workdir,
            campaign=str(identity.get("name", "?")),
            chemical_systems=list(identity.get("chemical_systems") or []),
            level=level,
            rule=rule,
            stage="finished" if stage is None else f"round {rnd}, next stage {stage}",
            stopped_because=store.get_meta("stopped_because"),
            n_references=len(reference_ids),
            reference_ids=reference_ids,
            rounds=rounds,
            calls=calls,
            discoveries=discoveries,
            withheld=withheld,
            withheld_without_structure=unmatched,
            calibration=calibration,
            source_yield=yields,
            hull=hull,
            notes=notes,
            structures={
                d.call.hash: s
                for d in discoveries
                if (
                    s := structures.get(_final_hash(d.call.result) or d.call.hash)
                    or structures.get(d.call.hash)
                )
            },
            pool=pool,
            pool_round=pool_round,
            strategy=strategy,
            prevalence=prevalence(store, near_stable=rule.near_stable),
            round_hulls=[(k, round_hull(store, k), round_roles(store, sciences, k)) for k in judged[-12:]],
            shortlist=store.shortlist(),
        )
    finally:
        store.close()


def _utilities(
    config: Mapping[str, Any], mean: Sequence[float], std: Sequence[float], formulas: Sequence[str]
) -> list[float | None]:
    """The campaign's acquisition utility of each candidate (before the diversity penalty), as the acquire stage
    computes it with `loop.science.acquisition` (`p_ground_state` weighs the candidates of one formula against each
    other); None for a candidate that cannot be placed, or for all when the stored config is not readable."""
    try:
        campaign = CampaignConfig.model_validate(config)
    except ValueError:  # a store written by another version: the table goes without scores
        return [None] * len(mean)
    placed = [
        i for i, (m, sd) in enumerate(zip(mean, std, strict=True)) if math.isfinite(m) and math.isfinite(sd)
    ]
    out: list[float | None] = [None] * len(mean)
    if not placed:
        return out
    X = candidate_matrix(len(placed))
    model = PrecomputedEnsembleRegressor(mean=[mean[i] for i in placed], std=[std[i] for i in placed]).fit(X)
    rows, values = get_strategy(campaign.acquisition.strategy)(
        model,
        X,
        n_instances=len(placed),
        groups=[formulas[i] for i in placed],
        **campaign.acquisition.strategy_arguments(rule=campaign.stability_rule),
    )
    for row, value in zip(rows, values, strict=True):
        out[placed[int(row)]] = float(value)
    return out


def _pool(
    store: CampaignStore, config: Mapping[str, Any], calls: Sequence[Call]
) -> tuple[int | None, list[PoolCandidate], str]:
    """The last screened round's candidates as acquisition saw them (one per relaxed structure, none labelled in an
    earlier round), best acquisition score first."""
    by_round = store.predictions_by_round()
    screened = [k for k, preds in by_round.items() if k >= 1 and preds]
    if not screened:
        return None, [], ""
    rnd = max(screened)
    settings_hash = (store.get_meta("identity") or {}).get("oracle")
    labelled_before = {
        r.hash for r in store.oracle_results(settings_hash=settings_hash) if (r.round or 0) < rnd
    }
    seen: dict[str, Any] = {}
    for p in by_round[rnd]:
        if p.relaxed_hash and p.relaxed_hash not in seen and p.relaxed_hash not in labelled_before:
            seen[p.relaxed_hash] = p
    preds = list(seen.values())
    structures = store.get_structures(list(seen))
    rows = {r.hash: r for r in store.structure_rows(where="round <= ?", params=(rnd,))}
    nan = float("nan")
    formulas = [structures[h].composition.reduced_formula if h in structures else h for h in seen]
    scores = _utilities(
        config,
        [nan if p.e_hull is None else float(p.e_hull) for p in preds],
        [nan if p.e_hull_std is None else float(p.e_hull_std) for p in preds],
        formulas,
    )
    call_of = {c.hash: c.index for c in calls}
    out = []
    for p, formula, score in zip(preds, formulas, scores, strict=True):
        made_from = origin(rows, p.hash)
        s = structures.get(p.relaxed_hash)
        out.append(
            PoolCandidate(
                hash=str(p.relaxed_hash),
                formula=formula,
                natoms=0 if s is None else len(s),
                source="?" if made_from is None else made_from.source,
                e_hull=p.e_hull,
                e_hull_std=p.e_hull_std,
                score=score,
                first_round=first_round(p, round=rnd),
                call=call_of.get(str(p.relaxed_hash)),
                structure=s,
            )
        )
    out.sort(
        key=lambda c: (
            -(c.score if c.score is not None else -math.inf),
            c.e_hull if c.e_hull is not None else math.inf,
        )
    )
    strategy = str((config.get("acquisition") or {}).get("strategy", ""))
    return rnd, out, strategy


# -- figures ----------------------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures(data: ScienceData) -> dict[str, tuple[str, str]]:
    """The report's figures: key -> (base64 PNG, caption); figures without data are left out."""
    out: dict[str, tuple[str, str]] = {}
    roles: dict[str, str] = {h: "reference" for h in data.reference_ids}
    for d in data.discoveries:
        roles[d.call.hash] = "rediscovery" if d.rediscovers else "discovery"
    for w in data.withheld:
        if w.found is not None:
            roles[w.found.hash] = "rediscovery"
    band = f"{1000 * data.rule.near_stable:.0f} meV/atom"
    if data.hull is not None:
        for system in data.chemical_systems:
            try:
                fig = plots.plot_hull_roles(
                    data.hull, chemsys=system.split("-"), roles=roles, near_stable=data.rule.near_stable
                )
            except plots.PlotError as exc:
                out[f"hull_{system}"] = ("", f"No hull of {system}: {exc}")
                continue
            out[f"hull_{system}"] = (
                _png(fig),
                f"{system} hull built from {data.level.kind} energies only (every label of the campaign with its "
                f"oracle settings). Shaded: the hit band, {band} above the hull. Hits are judged against this final "
                "hull.",
            )
    # A round under way has no calls yet (or only some): it is in the table, not in the per-round figures.
    r = [x for x in data.rounds if x.judged]
    if r:
        out["progress"] = (
            _png(
                plots.plot_discovery_progress(
                    rounds=[x.round for x in r],
                    oracle_calls=[x.oracle_calls for x in r],
                    hits=[x.discoveries for x in r],
                    cumulative_hits=[x.discoveries_cumulative for x in r],
                )
            ),
            "Hits among each round's oracle calls, judged on the hull at the end of that round (labels give "
            "hits/calls), and oracle calls so far per discovery so far. Round-0 reference labels are not counted.",
        )
        out["emulator_mae"] = (
            _png(
                plots.plot_emulator_error(
                    rounds=[x.round for x in r],
                    mae=[math.nan if x.screening_mae is None else x.screening_mae for x in r],
                    n_labels=[len(x.screening_pairs) for x in r],
                    median_std=[
                        math.nan if x.screening_median_sigma is None else x.screening_median_sigma for x in r
                    ],
                )
            ),
            "Screening error: the emulator that screened each round, its calibrated energy per atom at the geometry "
            "it relaxed to, against the oracle's at the oracle's relaxed geometry, on the round's new labels before "
            "retraining (a true held-out error), beside the median ensemble σ it gave them.",
        )
    if data.calls:
        rates = data.prevalence
        pairs = [(c.round, c) for c in data.calls]
        mean_rate = sum(rates.get(c.round, (0.0, 0))[0] for c in data.calls) / len(data.calls)
        out["curve"] = (
            _png(
                plots.plot_discovery_curve(
                    hits=[c.is_hit for c in data.calls],
                    rounds=[c.round for c in data.calls],
                    expected=random_expectation(pairs, rates) if rates else None,
                    expected_label="uniform random among the screened candidates (expected)",
                    title="discoveries on the final hull against oracle calls",
                )
            ),
            "Each hit is drawn at the oracle call that made it, judged on the final hull. Dashed: what uniform "
            "random picks among the same screened candidates would expect, "
            + (
                f"{100 * mean_rate:.0f} % hits per call on average ("
                + "; ".join(f"round {k}: {100 * p:.0f} % of {n}" for k, (p, n) in sorted(rates.items()))
                + "), estimated as the mean emulator probability of a hit, P(E_hull ≤ "
                f"{data.rule.near_stable:g} eV/atom) under N(E_hull, σ), over each round's screened candidates: "
                "a prevalence estimate that is only as good as the emulator's calibration."
                if rates
                else "not estimated (no screened candidate with a predicted E_hull)."
            ),
        )
    for k, hull, roles in data.round_hulls:
        for system in data.chemical_systems:
            if hull is None:
                continue
            try:
                fig = plots.plot_hull_roles(
                    hull,
                    chemsys=system.split("-"),
                    roles=roles,
                    near_stable=data.rule.near_stable,
                    title=f"{system}: oracle hull after round {k}",
                )
            except plots.PlotError as exc:
                out[f"hull_{system}_round_{k}"] = ("", f"No hull of {system} after round {k}: {exc}")
                continue
            out[f"hull_{system}_round_{k}"] = (
                _png(fig),
                f"{system} after round {k}: the hull of the labels so far; red stars: round {k}'s hits, blue: its "
                f"other oracle calls, grey stars: earlier hits still within the band ({band}).",
            )
    if data.calibration:
        rr, ss, ee = zip(*data.calibration, strict=True)
        try:
            out["calibration"] = (
                _png(plots.plot_calibration(std=ss, abs_error=ee, rounds=rr)),
                "Held-out errors against the ensemble σ the emulator gave before labelling, all rounds pooled. "
                "A calibrated σ puts 68 % of errors within 1σ and 95 % within 2σ (dashed curve).",
            )
        except plots.PlotError as exc:
            out["calibration"] = ("", f"No calibration figure: {exc}")
    if data.calls:
        call_roles = [
            "rediscovery"
            if roles.get(c.hash) == "rediscovery"
            else ("discovery" if c.is_hit else "candidate")
            for c in data.calls
        ]
        out["ehull_by_call"] = (
            _png(
                plots.plot_ehull_by_call(
                    e_hull=[math.nan if c.e_hull is None else c.e_hull for c in data.calls],
                    rounds=[c.round for c in data.calls],
                    roles=call_roles,
                    near_stable=data.rule.near_stable,
                )
            ),
            f"Energy above the final hull of every oracle call in the order it was made; shaded: the hit band "
            f"({band}). Symmetric-log axis.",
        )
    if data.source_yield:
        out["yield"] = (
            _png(plots.plot_source_yield(data.source_yield)),
            "Candidates per generator at each step of the funnel, rounds >= 1 summed (symmetric-log axis).",
        )
    return out


# -- HTML -------------------------------------------------------------------------------------------------------------
_CSS = """
:root { --ink: #1d2430; --muted: #5b6574; --line: #d9dee6; --accent: #1f5fae; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0; background: #f4f6f9; line-height: 1.45; font-size: 15px; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; min-height: 100vh; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
.sub { color: var(--muted); margin: 0 0 14px; }
.banner { padding: 12px 16px; border-radius: 6px; margin: 14px 0; font-size: 15px; }
.banner.surrogate { background: #fff4d6; border: 1px solid #e0b23a; }
.banner.dft { background: #e8f3ea; border: 1px solid #7db38a; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 14px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.card .v { font-size: 24px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12.5px; }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; max-width: 900px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 14px; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 7px; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; vertical-align: bottom; }
.scroll { overflow-x: auto; max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
.scroll table { width: max-content; min-width: 100%; margin: 0; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
.viewer { display: flex; flex-wrap: wrap; gap: 12px; }
.viewer .cell { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; max-width: 100%; overflow-x: auto; }
.viewer svg .label { font-size: 11px; fill: var(--muted); }
.viewer h3 { font-size: 15px; margin: 2px 0 6px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
.tag { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; }
.tag.stable { background: #d9efe0; } .tag.near_stable { background: #e6eefb; } .tag.re { background: #fff0b3; }
code, .mono { font-family: "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; }
.note { color: var(--muted); font-size: 13px; }
.small { font-size: 11.5px; color: var(--muted); }
dl.defs { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; font-size: 13.5px; }
dl.defs dt { font-weight: 600; }
dl.defs dd { margin: 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, fmt: str = "{:.3f}", none: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    return fmt.format(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    head = "".join(
        f'<th class="n">{_e(h)}</th>' if n else f"<th>{_e(h)}</th>"
        for h, n in zip(headers, numeric, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if n else f"<td>{c}</td>" for c, n in zip(row, numeric, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(figs: Mapping[str, tuple[str, str]], key: str, alt: str) -> str:
    if key not in figs:
        return ""
    png, caption = figs[key]
    if not png:
        return f'<p class="note">{_e(caption)}</p>'
    return (
        f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _cif_link(structure: Structure, name: str) -> str:
    """A link that downloads `structure` as `<name>.cif` from the page itself (a data: URI)."""
    text = str(CifWriter(structure))
    data = base64.b64encode(text.encode()).decode("ascii")
    return f'<a class="cif" download="{_e(name)}.cif" href="data:chemical/x-cif;base64,{data}">CIF</a>'


def _conventional(structure: Structure) -> Structure:
    """The conventional standard cell (at the campaign's symmetry tolerance, `SYMPREC`) when it is at most 64 atoms, else
    the cell as it is: a crystallographer recognises a structure type in its conventional cell."""
    try:
        cell = SpacegroupAnalyzer(structure, symprec=SYMPREC).get_conventional_standard_structure()
    except Exception:  # spglib fails on a broken cell; the cell is then drawn as it is
        return structure
    return cell if len(cell) <= 64 else structure


def _viewer(data: ScienceData) -> list[str]:
    """Each discovery's oracle-relaxed cell, drawn in the page (inline SVG), with its CIF."""
    shown = [d for d in data.discoveries if d.call.hash in data.structures]
    if not shown:
        return []
    cells = []
    for d in shown:
        s = data.structures[d.call.hash]
        cell = _conventional(s)
        cells.append(
            f'<div class="cell" id="structure-{_e(d.call.hash)}"><h3>{_e(d.formula)} · {_e(d.space_group)} · '
            f"E_hull {_num(d.call.e_hull, '{:+.3f}')} eV/atom · {_cif_link(s, f'{d.formula}_{d.call.hash}')}</h3>"
            f"{structure_svg(cell, uid=d.call.hash)}"
            f'<div class="small">drawn: a {cell.lattice.a:.3f} Å, b {cell.lattice.b:.3f} Å, c {cell.lattice.c:.3f} Å; '
            f"α {cell.lattice.alpha:.1f}°, β {cell.lattice.beta:.1f}°, γ {cell.lattice.gamma:.1f}°; {len(cell)} "
            f"atoms; {s.volume / len(s):.2f} Å³/atom (CIF: the labelled cell, {len(s)} atoms)</div></div>"
        )
    return [
        "<h2>Structures of the discoveries</h2>",
        '<p class="note">The oracle\'s relaxed structure of each discovery in its conventional standard cell, from '
        "three directions (drawn in the page); atoms on a face of the cell are repeated on the opposite face. CIF "
        "downloads the cell the oracle labelled.</p>",
        f'<div class="viewer">{"".join(cells)}</div>',
    ]


_POOL_ROWS = 60


_STATUS_TAG = {"pass": "stable", "fail": "unstable", "unknown": "near_stable"}


def _shortlist_section(data: ScienceData) -> list[str]:
    """Every hit against the design requirements (`loop.runtime.shortlist`): one row per hit, one column per requirement
    with its value and pass / fail / unknown; requirements the design does not ask are shown greyed."""
    if not data.shortlist:
        return []
    passing = sum(1 for r in data.shortlist if r["status"] == "pass")
    asked = [k for k in REQUIREMENTS if k in set(data.shortlist[0].get("asked") or [])]
    parts = [
        f"<h2>Shortlist: {passing} of {len(data.shortlist)} hits meet every design requirement</h2>"
        if asked
        # with nothing asked every row "passes" vacuously: say so rather than report a verdict
        else f"<h2>Shortlist: {len(data.shortlist)} hits; the config sets no design requirement (design:)</h2>",
        '<p class="note">Cheap requirements first (elements, cost, density, band gap from the oracle\'s own '
        "calculation, electrochemical window against Li from this campaign's hull by grand-potential analysis); "
        "then, only on hits that failed none of them, Li-ion conductivity by MLFF molecular dynamics (Arrhenius "
        "to 300 K), phonons by the MLFF and, last, thermal stability by MLFF MD and a quench. Asked: "
        f'{_e(", ".join(asked) or "nothing")}. A value in grey was not asked; "unknown" says why in its '
        "tooltip.</p>",
    ]
    rows = []
    for row in data.shortlist:
        cells = []
        for name in REQUIREMENTS:
            r = row["requirements"].get(name)
            if r is None:
                cells.append("–")
                continue
            value = r.get("value")
            text = _num(value, "{:.3g}") if isinstance(value, float) else _e("–" if value is None else value)
            tag = f'<span class="tag {_STATUS_TAG[r["status"]]}" title="{_e(r.get("detail") or "")}">'
            tag += f"{_e(r['status'])}</span>"
            cell = f"{text}<br>{tag}"
            cells.append(cell if name in row.get("asked", []) else f'<span class="small">{cell}</span>')
        verdict = f'<span class="tag {_STATUS_TAG[row["status"]]}">{_e(row["status"])}</span>'
        rows.append(
            [f"<b>{_e(row['formula'])}</b><br><span class='mono'>{_e(row['hash'])}</span>",
             _num(row.get("e_hull"), "{:+.4f}"), verdict, *cells]
        )  # fmt: skip
    headers = ["formula / structure hash", "E_hull (eV/atom)", "verdict"]
    headers += [
        f"{name.replace('_', ' ')}" + (f" ({UNITS[name]})" if UNITS[name] else "") for name in REQUIREMENTS
    ]
    numeric = [False, True, False] + [False] * len(REQUIREMENTS)
    parts.append(_table(headers, rows, numeric))
    return parts


def _pool_table(data: ScienceData) -> list[str]:
    """The last round's screened candidates: queried ones with their call, the others left in the pool."""
    if data.pool_round is None:
        return []
    waiting = [c for c in data.pool if c.call is None]
    rows = []
    for rank, c in enumerate(data.pool[:_POOL_ROWS], start=1):
        pred = _num(c.e_hull, "{:+.3f}")
        if c.e_hull is not None and c.e_hull_std is not None:
            pred += f" ± {c.e_hull_std:.3f}"
        rows.append(
            [
                str(rank),
                f"<b>{_e(c.formula)}</b><br><span class='mono'>{_e(c.hash)}</span>",
                str(c.natoms),
                _e(c.source),
                pred,
                _num(c.score, "{:.3f}"),
                f"oracle call {c.call}" if c.call is not None else "in the pool",
                str(c.first_round),
                "–" if c.structure is None else _cif_link(c.structure, f"{c.formula}_{c.hash}"),
            ]
        )
    out = [
        f"<h2>Candidates screened in round {data.pool_round} ({len(waiting)} not queried)</h2>",
        f'<p class="note">Every candidate the emulator screened in round {data.pool_round}, new or carried in the '
        f"pool, ranked by the acquisition score of the campaign's strategy (<code>{_e(data.strategy)}</code>, "
        "before its diversity penalty and per-formula cap, which is why a rank can be skipped). Those not queried "
        "stay on offer to the next round unless the pool's age limit drops them.</p>",
        _table(
            [
                "rank",
                "formula / relaxed structure hash",
                "atoms",
                "generator",
                "emulator E_hull ± σ (eV/atom)",
                "acquisition score",
                "status",
                "first screened in round",
                "structure",
            ],
            rows,
            [True, False, True, False, True, True, False, True, False],
        ),
    ]
    if len(data.pool) > _POOL_ROWS:
        out.append(f'<p class="note">The first {_POOL_ROWS} of {len(data.pool)} candidates.</p>')
    return out


def render_html(data: ScienceData) -> str:
    """The report as one self-contained HTML document (no external resources)."""
    figs = figures(data)
    level = data.level
    total_calls = len(data.calls)
    hits = sum(c.is_hit for c in data.calls)
    stable = sum(1 for c in data.calls if c.is_hit and c.verdict == Verdict.STABLE)
    failed = sum(1 for c in data.calls if c.status == "failed")
    parts: list[str] = []
    systems = ", ".join(data.chemical_systems)
    parts.append(f"<h1>{_e(data.campaign)}: science report</h1>")
    parts.append(
        f'<p class="sub">{_e(systems)} · oracle {_e(level.description)} · {_e(data.stage)}'
        + (f" · stopped: {_e(data.stopped_because)}" if data.stopped_because else "")
        + f" · written {_e(time.strftime('%Y-%m-%d %H:%M %Z'))}</p>"
    )
    if level.is_dft:
        parts.append(
            f'<div class="banner dft"><b>Level of theory: DFT ({_e(level.kind)}).</b> Every energy on the hull, '
            "references included, comes from this oracle with the same settings.</div>"
        )
    else:
        parts.append(
            f'<div class="banner surrogate"><b>Surrogate oracle, not DFT: {_e(level.kind)} is {_e(level.what)}.</b> '
            "Every energy in this report, references included, is the surrogate's own level of theory; a hit here "
            "is stable against the surrogate's hull only and must be confirmed with DFT before it is called a "
            "discovery.</div>"
        )
    cards = [
        (str(total_calls), "oracle calls after round 0"),
        (str(hits), f"hits (stable or within {1000 * data.rule.near_stable:.0f} meV/atom)"),
        (str(stable), "on the hull"),
        (_num(hits / total_calls if total_calls else None, "{:.0%}"), "hit rate, all rounds"),
        (_num(total_calls / hits if hits else None, "{:.1f}"), "oracle calls per hit"),
        (str(data.n_references), "round-0 reference labels"),
    ]
    if failed:
        cards.append((str(failed), "failed oracle calls"))
    if data.withheld:
        found = sum(w.found is not None for w in data.withheld)
        cards.append((f"{found}/{len(data.withheld)}", "withheld phases rediscovered"))
    parts.append(
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
            for v, k in cards
        )
        + "</div>"
    )
    for note in data.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')

    parts.append("<h2>Convex hull at the oracle's level of theory</h2>")
    for system in data.chemical_systems:
        parts.append(_figure(figs, f"hull_{system}", f"{system} convex hull"))
    if data.hull is None:
        parts.append('<p class="note">No oracle label yet, so no hull.</p>')

    if len(data.round_hulls) > 1:
        parts.append("<h2>The hull round by round</h2>")
        parts.append(
            '<p class="note">Each round judged on the hull of the labels it had (what MLflow logged for it); open a '
            "round to see its figure.</p>"
        )
        last = data.round_hulls[-1][0]
        for k, _, _ in data.round_hulls:
            inner = "".join(
                _figure(figs, f"hull_{system}_round_{k}", f"{system} hull after round {k}")
                for system in data.chemical_systems
            )
            parts.append(
                f"<details{' open' if k == last else ''}><summary>after round {k}</summary>{inner}</details>"
            )

    parts.append("<h2>Discovery per round</h2>")
    parts.append(
        _figure(figs, "curve", "discoveries against oracle calls, with the uniform random expectation")
    )
    parts.append(_figure(figs, "progress", "hit rate per round and oracle calls per discovery"))
    parts.append(_figure(figs, "ehull_by_call", "energy above hull of every oracle call"))
    if data.rounds:
        parts.append(
            '<p class="note">Each round is judged on the hull at its end, as MLflow logged it and <code>matloop '
            "status</code> shows it; the discoveries so far at the last round are the discoveries on the final hull "
            "listed below.</p>"
        )
        rows = [
            [
                str(x.round) + ("" if x.finished else " (running)"),
                str(x.generated),
                str(x.passed_funnel),
                str(x.screened),
                str(x.carried),
                str(x.oracle_calls),
                str(x.failed),
                str(x.unconverged),
                str(x.discoveries) if x.judged else "–",
                str(x.on_hull) if x.judged else "–",
                _num(x.discoveries_per_oracle_call, "{:.0%}"),
                str(x.discoveries_cumulative) if x.judged else "–",
                _num(x.oracle_calls_per_discovery, "{:.1f}"),
                _num(None if x.screening_mae is None else 1000 * x.screening_mae, "{:.0f}"),
                _num(x.screening_spearman, "{:+.2f}"),
                _num(x.screening_within_1sigma, "{:.0%}"),
                _num(None if x.retrain_mae is None else 1000 * x.retrain_mae, "{:.0f}"),
                _num(x.wall_time_s, "{:.0f}"),
            ]
            for x in data.rounds
        ]
        headers = ["round", "generated", "passed funnel", "screened", "carried in the pool", "oracle calls", "failed",
                   "relaxation not converged", "hits", "on the hull",
                   "hit rate", "discoveries so far", "oracle calls per discovery", "screening MAE (meV/atom)",
                   "screening Spearman σ–|err|", "screening errors within 1σ",
                   "model MAE at the oracle's geometry (meV/atom)", "wall time (s)"]  # fmt: skip
        parts.append(_table(headers, rows, [True] * len(headers)))

    parts.append("<h2>Emulator accuracy before retraining</h2>")
    parts.append(_figure(figs, "emulator_mae", "screening error per round"))
    parts.append(
        '<p class="note">Two errors on the same labels, two questions. The <b>screening error</b> is what the '
        "acquisition lived with: the emulator that screened the round, calibrated, at the geometry it relaxed each "
        "candidate to, against the oracle at the oracle's relaxed geometry. The <b>model MAE at the oracle's "
        "geometry</b> is the retrain stage's check of the same model on the oracle's relaxed structures, raw "
        "(without the calibration's bias shift): the model alone. The retrain stage also scores each variant it "
        "trains (refit, fine-tuned; in MLflow under <code>stage/retrain.</code>): those are other models, so their "
        "MAE and Spearman differ again.</p>"
    )
    parts.append("<h2>Uncertainty calibration</h2>")
    parts.append(_figure(figs, "calibration", "ensemble sigma against absolute error, and coverage"))
    if not data.calibration:
        parts.append('<p class="note">No held-out (predicted, labelled) pair yet.</p>')

    parts.append("<h2>Yield per source</h2>")
    parts.append(_figure(figs, "yield", "yield per generator"))
    if data.source_yield:
        rows = []
        for source, d in sorted(data.source_yield.items()):
            rows.append(
                [
                    _e(source),
                    str(d["generated"]),
                    str(d["passed funnel"]),
                    str(d["oracle calls"]),
                    str(d["hits"]),
                    str(d["stable"]),
                    _num(d["hits"] / d["oracle calls"] if d["oracle calls"] else None, "{:.0%}"),
                ]
            )
        parts.append(
            _table(
                ["source", "generated", "passed funnel", "oracle calls", "hits", "stable", "hits per call"],
                rows,
                [False, True, True, True, True, True, True],
            )
        )

    n_known = sum(1 for d in data.discoveries if d.novelty is not None and d.novelty.known)
    parts.append(f"<h2>Discoveries ({len(data.discoveries)}, of which {n_known} known crystals)</h2>")
    if data.discoveries:
        parts.append(
            f'<p class="note">Every label: {_e(level.kind)} with {_e(_settings_text(level.settings) or "defaults")}'
            f" (settings hash {_e(level.settings_hash)}).</p>"
        )
        rows = []
        for d in data.discoveries:
            c = d.call
            tag = f'<span class="tag {c.verdict.value}">{_e(c.verdict.value.replace("_", "-"))}</span>'
            if d.rediscovers:
                tag += f' <span class="tag re">rediscovers {_e(d.rediscovers)}</span>'
            if d.novelty is not None and d.novelty.known:
                # a known crystal found again: a rediscovery, linked to its provider's entry
                tag += f' <a class="tag re" href="{_e(d.novelty.url or "")}">{_e(d.novelty.label)}</a>'
            elif d.novelty is not None:
                tag += ' <span class="tag">new</span>'
            pred = _num(d.predicted_e_hull, "{:+.3f}")
            if d.predicted_e_hull is not None and d.predicted_std is not None:
                pred += f" ± {d.predicted_std:.3f}"
            rows.append(
                [
                    f"<b>{_e(d.formula)}</b><br><span class='mono'>{_e(c.hash)}</span>",
                    _e(d.space_group),
                    str(d.natoms),
                    _num(c.e_hull, "{:+.4f}"),
                    _num(d.vs_known, "{:+.4f}"),
                    tag,
                    pred,
                    str(c.round),
                    str(c.index),
                    _e(d.source),
                    _e(d.parent or "–"),
                    _e(d.provenance),
                    _e(c.relaxation),
                    # One settings text for all is above the table; each row names the settings by their hash.
                    f'<span class="small">{_e(level.kind)} {_e(level.settings_hash[:12])}</span>',
                ]
            )
        headers = ["formula / structure hash", "space group", "atoms", "E_hull (eV/atom)", "vs known phases (eV/atom)",
                   "verdict", "emulator E_hull ± σ", "round", "oracle call #", "generator", "parent",
                   "operation or conditions", "oracle relaxation", "oracle settings"]  # fmt: skip
        numeric = [False, False, True, True, True, False, True, True, True, False, False, False, False, False]
        parts.append(_table(headers, rows, numeric))
    else:
        parts.append('<p class="note">No hit yet.</p>')
    parts.extend(_viewer(data))
    parts.extend(_shortlist_section(data))
    parts.extend(_pool_table(data))

    if data.withheld or data.withheld_without_structure:
        parts.append("<h2>Rediscovery of withheld phases</h2>")
        parts.append(
            '<p class="note">These known phases were withheld from the references, the novelty check, the '
            "substitution parents and the generator's fine-tuning data. A phase counts as rediscovered at the first "
            "oracle call whose structure matches it (pymatgen StructureMatcher, default tolerances).</p>"
        )
        rows = []
        for w in data.withheld:
            f = w.found
            rows.append(
                [
                    _e(w.id),
                    _e(w.formula),
                    _e(w.space_group if w.space_group is not None else space_group(w.structure)),
                    "yes" if f is not None else ("no" if w.structure is not None else "structure not stored"),
                    "–" if f is None else str(f.round),
                    "–" if f is None else str(f.index),
                    "–" if f is None else _num(f.e_hull, "{:+.4f}"),
                    "–" if f is None else _e(f.verdict.value.replace("_", "-")),
                ]
            )
        for wid in data.withheld_without_structure:
            rows.append([_e(wid), "–", "–", "not recorded in the store", "–", "–", "–", "–"])
        parts.append(
            _table(
                [
                    "withheld",
                    "formula",
                    "space group",
                    "rediscovered",
                    "round",
                    "after oracle calls",
                    "E_hull (eV/atom)",
                    "verdict",
                ],
                rows,
                [False, False, False, False, True, True, True, False],
            )
        )
        found = [w for w in data.withheld if w.found is not None]
        if found:
            last = max(w.found.index for w in found if w.found is not None)
            parts.append(
                f'<p class="note">{len(found)} of {len(data.withheld)} rediscovered; '
                f"{last / len(found):.1f} oracle calls per rediscovery (calls until the last one).</p>"
            )

    parts.append("<h2>Definitions and settings</h2>")
    defs = [
        ("oracle", level.description),
        ("oracle settings", _settings_text(level.settings) or "defaults"),
        ("settings hash", level.settings_hash),
        ("stable", f"on the final oracle hull (E_hull ≤ {data.rule.tolerance:g} eV/atom)"),
        ("near-stable", f"0 < E_hull ≤ {data.rule.near_stable:g} eV/atom"),
        ("hit", "stable or near-stable, not a duplicate of an earlier label"),
        ("oracle call", "one query of a round ≥ 1; failed calls count; round-0 references do not"),
        (
            "vs known phases",
            "energy above the hull of the round-0 references alone (the known crystals at the oracle's level); "
            "negative: below every known phase",
        ),
        (
            "screening error",
            "the emulator that screened the round (calibrated) at the geometry it relaxed to, against the oracle's "
            "energy per atom at the oracle's relaxed geometry, on the round's labels before retraining",
        ),
        (
            "model MAE at the oracle's geometry",
            "the retrain stage's check of the same model on the oracle's relaxed structures, raw (no calibration)",
        ),
        (
            "acquisition score",
            "the strategy's utility (e.g. p_stable: P(E_hull ≤ hit threshold) under N(E_hull, σ)), before the "
            "diversity penalty",
        ),
        (
            "relaxation not converged",
            "the oracle's relaxation stopped at its step limit before the force criterion: the energy and E_hull "
            "are upper bounds, so such a call may be a hit that a longer relaxation would show",
        ),
        ("workdir", str(data.workdir)),
    ]
    parts.append(
        '<dl class="defs">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in defs) + "</dl>"
    )
    body = "\n".join(p for p in parts if p)
    title = f"{data.campaign}: science report"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


def write_report(*, workdir: Path, out: Path, overwrite: bool = True) -> Path:
    """Write the science report of the campaign in `workdir` to `out` (one self-contained HTML file).

    The file appears complete or not at all (written beside `out`, then renamed).

    Args:
        workdir: The campaign directory (holds matloop.db).
        out: The HTML file to write.
        overwrite: Replace an existing `out` (the CLI passes False unless --force).

    Returns:
        `out`.

    Raises:
        ReportError: No campaign in `workdir`, `out` exists (and not `overwrite`), is a directory, or its folder
            does not exist.
    """
    workdir, out = Path(workdir), Path(out)
    _check_paths(workdir, out, overwrite=overwrite)
    text = render_html(collect(workdir))
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


__all__ = ["ReportError", "ScienceData", "collect", "render_html", "write_report"]
