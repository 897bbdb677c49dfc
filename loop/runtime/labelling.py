"""Running the oracle on structures and keeping the results in the campaign store (never computing one twice)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pymatgen.core import Structure

from generator.sanity import MIN_DISTANCE, shortest_distance
from loop.errors import InputError
from loop.runtime.execution import TaskQuarantined, task_result
from loop.science.structures import read_structures
from loop.store import CampaignStore, StoredResult
from loop.validation import validate_oracle_settings
from oracle.base import CalculationFailed, OracleError, OracleResult, make_oracle

log = logging.getLogger("matloop")


def oracle_settings_for(*, oracle_name: str, config_path: Path | None) -> Any:
    """Oracle settings from a config's `oracle:` section, or the named oracle's defaults.

    Raises:
        InputError: unknown oracle name, unreadable config, invalid settings (one line with the key path).
    """
    if config_path is not None:
        if not Path(config_path).is_file():
            raise InputError(f"{config_path}: no such config file")
        try:
            data = yaml.safe_load(Path(config_path).read_text()) or {}
        except yaml.YAMLError:
            raise InputError(f"{config_path}: invalid YAML; fix the syntax") from None
        section = data.get("oracle") if isinstance(data, dict) else None
        if not isinstance(section, dict):
            raise InputError(f"{config_path}: no `oracle:` section with a `kind:`")
        return validate_oracle_settings(section, source=str(config_path))
    return validate_oracle_settings({"kind": oracle_name}, source="--oracle")


def oracle_workdir(workdir: Path, h: str) -> Path:
    """Calculator files of one structure live in `<workdir>/oracle/<structure-hash>/`."""
    return Path(workdir) / "oracle" / h


def run_label(settings_dict: dict[str, Any], structure_dict: dict[str, Any], workdir: str) -> dict[str, Any]:
    """Label one structure; a plain-data function that Dask workers (or this process) run.

    Args:
        settings_dict: Oracle settings as a dict (with `kind`).
        structure_dict: `Structure.as_dict()`.
        workdir: The structure's calculator directory.

    Returns:
        `OracleResult.to_dict()`.
    """
    settings = validate_oracle_settings(settings_dict)
    result = make_oracle(settings).label(Structure.from_dict(structure_dict), workdir=Path(workdir))
    return result.to_dict()


def mark_duplicates(store: CampaignStore, hashes: Sequence[str], *, settings_hash: str) -> dict[str, str]:
    """Record `duplicate_of` for the labels of `hashes` whose final structure is the crystal of an earlier label.

    "Earlier" is the store's canonical order (round, then hash), not completion order, so the outcome is the same
    for an interrupted and an uninterrupted campaign; a match that is itself a duplicate resolves to its original.
    Final structures are compared with StructureMatcher inside buckets of the same reduced formula (the funnel's
    `KnownIndex`).

    Returns:
        The duplicates newly recorded: labelled hash -> the hash of the first label of that crystal.
    """
    results = store.oracle_results(settings_hash=settings_hash, ok_only=True)
    position = {r.hash: i for i, r in enumerate(results)}
    todo = sorted(
        (h for h in set(hashes) if h in position and results[position[h]].duplicate_of is None),
        key=position.__getitem__,
    )
    if not todo:
        return {}
    # torch (~3 s): loop.science.funnel pulls in the generator room, needed only when there is something to match.
    from loop.science.funnel import KnownIndex

    index = KnownIndex()
    indexed = 0
    found: dict[str, str] = {}
    for h in todo:
        # Index every label before this one, then ask for a match among them.
        for r in results[indexed : position[h]]:
            index.add_lazy(
                id=r.hash,
                formula=store.structure_row(r.structure_hash).reduced_formula,
                loader=lambda k=r.structure_hash: store.get_structure(k),
            )
        indexed = position[h]
        match = index.find(store.get_structure(results[position[h]].structure_hash), seed=False)
        if match is None:
            continue
        earlier = results[position[match[0]]]
        original = found.get(earlier.hash) or earlier.duplicate_of or earlier.hash
        found[h] = original
        store.set_duplicate_of(h, settings_hash=settings_hash, duplicate_of=original)
        log.info("oracle label of %s relaxed onto the crystal of %s (duplicate)", h, original)
    return found


# eV/atom. Pseudopotential codes report absolute energies of hundreds to a few thousand eV/atom (CP2K, Quantum
# ESPRESSO), PAW-referenced ones a few eV/atom (GPAW, VASP): an energy beyond this is a numerical failure.
MAX_ABS_ENERGY_PER_ATOM = 1e5


def reject_unphysical(
    result: dict[str, Any], *, settings: dict[str, Any], max_volume_per_atom: float | None = None
) -> dict[str, Any]:
    """`result` as a failed label when the oracle's final structure cannot be physical, else `result` itself.

    A force field's energy of a collapsed cell means nothing: SevenNet relaxed a layered LiPO2 candidate onto atoms
    0.08 Å apart and reported -2e16 eV/atom, which broke the hull of every later round (the rule is the one the
    screening relaxation uses, `generator.sanity`). Nor does that of a cell blown apart: a SevenNet relaxation
    expanded a 6-atom cell to 230 Å³/atom, and retraining then failed on atoms with no neighbour. In a campaign
    (`max_volume_per_atom` given) a final structure above the funnel's volume limit, or one the emulator cannot
    turn into a crystal graph (`emulator.graphs`), is refused as well: the emulator could never train on it.

    Args:
        result: `OracleResult.to_dict()`.
        settings: The oracle settings, for the failed result.
        max_volume_per_atom: The funnel's upper volume limit, Å³/atom (`generator.funnel.volume_per_atom`);
            None checks the collapse only (`matloop label`, where no emulator trains on the result).
    """
    final = result.get("final_structure")
    if result.get("status") != "ok" or not final:
        return result
    structure = Structure.from_dict(final)
    energy = f"its energy, {result.get('energy_per_atom'):.4g} eV/atom, is not a label"
    why = _unphysical(structure, max_volume_per_atom=max_volume_per_atom)
    value = float(result.get("energy_per_atom") or 0.0)
    if why is None and not abs(value) <= MAX_ABS_ENERGY_PER_ATOM:
        # No atoms too close, yet no code's energy is this: SevenNet gave -3.6e7 eV/atom for a squeezed Na2S.
        why = f"ended at an energy no code gives (|E| > {MAX_ABS_ENERGY_PER_ATOM:g} eV/atom)"
    if why is None:
        return result
    return OracleResult.failure(
        CalculationFailed(f"the oracle's relaxation {why}; {energy}"),
        wall_time=float(result.get("wall_time") or 0.0),
        attempts=int(result.get("attempts") or 1),
        settings=settings,
        metadata=result.get("metadata") or {},
    ).to_dict()


def _unphysical(structure: Structure, *, max_volume_per_atom: float | None) -> str | None:
    """What the oracle's relaxation did to `structure` that no label may keep (see `reject_unphysical`)."""
    distance = shortest_distance(structure)
    if distance < MIN_DISTANCE:
        return f"collapsed the cell (two atoms {distance:.2f} Å apart, below {MIN_DISTANCE} Å)"
    if max_volume_per_atom is None:
        return None
    volume = structure.volume / len(structure)
    if volume > max_volume_per_atom:
        return (
            f"expanded the cell to {volume:.1f} Å³/atom, above the funnel's limit of {max_volume_per_atom:g} "
            "(generator.funnel.volume_per_atom)"
        )
    # Here, not at the top: the emulator room imports CHGNet, which `matloop label` never needs.
    from emulator.graphs import graph_problem

    problem = graph_problem(structure)
    return None if problem is None else f"left a structure the emulator cannot graph ({problem})"


