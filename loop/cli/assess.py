"""`matloop assess FILES --design FILE`: the campaign's design stages (`loop.runtime.shortlist`) on any structures.

The design file is a campaign config (its `design:` and `oracle:` sections) or a bare design section. With
`--workdir` of a campaign, a structure that campaign labelled (matched by its structure hash, as given or as the
oracle relaxed it) is judged as the assess stage judges a hit: its oracle-relaxed cell, its oracle energy against
the campaign's hull (the electrochemical window) and its oracle band gap. Any other structure is judged as given:
its window and band gap are unknown (they need an energy and a calculation in the hull's level of theory), and the
MLFF checks relax it with the emulator first.

Everything is validated before any work; the output file is written once, at the end, so a bad input or an
interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from loop.config import validate_config
from loop.design.requirements import DesignConfig, load_design
from loop.errors import InputError
from loop.runtime.execution import ExecutionConfig, make_executor
from loop.runtime.shortlist import ExpensiveStore, Subject, assess, rows_csv
from loop.science.structures import read_structures, structure_hash
from loop.store import CampaignStore
from loop.views.oracle_hull import current_hull

OUT_SUFFIXES = (".csv", ".json")


def read_design(path: Path) -> DesignConfig:
    """The design section of `path` (a campaign YAML or a bare design section).

    Raises:
        InputError: missing file, YAML error, unknown key, impossible range, a requirement its oracle cannot answer.
    """
    if not path.is_file():
        raise InputError(f"{path}: no such design file; see configs/electrolyte.yaml (its design: section)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise InputError(f"{path}: not valid YAML; fix the syntax") from None
    design, _oracle = load_design(data, source=str(path))
    return design


def check_out(out: Path | None) -> None:
    """Refuse an output path that cannot be written, before any work."""
    if out is None:
        return
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise InputError(f"--out {out}: give a .csv or .json file")
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new --out (nothing is overwritten)")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")


def _campaign_subjects(named: Sequence[tuple[str, Any]], workdir: Path) -> tuple[list[Subject], list[Any]]:
    """Subjects matched against a campaign's labels, and its hull entries."""
    if not CampaignStore.exists_in(workdir):
        raise InputError(f"--workdir {workdir}: no campaign here (no matloop.db)")
    store = CampaignStore.in_workdir(workdir)
    try:
        config = validate_config(store.get_meta("config") or {}, source=f"{workdir} (stored config)")
        results = store.oracle_results(settings_hash=config.oracle.settings_hash(), ok_only=True)
        by_hash = {}
        for r in results:
            by_hash.setdefault(r.hash, r)
            by_hash.setdefault(r.structure_hash, r)
        hull = current_hull(config, store)
        e_hull = hull.entry_e_above_hull()
        finals = store.get_structures(sorted({r.structure_hash for r in by_hash.values()}))
    finally:
        store.close()
    subjects = []
    for name, s in named:
        h = structure_hash(s)
        r = by_hash.get(h)
        if r is None:
            subjects.append(
                Subject(
                    key=name,
                    structure=s,
                    structure_hash=h,
                    band_gap_why=f"not labelled in the campaign at {workdir}",
                    hull_why=f"not labelled in the campaign at {workdir}: no energy on its hull",
                )
            )
            continue
        gap = r.metadata.get("band_gap")
        subjects.append(
            Subject(
                key=name,
                structure=finals.get(r.structure_hash, s),
                structure_hash=r.structure_hash,
                energy_per_atom=r.energy_per_atom,
                e_hull=e_hull.get(r.hash),
                band_gap=None if gap is None else float(gap),
                band_gap_functional=r.metadata.get("band_gap_functional"),
                band_gap_why=f"the {config.oracle.kind} label holds no band gap",
            )
        )
    return subjects, hull.entries_in(config.elements)


def assess_files(
    files: Sequence[Path],
    *,
    design_path: Path,
    workdir: Path | None = None,
    checkpoint: Path | None = None,
    out: Path | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Judge the structures in `files` against the design in `design_path`; write `out` (.csv/.json) at the end.

    Args:
        workdir: A campaign whose labels and hull the structures are matched against (None: judged as given).
        checkpoint: Emulator checkpoint directory of the MLFF checks (None: the shipped CHGNet).
        workers: Dask worker processes for the expensive checks (1: this process).

    Returns:
        The rows (`ShortlistRow.to_dict()`), passing first.

    Raises:
        InputError: bad files, design, workdir, checkpoint or output path (before any work).
    """
    design = read_design(design_path)
    check_out(out)
    named = read_structures(files)
    if checkpoint is not None and not checkpoint.is_dir():
        raise InputError(f"--checkpoint {checkpoint}: not a folder; give an emulator checkpoint directory")
    if workers < 1:
        raise InputError("--workers must be >= 1")
    if workdir is not None:
        subjects, entries = _campaign_subjects(named, workdir)
    else:
        subjects = [
            Subject(
                key=name,
                structure=s,
                structure_hash=structure_hash(s),
                band_gap_why="no oracle calculation of it (pass --workdir of a campaign that labelled it)",
                hull_why="no hull (pass --workdir of a campaign that labelled it)",
            )
            for name, s in named
        ]
        entries = None
    memory: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def commit(h: str, requirement: str, key: str, result: dict[str, Any]) -> None:
        memory.setdefault((requirement, key), {})[h] = {k: v for k, v in result.items() if k != "wall_time"}

    results = ExpensiveStore(stored=lambda r, k: dict(memory.get((r, k), {})), commit=commit)
    execution = ExecutionConfig(kind="inline" if workers == 1 else "local", n_workers=workers)
    with make_executor(execution) as executor:
        rows, _ = assess(
            design,
            subjects,
            hull_entries=entries,
            results=results,
            executor=executor,
            checkpoint=None if checkpoint is None else os.fspath(checkpoint),
        )
    payload = [r.to_dict() for r in rows]
    if out is not None:
        text = json.dumps(payload, indent=1) if out.suffix.lower() == ".json" else rows_csv(rows)
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(text)
        partial.replace(out)
    return payload


__all__ = ["assess_files", "check_out", "read_design"]
