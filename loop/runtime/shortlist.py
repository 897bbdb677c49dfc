"""The shortlist: every hit judged against the design requirements, cheapest requirement first.

Order of the funnel's last stages (`loop.design.requirements`):
1. the cheap requirements on every structure: elements, cost (HHI), density of the relaxed cell, band gap from the
   oracle's own calculation, electrochemical stability window against Li from the hull;
2. the expensive ones by MLFF (conductivity by MD, then phonons, then thermal stability by MD, always last), each
   only on structures that failed nothing so far when it is listed in `design.expensive`, through the campaign's
   executor (`loop.runtime.assessment_tasks.run_check`, one task per structure), each result stored as it completes and
   never computed twice under the same settings.

A row's status: "pass" when every requirement the design asks passes, "fail" when one fails, else "unknown" (one
could not be computed, e.g. the band gap of an oracle that computes none, or an MD the model could not follow).
The shortlist proper is the rows that pass.

Units: as in `loop.design.requirements`; E_hull eV/atom.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Structure

from loop.design.electrochemistry import WindowError, stability_window
from loop.design.requirements import (
    EXPENSIVE,
    REQUIREMENTS,
    UNITS,
    DesignConfig,
    RequirementResult,
    Status,
    judge_window,
    unknown,
)
from loop.runtime.execution import TaskQuarantined, task_result
from loop.runtime.progress import progress
from loop.science.hull import HullEntry

log = logging.getLogger("matloop")

_ORDER = {Status.PASS: 0, Status.UNKNOWN: 1, Status.FAIL: 2}


@dataclass(frozen=True)
class Subject:
    """One structure to judge.

    Attributes:
        key: The row's id (a hit's labelled hash, or an input file's name).
        structure: The cell judged (a hit's oracle-relaxed cell).
        structure_hash: Key of its stored expensive results.
        energy_per_atom: Its energy in the hull's level of theory, eV/atom (None: not known there).
        e_hull: Its energy above the hull, eV/atom.
        band_gap: The oracle's Kohn-Sham band gap, eV (None: none computed).
        band_gap_functional: The functional of that gap.
        band_gap_why: Why the gap is unknown, when it is.
        hull_why: Why no window can be computed, when no hull is given.
    """

    key: str
    structure: Structure
    structure_hash: str
    energy_per_atom: float | None = None
    e_hull: float | None = None
    band_gap: float | None = None
    band_gap_functional: str | None = None
    band_gap_why: str = "the oracle computed no band gap"
    hull_why: str = "no hull"


@dataclass(frozen=True)
class ShortlistRow:
    """One structure's verdict on every requirement.

    Attributes:
        key: The subject's key.
        formula: Reduced formula.
        structure_hash: Hash of the judged cell.
        e_hull: Energy above the hull, eV/atom.
        asked: The requirements the design asks (the others are shown, not judged).
        results: Every requirement's result, by name (`loop.design.requirements.REQUIREMENTS`).
    """

    key: str
    formula: str
    structure_hash: str
    e_hull: float | None
    asked: tuple[str, ...]
    results: dict[str, RequirementResult] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        statuses = [self.results[r].status for r in self.asked if r in self.results]
        if Status.FAIL in statuses:
            return Status.FAIL
        if len(statuses) == len(self.asked) and all(s is Status.PASS for s in statuses):
            return Status.PASS
        return Status.UNKNOWN

    @property
    def failed(self) -> list[str]:
        return [r for r in self.asked if r in self.results and self.results[r].status is Status.FAIL]

    def to_dict(self) -> dict[str, Any]:
        return {
            "hash": self.key,
            "formula": self.formula,
            "structure_hash": self.structure_hash,
            "e_hull": self.e_hull,
            "status": self.status.value,
            "asked": list(self.asked),
            "requirements": {name: r.to_dict() for name, r in self.results.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShortlistRow:
        return cls(
            key=data["hash"],
            formula=data["formula"],
            structure_hash=data["structure_hash"],
            e_hull=data.get("e_hull"),
            asked=tuple(data["asked"]),
            results={k: RequirementResult.from_dict(v) for k, v in data["requirements"].items()},
        )


def _not_asked(result: RequirementResult) -> RequirementResult:
    detail = f"not asked; {result.detail}" if result.detail else "not asked"
    return RequirementResult(
        result.requirement, Status.UNKNOWN, result.value, result.unit, detail, result.data
    )


def cheap_results(
    design: DesignConfig, subject: Subject, *, hull_entries: Sequence[HullEntry] | None, specie: str = "Li"
) -> dict[str, RequirementResult]:
    """The cheap requirements of one structure (milliseconds): elements, cost, density, band gap, window.

    Args:
        hull_entries: The hull the window is computed on (the campaign's oracle hull); None: no window.
        specie: The ion of the window (the conductivity requirement's, else Li).
    """
    asked = set(design.asked)
    comp = subject.structure.composition
    out = {
        "elements": design.elements.assess(comp),
        "cost": design.cost.assess(comp),
        "density": design.density.assess(subject.structure),
    }
    if design.band_gap is not None:
        out["band_gap"] = design.band_gap.assess(
            subject.band_gap, functional=subject.band_gap_functional, why_unknown=subject.band_gap_why
        )
    elif subject.band_gap is not None:
        out["band_gap"] = RequirementResult(
            "band_gap", Status.UNKNOWN, subject.band_gap, "eV", f"{subject.band_gap_functional or 'DFT'} gap"
        )
    else:
        out["band_gap"] = unknown("band_gap", subject.band_gap_why)
    out["electrochemical_window"] = _window(design, subject, hull_entries=hull_entries, specie=specie)
    return {k: v if k in asked or v.status is Status.UNKNOWN else _not_asked(v) for k, v in out.items()}


def _window(
    design: DesignConfig, subject: Subject, *, hull_entries: Sequence[HullEntry] | None, specie: str
) -> RequirementResult:
    if hull_entries is None:
        return unknown("electrochemical_window", subject.hull_why)
    if subject.energy_per_atom is None:
        return unknown("electrochemical_window", "no energy in the hull's level of theory")
    try:
        window = stability_window(
            composition=subject.structure.composition,
            energy_per_atom=subject.energy_per_atom,
            entries=hull_entries,
            specie=specie,
        )
    except WindowError as exc:
        return unknown("electrochemical_window", str(exc))
    return judge_window(window, design.electrochemical_window)


@dataclass
class ExpensiveStore:
    """Where expensive results are read from and written to (the campaign store, or a dict for `matloop assess`).

    Attributes:
        stored: (requirement, settings key) -> {structure hash: result dict}.
        commit: Called with (structure hash, requirement, settings key, result dict) as each result completes.
    """

    stored: Callable[[str, str], dict[str, dict[str, Any]]]
    commit: Callable[[str, str, str, dict[str, Any]], None]


@dataclass
class ExpensiveReport:
    """What the expensive tier did: results computed now and reused from the store, per requirement."""

    computed: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    stopped: bool = False


def assess(
    design: DesignConfig,
    subjects: Sequence[Subject],
    *,
    hull_entries: Sequence[HullEntry] | None,
    results: ExpensiveStore,
    executor: Any = None,
    checkpoint: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_commit: Callable[[], None] | None = None,
) -> tuple[list[ShortlistRow], ExpensiveReport]:
    """Judge structures against every requirement of `design`, cheapest first (see the module docstring).

    Args:
        hull_entries: The hull of the window (None: the window is unknown).
        results: Stored expensive results and where new ones go.
        executor: The campaign's executor (`loop.runtime.execution.Executor`); None or inline: this process.
        checkpoint: The MLFF's emulator checkpoint directory; None: the shipped CHGNet.
        should_stop: Asked after each stored result; once True, no further check starts (the rows then hold
            "unknown: not run" for what is left, and `ExpensiveReport.stopped` says so).
        on_commit: Called after each stored result.

    Returns:
        The rows, passing first, then unknown, then failing, each group by E_hull; and what the expensive tier did.
    """
    specie = design.conductivity.specie if design.conductivity is not None else "Li"
    asked = tuple(design.asked)
    rows = {
        s.key: ShortlistRow(
            key=s.key,
            formula=s.structure.composition.reduced_formula,
            structure_hash=s.structure_hash,
            e_hull=s.e_hull,
            asked=asked,
            results=cheap_results(design, s, hull_entries=hull_entries, specie=specie),
        )
        for s in subjects
    }
    report = ExpensiveReport()
    for requirement in EXPENSIVE:
        if getattr(design, requirement) is None:
            for row in rows.values():
                row.results[requirement] = unknown(requirement, "not asked")
            continue
        gated = requirement in design.expensive
        eligible, skipped = [], []
        for s in subjects:
            failed = rows[s.key].failed
            (skipped if gated and failed else eligible).append((s, failed))
        # A result stored in an earlier round (before the hull moved) is still shown; nothing new is run for it.
        earlier = results.stored(requirement, design.settings_key(requirement)) if skipped else {}
        for s, failed in skipped:
            if s.structure_hash in earlier:
                rows[s.key].results[requirement] = RequirementResult.from_dict(earlier[s.structure_hash])
            else:
                rows[s.key].results[requirement] = unknown(
                    requirement, f"not run: failed {', '.join(failed)}"
                )
        if report.stopped:
            for s, _ in eligible:
                rows[s.key].results[requirement] = unknown(requirement, "not run yet: stopped on request")
            continue
        outcomes = _run_tier(
            requirement,
            [s for s, _ in eligible],
            design=design,
            results=results,
            executor=executor,
            checkpoint=checkpoint,
            should_stop=should_stop,
            on_commit=on_commit,
            report=report,
        )
        for s, _ in eligible:
            got = outcomes.get(s.structure_hash)
            rows[s.key].results[requirement] = (
                RequirementResult.from_dict(got) if got is not None else unknown(requirement, "not run yet")
            )
    ordered = sorted(
        rows.values(),
        key=lambda r: (_ORDER[r.status], r.e_hull if r.e_hull is not None else float("inf"), r.key),
    )
    for row in ordered:  # columns in the order the requirements run
        in_order = {k: row.results[k] for k in REQUIREMENTS if k in row.results}
        row.results.clear()
        row.results.update(in_order)
    return ordered, report


def _run_tier(
    requirement: str,
    subjects: Sequence[Subject],
    *,
    design: DesignConfig,
    results: ExpensiveStore,
    executor: Any,
    checkpoint: str | None,
    should_stop: Callable[[], bool],
    on_commit: Callable[[], None] | None,
    report: ExpensiveReport,
) -> dict[str, dict[str, Any]]:
    """Run one expensive check on the structures with no stored result; returns every result by structure hash."""
    # the MLFF checks load CHGNet, torch and phonopy: only once an expensive check is asked
    from loop.runtime.assessment_tasks import run_check

    key = design.settings_key(requirement)
    settings = design.check_settings(requirement)
    stored = results.stored(requirement, key)
    unique = {s.structure_hash: s for s in subjects}
    # Largest cells first: MD and phonon costs grow with the supercell, and the longest start first.
    todo = sorted((h for h in unique if h not in stored), key=lambda h: -len(unique[h].structure))
    report.reused[requirement] = len(unique) - len(todo)
    report.computed[requirement] = 0
    out = {h: stored[h] for h in unique if h in stored}
    with progress(total=len(todo), what=f"design check {requirement}") as bar:

        def commit(h: str, result: dict[str, Any]) -> None:
            results.commit(h, requirement, key, result)
            out[h] = {k: v for k, v in result.items() if k != "wall_time"}
            report.computed[requirement] += 1
            bar.update()
            formula = unique[h].structure.composition.reduced_formula
            log.info("%s of %s: %s (%s)", requirement, formula, result["status"], result["detail"])
            if on_commit is not None:
                on_commit()

        if executor is None or executor.inline:
            for h in todo:
                commit(h, run_check(requirement, unique[h].structure.as_dict(), settings, checkpoint))
                if should_stop():
                    report.stopped = True
                    break
            return out
        futures = {
            executor.submit(
                run_check, requirement, unique[h].structure.as_dict(), settings, checkpoint, pure=False
            ): h
            for h in todo
        }
        outstanding = set(futures)
        for future in executor.as_completed(list(futures)):
            if future not in outstanding:  # cancelled on a stop request: never started
                continue
            outstanding.discard(future)
            outcome = task_result(future)
            if isinstance(outcome, TaskQuarantined):
                outcome = {**unknown(requirement, outcome.reason).to_dict(), "wall_time": 0.0}
            commit(futures[future], outcome)
            if not report.stopped and should_stop():
                report.stopped = True
                outstanding = set(executor.cancel_queued(list(outstanding)))
            if report.stopped and not outstanding:
                break
    return out


def flat_row(row: ShortlistRow) -> dict[str, Any]:
    """One row as flat columns: per requirement its status and value (units in the column name)."""
    out: dict[str, Any] = {
        "hash": row.key,
        "formula": row.formula,
        "e_hull": row.e_hull,
        "status": row.status.value,
    }
    for name in REQUIREMENTS:
        r = row.results.get(name)
        out[f"{name}_status"] = None if r is None else r.status.value
        unit = f" ({UNITS[name]})" if UNITS[name] else ""
        out[f"{name}{unit}"] = None if r is None else r.value
    return out


def rows_csv(rows: Sequence[ShortlistRow]) -> str:
    """The rows as CSV text (one line per structure; `flat_row` columns)."""
    flat = [flat_row(r) for r in rows]
    columns = list(dict.fromkeys(k for f in flat for k in f))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


__all__ = [
    "ExpensiveReport",
    "ExpensiveStore",
    "ShortlistRow",
    "Subject",
    "assess",
    "cheap_results",
    "rows_csv",
]