def label_hashes(
    store: CampaignStore,
    hashes: Sequence[str],
    *,
    settings: Any,
    workdir: Path,
    round: int | None = None,
    submit: Callable[..., Any] | None = None,
    as_completed: Callable[[Any], Any] | None = None,
    on_commit: Callable[[], None] | None = None,
    max_volume_per_atom: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    cancel_queued: Callable[[list[Any]], list[Any]] | None = None,
) -> dict[str, StoredResult]:
    """Label the structures `hashes` (already in the store), skipping every one that has a stored result.

    Every structure is checked first (`Oracle.check`: the size guard and the input checks), so a cell the oracle
    refuses, e.g. one too large for its `max_atoms` or memory estimate, is never submitted: its query is stored as
    failed with the typed reason. Results are committed one by one as they complete, so a kill loses at most the
    calculations in flight (and the oracle's own result file in the structure's work dir keeps even those). A
    successful result's final (oracle-relaxed) structure is stored; one that is the crystal of an earlier label is
    recorded as its duplicate (`mark_duplicates`).

    Args:
        submit / as_completed: A Dask client's `submit` and `distributed.as_completed`; None runs in this process.
        on_commit: Called after each committed result (the campaign checks for stop requests there).
        max_volume_per_atom: In a campaign, the funnel's upper volume limit, Å³/atom: a result whose final
            structure exceeds it or cannot be graphed by the emulator is stored as failed (`reject_unphysical`).
        should_stop: Asked after each committed result; once it says True no calculation starts any more, the
            ones under way finish and are stored, and the structures never started are left out of the result.
        cancel_queued: With Dask, cancels the given futures no worker has started and returns the others.

    Returns:
        The result of every hash: the stored one, or for a transient failure (nothing computed, not stored, so
        retried next time) the failure itself.
    """
    settings_hash = settings.settings_hash()
    todo = [h for h in dict.fromkeys(hashes) if store.get_oracle_result(h, settings_hash) is None]
    structures = store.get_structures(todo)
    settings_dict = settings.model_dump()
    oracle = make_oracle(settings)

    transient: dict[str, dict[str, Any]] = {}

    def commit(h: str, result: dict[str, Any]) -> None:
        result = reject_unphysical(result, settings=settings_dict, max_volume_per_atom=max_volume_per_atom)
        # A failure that says nothing lasting about the structure (missing executable, internal fault) is not a
        # label: keep it out of the store so a later round or run can try again.
        if result.get("status") != "ok" and result.get("transient"):
            transient[h] = result
        else:
            if replaced := (result.get("metadata") or {}).get("replaced_corrupt_result"):
                log.warning("oracle result file of %s was corrupt and was recomputed once: %s", h, replaced)
            store.add_oracle_result(
                h, oracle=settings.kind, settings_hash=settings_hash, result=result, round=round
            )
        if on_commit is not None:
            on_commit()

    runnable = []
    for h in todo:
        try:
            oracle.check(structures[h])
        except OracleError as exc:
            if exc.transient:
                # About this machine (e.g. the code is installed only on the workers): let a worker decide.
                runnable.append(h)
                continue
            commit(
                h,
                OracleResult.failure(
                    exc, wall_time=0.0, attempts=0, settings=settings_dict, metadata={}
                ).to_dict(),
            )
        else:
            runnable.append(h)

    # Largest cells first: calculations cost far more with size, and starting the longest ones first keeps the
    # workers busy until the end (round 0 of the demo: 466 s -> ~420 s on 2 workers). Stable, so ties keep the
    # canonical order.
    runnable.sort(key=lambda h: -len(structures[h]))
    stopping = False
    if submit is None or as_completed is None:
        for h in runnable:
            commit(h, run_label(settings_dict, structures[h].as_dict(), str(oracle_workdir(workdir, h))))
            if should_stop is not None and should_stop():
                stopping = True
                break
    else:
        futures = {
            submit(
                run_label, settings_dict, structures[h].as_dict(), str(oracle_workdir(workdir, h)), pure=False
            ): h
            for h in runnable
        }
        outstanding = set(futures)
        for future in as_completed(list(futures)):
            if future not in outstanding:  # cancelled on a stop request: never started
                continue
            outstanding.discard(future)
            outcome = task_result(future)
            if isinstance(outcome, TaskQuarantined):
                outcome = quarantined_label(outcome, settings=settings)
            commit(futures[future], outcome)
            if not stopping and should_stop is not None and should_stop():
                stopping = True
                # The calculations workers have started finish and are stored; the queued ones never start.
                running = cancel_queued(list(outstanding)) if cancel_queued is not None else list(outstanding)
                outstanding = set(running)
            if stopping and not outstanding:
                break
    # After all commits, in canonical order (also covering labels committed before a kill).
    mark_duplicates(store, hashes, settings_hash=settings_hash)
    results = {}
    for h in hashes:
        stored = store.get_oracle_result(h, settings_hash)
        if stored is None:
            if stopping and h not in transient:
                continue  # never started: labelled when the campaign resumes
            stored = _as_stored(h, settings, transient[h])
        results[h] = stored
    return results


