"""The science of each round, computed once from the campaign store: what MLflow logs, `matloop status` prints and
the science report tabulates.

A round is judged on the hull at the end of that round: the verdicts its update stage stored (a label whose oracle
relaxation repeats an earlier label's crystal is never a hit). So a figure logged when a round ended stays true,
and at the last round the cumulative count is the number of discoveries on the final hull (an earlier hit that a
later label pushed off the hull no longer counts).

Two emulator errors answer two questions and are kept apart by name:

* the **screening error** (`screening_*`): the emulator that screened the round, its calibrated energy per atom at
  the geometry it relaxed to, against the oracle's energy at the oracle's relaxed geometry, on the round's
  successful labels, before retraining. It is the error the acquisition lived with (model error and relaxation
  error together).
* the **model error at the oracle's geometry** (`retrain_*`): the retrain stage's held-out check, the deployed model's
  raw (uncalibrated) single point on the oracle's relaxed structures of the same labels. It measures the model
  alone and decides which variant is deployed next.

Units: energies eV/atom; times s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from loop.science.emulator_errors import emulator_metrics
from loop.science.hull import HullEntry, OracleHull
from loop.store import CampaignStore, StructureRow

DERIVED_SOURCES = ("relaxed", "oracle_relaxed")
"""Sources of structures the campaign derives from another stored one: the emulator's and the oracle's
relaxations (their `parent` is the structure they started from)."""


def origin(rows: Mapping[str, StructureRow], h: str) -> StructureRow | None:
    """The row of what structure `h` was made from: up through its relaxations to the generated candidate, the
    bundled crystal or the user's file (`h`'s own row when it is one of those; None when `h` is not stored)."""
    row = rows.get(h)
    for _ in range(len(rows)):  # a parent chain cannot be longer than the store
        if row is None or row.source not in DERIVED_SOURCES or row.parent not in rows:
            break
        row = rows[row.parent]
    return row


@dataclass(frozen=True)
class CallOutcome:
    """One oracle call of a round >= 1, judged on the hull at the end of its round.

    Attributes:
        index: Position among all calls of rounds >= 1, in campaign order (from 1).
        hash: The queried (emulator-relaxed) structure.
        source: The generator it came from.
        hit: Stable or near-stable on that hull, and no repeat of an earlier label.
        on_hull: A hit on that hull itself (E_hull <= 0 within the rule's tolerance).
    """

    index: int
    hash: str
    source: str
    hit: bool
    on_hull: bool = False


@dataclass(frozen=True)
class RoundScience:
    """The figures of one round (round 0: the references). Energies eV/atom.

    Attributes:
        round: Round index.
        finished: The round ran all its stages.
        judged: Its update stage has judged its labels (else hits are 0 and the emulator errors None).
        reference_labels: Round 0's labels (0 in later rounds).
        generated / passed_funnel: Candidates proposed and kept by the funnel this round.
        screened: Candidates screened for the first time this round.
        carried: Candidates of earlier rounds still on offer (the persistent pool), re-scored this round.
        calls: This round's oracle calls (failed ones included: they cost the same).
        failed: Calls whose label failed.
        unconverged: Calls whose oracle relaxation stopped at its step limit (E_hull is an upper bound).
        on_hull: Calls on the hull.
        oracle_calls_cumulative: Calls of rounds 1..round.
        discoveries_cumulative: Calls of rounds 1..round that are hits on this round's hull.
        new_discoveries_cumulative / rediscoveries_cumulative: Of those, the ones that are no known crystal, and
            the known crystals found again (`loop.views.novelty`); None when the update stage did not judge novelty.
        screening_pairs: (predicted, σ, oracle) energies per atom of the screening error, one per labelled call.
        retrain_mae: The model error at the oracle's geometry (see the module docstring); None without it.
        started_at / finished_at: Unix times of the round's first stage start and last stage end (the track stage
            that logs the round excluded; None before any stage finished).
    """

    round: int
    finished: bool
    judged: bool
    reference_labels: int
    generated: int
    passed_funnel: int
    screened: int
    carried: int
    calls: tuple[CallOutcome, ...]
    failed: int
    unconverged: int
    on_hull: int
    oracle_calls_cumulative: int
    discoveries_cumulative: int
    new_discoveries_cumulative: int | None
    rediscoveries_cumulative: int | None
    discoveries_cumulative_by_source: dict[str, int] = field(default_factory=dict)
    on_hull_cumulative_by_source: dict[str, int] = field(default_factory=dict)
    generated_by_source: dict[str, int] = field(default_factory=dict)
    passed_by_source: dict[str, int] = field(default_factory=dict)
    screening_pairs: tuple[tuple[float, float, float], ...] = ()
    retrain_mae: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def oracle_calls(self) -> int:
        return len(self.calls)

    @property
    def discoveries(self) -> int:
        """This round's calls that are hits."""
        return sum(c.hit for c in self.calls)

    @property
    def discoveries_by_source(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.calls:
            if c.hit:
                out[c.source] = out.get(c.source, 0) + 1
        return out

    @property
    def calls_by_source(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.calls:
            out[c.source] = out.get(c.source, 0) + 1
        return out

    @property
    def discoveries_per_oracle_call(self) -> float | None:
        return self.discoveries / self.oracle_calls if self.oracle_calls and self.judged else None

    @property
    def oracle_calls_per_discovery(self) -> float | None:
        """Cumulative: calls of rounds 1..round per discovery on this round's hull."""
        return (
            self.oracle_calls_cumulative / self.discoveries_cumulative
            if self.discoveries_cumulative
            else None
        )

    @property
    def screening(self) -> dict[str, float]:
        """`loop.science.emulator_errors.emulator_metrics` of the screening pairs (what the update stage recorded)."""
        return emulator_metrics(self.screening_pairs)

    @property
    def screening_mae(self) -> float | None:
        return self.screening.get("emulator_mae")

    @property
    def screening_spearman(self) -> float | None:
        return self.screening.get("emulator_spearman_std_err")

    @property
    def screening_within_1sigma(self) -> float | None:
        return self.screening.get("emulator_within_1sigma")

    @property
    def screening_median_sigma(self) -> float | None:
        return float(np.median([s for _, s, _ in self.screening_pairs])) if self.screening_pairs else None

    @property
    def wall_time_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 1)

    def metrics(self) -> dict[str, float]:
        """The curated per-round metrics MLflow logs with step = round (None values are left out)."""
        if self.round == 0:
            return {
                "reference_labels": self.reference_labels,
                "discoveries_cumulative": 0,
                "oracle_calls_cumulative": 0,
            }
        out: dict[str, Any] = {
            "discoveries_cumulative": self.discoveries_cumulative,
            "oracle_calls_cumulative": self.oracle_calls_cumulative,
            "discoveries": self.discoveries,
            "oracle_calls": self.oracle_calls,
            "on_hull": self.on_hull,
            "discoveries_per_oracle_call": self.discoveries_per_oracle_call,
            "oracle_calls_per_discovery": self.oracle_calls_per_discovery,
            "new_discoveries_cumulative": self.new_discoveries_cumulative,
            "rediscoveries_cumulative": self.rediscoveries_cumulative,
            "screening_mae_eV_per_atom": self.screening_mae,
            "screening_sigma_error_spearman": self.screening_spearman,
            "screening_errors_within_1sigma": self.screening_within_1sigma,
            "retrain_mae_at_oracle_geometry_eV_per_atom": self.retrain_mae,
        }
        out.update(
            {
                f"by_source/{src}_discoveries_cumulative": n
                for src, n in self.discoveries_cumulative_by_source.items()
            }
        )
        return {k: float(v) for k, v in out.items() if v is not None}


YIELD_STAGES = ("generated", "passed funnel", "oracle calls", "hits", "stable")
"""The columns of `source_yield`, in the order a candidate passes them."""


def source_yield(sciences: Sequence[RoundScience], *, rounds: Sequence[int]) -> dict[str, dict[str, int]]:
    """Per generator: candidates generated and kept by the funnel, oracle calls, hits and phases on the hull, over
    `rounds` (one round, or every round from 1 up to the last one given).

    Hits and on-hull phases are judged once, on the hull of the last round given: for one round, its calls on its
    own hull (what that round's MLflow run shows); for rounds 1..R, every call so far on round R's hull (what the
    science report shows). One rule, so MLflow, status and the report never count a generator's hits differently.

    Raises:
        ValueError: `rounds` is neither one round nor 1..R.
    """
    wanted = sorted(set(rounds))
    if not wanted or (len(wanted) > 1 and wanted != list(range(1, wanted[-1] + 1))):
        raise ValueError(f"source_yield takes one round or rounds 1..R, not {wanted}")
    by_round = {s.round: s for s in sciences}
    last = by_round.get(wanted[-1])
    out: dict[str, dict[str, int]] = {}

    def slot(source: str) -> dict[str, int]:
        return out.setdefault(source, dict.fromkeys(YIELD_STAGES, 0))

    for rnd in wanted:
        if (science := by_round.get(rnd)) is None or rnd < 1:
            continue
        for source, n in science.generated_by_source.items():
            slot(source)["generated"] += n
        for source, n in science.passed_by_source.items():
            slot(source)["passed funnel"] += n
        for source, n in science.calls_by_source.items():
            slot(source)["oracle calls"] += n
    if last is not None and last.round >= 1:
        if len(wanted) == 1:
            hits = last.discoveries_by_source
            stable: dict[str, int] = {}
            for c in last.calls:
                stable[c.source] = stable.get(c.source, 0) + int(c.on_hull)
        else:
            hits, stable = last.discoveries_cumulative_by_source, last.on_hull_cumulative_by_source
        for source, n in hits.items():
            slot(source)["hits"] += n
        for source, n in stable.items():
            slot(source)["stable"] += n
    return out


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def campaign_science(store: CampaignStore) -> list[RoundScience]:
    """Every round of the campaign in `store` (started ones included), round 0 first."""
    settings_hash = (store.get_meta("identity") or {}).get("oracle")
    results = {r.hash: r for r in store.oracle_results(settings_hash=settings_hash)}
    rows = {r.hash: r for r in store.structure_rows()}
    queries = store.queries_by_round()
    predictions = store.predictions_by_round()
    stages = store.stages()
    out: list[RoundScience] = []
    index = 0
    sources: dict[str, str] = {}  # every call so far -> its generator
    rounds = {r.round: r for r in store.rounds()}
    for rnd in sorted({*rounds, *queries, *(s.round for s in stages)}):
        r = rounds.get(rnd)
        judged = store.stage_done(rnd, "update")
        verdicts = {v.hash: v for v in store.stability(rnd)} if judged else {}
        update = store.stage_result(rnd, "update") or {}
        retrain = store.stage_result(rnd, "retrain") or {}
        mine = [q.hash for q in queries.get(rnd, [])]
        calls: list[CallOutcome] = []
        if rnd >= 1:
            for h in mine:
                index += 1
                made_from = origin(rows, h)
                sources[h] = "unknown" if made_from is None else made_from.source
                calls.append(
                    CallOutcome(
                        index=index,
                        hash=h,
                        source=sources[h],
                        hit=bool(verdicts.get(h) and verdicts[h].hit),
                        on_hull=bool(verdicts.get(h) and verdicts[h].hit and verdicts[h].stable),
                    )
                )
        cumulative: dict[str, int] = {}
        on_hull_cumulative: dict[str, int] = {}
        for h, src in sources.items():
            if (v := verdicts.get(h)) is not None and v.hit:
                cumulative[src] = cumulative.get(src, 0) + 1
                on_hull_cumulative[src] = on_hull_cumulative.get(src, 0) + int(v.stable)
        preds = {p.relaxed_hash: p for p in predictions.get(rnd, []) if p.relaxed_hash}
        pairs = []
        for h in mine if rnd >= 1 else []:
            p, res = preds.get(h), results.get(h)
            if (
                p is None
                or res is None
                or not res.ok
                or p.energy_per_atom is None
                or res.energy_per_atom is None
            ):
                continue
            pairs.append(
                (float(p.energy_per_atom), float(p.energy_per_atom_std or 0.0), float(res.energy_per_atom))
            )
        cands = store.candidates(rnd) if rnd >= 1 else []
        generated: dict[str, int] = {}
        passed: dict[str, int] = {}
        for c in cands:
            generated[c.source] = generated.get(c.source, 0) + 1
            passed[c.source] = passed.get(c.source, 0) + int(c.passed)
        times = [s for s in stages if s.round == rnd and s.stage != "track"]
        starts = [s.started_at for s in times if s.started_at is not None]
        out.append(
            RoundScience(
                round=rnd,
                finished=r is not None and r.status == "done",
                judged=judged,
                reference_labels=len(mine) if rnd == 0 else 0,
                generated=len(cands),
                passed_funnel=sum(c.passed for c in cands),
                screened=sum(1 for p in predictions.get(rnd, []) if "pool" not in p.data),
                carried=sum(1 for p in predictions.get(rnd, []) if "pool" in p.data),
                calls=tuple(calls),
                failed=sum(
                    1 for h in mine if rnd >= 1 and (res := results.get(h)) is not None and not res.ok
                ),
                unconverged=sum(
                    1
                    for h in mine
                    if rnd >= 1
                    and (res := results.get(h)) is not None
                    and res.ok
                    and res.metadata.get("relax_converged") is False
                ),
                on_hull=sum(1 for h in mine if rnd >= 1 and (v := verdicts.get(h)) is not None and v.stable),
                oracle_calls_cumulative=index,
                discoveries_cumulative=sum(cumulative.values()),
                new_discoveries_cumulative=_int(update.get("cumulative_new_discoveries")),
                rediscoveries_cumulative=_int(update.get("cumulative_rediscoveries")),
                discoveries_cumulative_by_source=cumulative,
                on_hull_cumulative_by_source=on_hull_cumulative,
                generated_by_source=generated,
                passed_by_source=passed,
                screening_pairs=tuple(pairs),
                retrain_mae=_finite(retrain.get("emulator_heldout_previous_mae")),
                started_at=min([*([] if r is None else [r.started_at]), *starts], default=None),
                finished_at=max((s.finished_at for s in times), default=None),
            )
        )
    return out


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None


def prevalence(store: CampaignStore, *, near_stable: float) -> dict[int, tuple[float, int]]:
    """The expected hits per call of uniform random picks among each round's screened candidates.

    Estimated from the emulator: the mean over the candidates on offer in round k (new and carried, one per
    relaxed structure) of P(E_hull <= near_stable) under their calibrated Gaussian N(E_hull, σ). Uniform random
    acquisition would find that many hits per call if the emulator were calibrated.

    Returns:
        Round -> (hits per call, candidates it averages over); rounds without a placed candidate are left out.
    """
    out: dict[int, tuple[float, int]] = {}
    for rnd, preds in store.predictions_by_round().items():
        seen: dict[str, tuple[float, float]] = {}
        for p in preds:
            if (
                p.relaxed_hash
                and (mu := _finite(p.e_hull)) is not None
                and (sd := _finite(p.e_hull_std)) is not None
            ):
                seen.setdefault(p.relaxed_hash, (mu, max(sd, 1e-6)))
        if rnd >= 1 and seen:
            mu, sd = (np.array(x) for x in zip(*seen.values(), strict=True))
            p_hit = 0.5 * (1.0 + np.vectorize(math.erf)((near_stable - mu) / (sd * math.sqrt(2.0))))
            out[rnd] = (float(np.mean(p_hit)), len(seen))
    return out


def random_expectation(
    calls: Sequence[tuple[int, CallOutcome]], rates: Mapping[int, tuple[float, int]]
) -> list[float]:
    """Cumulative hits uniform random picks would expect after each call, given (round, call) pairs in campaign
    order and `prevalence` per round (a round without an estimate adds nothing)."""
    total, out = 0.0, []
    for rnd, _ in calls:
        total += rates.get(rnd, (0.0, 0))[0]
        out.append(total)
    return out


def calls_judged_at(
    store: CampaignStore, sciences: Sequence[RoundScience], *, upto: int
) -> list[tuple[int, CallOutcome]]:
    """(round, call) of every oracle call of rounds 1..`upto` in campaign order, each judged on the hull at the end
    of round `upto` (the curve of discoveries against calls as it stood then)."""
    hits = {v.hash for v in store.stability(upto) if v.hit}
    return [
        (s.round, replace(c, hit=c.hash in hits)) for s in sciences if 1 <= s.round <= upto for c in s.calls
    ]


def round_hull(store: CampaignStore, rnd: int) -> OracleHull | None:
    """The oracle hull at the end of round `rnd`: every successful label of rounds <= `rnd` (None without one)."""
    settings_hash = (store.get_meta("identity") or {}).get("oracle")
    results = [
        r
        for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)
        if (r.round or 0) <= rnd and r.energy is not None and math.isfinite(r.energy)
    ]
    structures = store.get_structures([r.hash for r in results])
    entries = [
        HullEntry.from_total_energy(
            entry_id=r.hash, composition=structures[r.hash].composition, energy=r.energy
        )
        for r in results
        if r.hash in structures
    ]
    return OracleHull.from_entries(entries) if entries else None


def round_roles(store: CampaignStore, sciences: Sequence[RoundScience], rnd: int) -> dict[str, str]:
    """What each label is in round `rnd`'s hull figure (`loop.report.plots.HULL_ROLE_STYLE`): the references, this
    round's hits ("discovery") and other calls ("query"), earlier calls still hits ("earlier_discovery")."""
    roles = {q.hash: "reference" for q in store.round_queries(0)}
    for s in sciences:
        if 1 <= s.round < rnd:
            roles.update({c.hash: "candidate" for c in s.calls})
    hits = {v.hash for v in store.stability(rnd) if v.hit}
    roles.update({h: "earlier_discovery" for h, role in roles.items() if role == "candidate" and h in hits})
    for s in sciences:
        if s.round == rnd:
            roles.update({c.hash: "discovery" if c.hit else "query" for c in s.calls})
    return roles


__all__ = [
    "YIELD_STAGES",
    "CallOutcome",
    "RoundScience",
    "calls_judged_at",
    "campaign_science",
    "origin",
    "prevalence",
    "random_expectation",
    "round_hull",
    "round_roles",
    "source_yield",
]