def quarantined_label(quarantine: TaskQuarantined, *, settings: Any) -> dict[str, Any]:
    """The failed label stored for a structure whose calculation kept killing Dask workers (never retried).

    `metadata["failure"]` names the kind of failure ("worker_lost") for code; `reason` is the line for people.
    """
    return {
        "status": "failed",
        "reason": quarantine.reason,
        "failure_kind": "lost",
        "transient": False,
        "wall_time": 0.0,
        "attempts": quarantine.workers_lost,
        "settings": settings.model_dump(),
        "metadata": {
            "failure": quarantine.kind,
            "quarantined": True,
            "workers_lost": quarantine.workers_lost,
            "last_worker": quarantine.last_worker,
        },
    }


def _as_stored(h: str, settings: Any, result: dict[str, Any]) -> StoredResult:
    return StoredResult(
        hash=h,
        oracle=settings.kind,
        settings_hash=settings.settings_hash(),
        status=result["status"],
        energy=None,
        energy_per_atom=None,
        forces=None,
        stress=None,
        reason=result.get("reason"),
        wall_time=float(result.get("wall_time") or 0.0),
        attempts=int(result.get("attempts") or 0),
        settings=result.get("settings") or {},
        metadata=result.get("metadata") or {},
        round=None,
        failure_kind=result.get("failure_kind"),
    )


def summarize_result(
    name: str, structure: Structure, stored: StoredResult, *, cached: bool
) -> dict[str, Any]:
    """One printable row: energy per atom eV/atom, max force eV/Å, pressure GPa (−trace/3), wall time s.

    The numbers belong to the oracle's final structure (`final_hash`): after a relaxation (`relax_steps` taken,
    `relax_converged`), the relaxed geometry.
    """
    forces = None if stored.forces is None else np.asarray(stored.forces)
    stress = None if stored.stress is None else np.asarray(stored.stress)
    return {
        "structure": name,
        "hash": stored.hash,
        "formula": structure.composition.reduced_formula,
        "natoms": len(structure),
        "oracle": stored.oracle,
        "status": stored.status,
        "reason": stored.reason,
        "energy": stored.energy,
        "energy_per_atom": stored.energy_per_atom,
        "max_force": None if forces is None else float(np.linalg.norm(forces, axis=1).max()),
        "pressure": None if stress is None else float(-stress[:3].mean()),
        "forces": stored.forces,
        "stress": stored.stress,
        "wall_time": stored.wall_time,
        "attempts": stored.attempts,
        "failure_kind": stored.failure_kind,
        "final_hash": stored.final_hash,
        "relax_steps": stored.metadata.get("relax_steps_taken"),
        "relax_converged": stored.metadata.get("relax_converged"),
        "cached": cached,
    }


def label_files(
    files: Sequence[Path], *, oracle_name: str, config_path: Path | None, workdir: Path
) -> list[dict[str, Any]]:
    """`matloop label`: validate everything first (nothing is written on bad input), then label.

    Raises:
        InputError: missing/malformed file, unknown oracle, invalid settings, an element the oracle cannot treat.
    """
    named = read_structures(files)
    settings = oracle_settings_for(oracle_name=oracle_name, config_path=config_path)
    oracle = make_oracle(settings)
    for name, s in named:
        try:
            oracle.check(s)
        except OracleError as exc:
            fix = exc.fix or "choose another --oracle or remove the structure"
            raise InputError(f"{name}: {exc.reason}; {fix}") from None

    store = CampaignStore.in_workdir(workdir)
    try:
        hashes = [store.add_structure(s, source="user", provenance={"file": name}) for name, s in named]
        settings_hash = settings.settings_hash()
        cached = {h: store.get_oracle_result(h, settings_hash) is not None for h in hashes}
        results = label_hashes(store, hashes, settings=settings, workdir=workdir)
        return [
            summarize_result(name, s, results[h], cached=cached[h])
            for (name, s), h in zip(named, hashes, strict=True)
        ]
    finally:
        store.close()
