"""The campaign store: one sqlite file per workdir, the only source of truth of a campaign.

Everything a campaign knows lives here: structures with provenance, funnel outcomes, emulator predictions, oracle
queries and results, rounds and stages. Writes happen in transactions; a stage marks itself done in the same
transaction as its results, so a process killed at any point leaves either the whole stage or none of it.

Units: energies eV, energies per atom eV/atom, forces eV/Å, stress GPa, wall times s.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from loop.errors import InputError
from loop.science.structures import structure_from_json, structure_hash, structure_to_json

# 2: the `generated` table (a round's generated candidates, formerly in the generate stage's report)
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS structures (
    hash TEXT PRIMARY KEY,
    formula TEXT NOT NULL,
    reduced_formula TEXT NOT NULL,
    chemsys TEXT NOT NULL,
    nsites INTEGER NOT NULL,
    structure TEXT NOT NULL,          -- pymatgen JSON
    source TEXT NOT NULL,             -- seed | diffusion | substitution | random_search | relaxed | user
    parent TEXT,                      -- structure hash or external id of the parent
    round INTEGER,
    provenance TEXT NOT NULL,         -- JSON: what was done to make it
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS structures_formula ON structures(reduced_formula);
CREATE TABLE IF NOT EXISTS generated (
    round INTEGER NOT NULL,
    position INTEGER NOT NULL,        -- generation order (a structure proposed twice appears twice)
    hash TEXT NOT NULL,               -- in `structures`
    source TEXT NOT NULL,             -- the generator
    PRIMARY KEY (round, position)
);
CREATE TABLE IF NOT EXISTS candidates (
    round INTEGER NOT NULL,
    hash TEXT NOT NULL,
    source TEXT NOT NULL,
    passed INTEGER NOT NULL,
    reason TEXT,                      -- why the funnel removed it
    fingerprint TEXT,                 -- loop.science.fingerprint `to_str` of a candidate that passed
    PRIMARY KEY (round, hash)
);
CREATE TABLE IF NOT EXISTS predictions (
    round INTEGER NOT NULL,
    hash TEXT NOT NULL,               -- the candidate
    relaxed_hash TEXT,                -- the emulator-relaxed structure (also in `structures`)
    model TEXT NOT NULL,              -- emulator checkpoint id
    energy_per_atom REAL,             -- eV/atom, ensemble mean
    energy_per_atom_std REAL,         -- eV/atom
    e_hull REAL,                      -- eV/atom above the campaign's oracle hull (NULL when not computable)
    e_hull_std REAL,                  -- eV/atom
    data TEXT NOT NULL,               -- JSON: steps, convergence, reasons
    PRIMARY KEY (round, hash)
);
CREATE TABLE IF NOT EXISTS queries (
    round INTEGER NOT NULL,
    hash TEXT NOT NULL,               -- the structure sent to the oracle
    strategy TEXT NOT NULL,
    rank INTEGER NOT NULL,
    score REAL,
    PRIMARY KEY (round, hash)
);
CREATE TABLE IF NOT EXISTS oracle_results (
    hash TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    oracle TEXT NOT NULL,
    status TEXT NOT NULL,             -- ok | failed
    energy REAL,                      -- eV
    energy_per_atom REAL,             -- eV/atom
    forces TEXT,                      -- JSON (n, 3), eV/Å
    stress TEXT,                      -- JSON Voigt (6,), GPa
    reason TEXT,
    wall_time REAL,                   -- s
    attempts INTEGER,
    settings TEXT NOT NULL,
    metadata TEXT NOT NULL,
    round INTEGER,
    created_at REAL NOT NULL,
    final_hash TEXT,                  -- the geometry energy/forces/stress belong to (oracle-relaxed), in `structures`
    failure_kind TEXT,                -- oracle.base.FailureKind of a failed label
    duplicate_of TEXT,                -- an earlier labelled hash whose final structure matches this one's
    PRIMARY KEY (hash, settings_hash)
);
CREATE TABLE IF NOT EXISTS oracle_frames (
    hash TEXT NOT NULL,               -- the labelled (queried) structure
    settings_hash TEXT NOT NULL,
    step INTEGER NOT NULL,            -- 0 = the input geometry
    structure TEXT NOT NULL,          -- pymatgen JSON
    energy REAL NOT NULL,             -- eV
    forces TEXT NOT NULL,             -- JSON (n, 3), eV/Å
    stress TEXT NOT NULL,             -- JSON Voigt (6,), GPa
    PRIMARY KEY (hash, settings_hash, step)
);
CREATE TABLE IF NOT EXISTS stability (
    round INTEGER NOT NULL,           -- the hull of the end of this round
    hash TEXT NOT NULL,
    e_hull REAL NOT NULL,             -- eV/atom above the oracle hull
    stable INTEGER NOT NULL,          -- on the hull
    near_stable INTEGER NOT NULL,     -- within the campaign's threshold
    PRIMARY KEY (round, hash)
);
CREATE TABLE IF NOT EXISTS assessments (
    hash TEXT NOT NULL,               -- the assessed structure (a hit's oracle-relaxed cell), in `structures`
    requirement TEXT NOT NULL,        -- an expensive design check: conductivity | phonons | thermal
    settings_key TEXT NOT NULL,       -- loop.design.requirements.DesignConfig.settings_key of the check
    status TEXT NOT NULL,             -- pass | fail | unknown
    result TEXT NOT NULL,             -- JSON: loop.design.requirements.RequirementResult.to_dict()
    round INTEGER,
    wall_time REAL,                   -- s
    created_at REAL NOT NULL,
    PRIMARY KEY (hash, requirement, settings_key)
);
CREATE TABLE IF NOT EXISTS shortlist (
    round INTEGER NOT NULL,           -- judged at the end of this round
    hash TEXT NOT NULL,               -- the hit (the labelled structure)
    status TEXT NOT NULL,             -- pass (every requirement asked passes) | fail | unknown
    row TEXT NOT NULL,                -- JSON: loop.runtime.shortlist.ShortlistRow.to_dict()
    PRIMARY KEY (round, hash)
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    status TEXT NOT NULL,             -- running | done
    started_at REAL NOT NULL,
    finished_at REAL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS stages (
    round INTEGER NOT NULL,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,             -- done
    started_at REAL,
    finished_at REAL NOT NULL,
    result TEXT NOT NULL,             -- JSON summary (counts, wall time)
    PRIMARY KEY (round, stage)
);
"""


# Columns added after the first release of a table: (table, column, SQL type), added to older stores on open.
_ADDED_COLUMNS = (
    ("oracle_results", "final_hash", "TEXT"),
    ("oracle_results", "failure_kind", "TEXT"),
    ("oracle_results", "duplicate_of", "TEXT"),
    ("candidates", "fingerprint", "TEXT"),
)


class SchemaMismatch(InputError):
    """The campaign store was written by a matloop with another schema than this one reads."""


@dataclass(frozen=True)
class Generated:
    """A candidate as a generator proposed it in one round (before the funnel)."""

    hash: str
    source: str


@dataclass(frozen=True)
class FunnelOutcome:
    """The funnel's verdict on one generated candidate: `reason` says which filter removed it and why; a candidate
    that passed keeps its fingerprint (`loop.science.fingerprint`), so later rounds index it without recomputing."""

    hash: str
    source: str
    passed: bool
    reason: str | None
    fingerprint: str | None = None


@dataclass(frozen=True)
class Prediction:
    """The emulator's screening result of one candidate. Units: eV/atom.

    `relaxed_hash` is the emulator-relaxed structure (stored with source "relaxed"); `e_hull` is None when the
    candidate could not be placed on the oracle hull (`data["reason"]` says why).
    """

    hash: str
    relaxed_hash: str | None
    model: str
    energy_per_atom: float | None
    energy_per_atom_std: float | None
    e_hull: float | None
    e_hull_std: float | None
    data: dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One structure sent to the oracle: the strategy that chose it, its rank in the batch and its utility."""

    hash: str
    strategy: str
    rank: int
    score: float | None


@dataclass(frozen=True)
class StabilityRecord:
    """A row of the `stability` table: a labelled structure judged on the oracle hull at the end of a round
    (`loop.science.verdicts`): E_hull eV/atom; a hit is stable or near-stable."""

    hash: str
    e_hull: float
    stable: bool
    hit: bool


@dataclass(frozen=True)
class StructureRow:
    """A stored structure's row, without the structure itself (`CampaignStore.get_structure` reads that).

    Attributes:
        source: seed | withheld | diffusion | substitution | random_search | relaxed | oracle_relaxed | user.
        parent: The parent's structure hash or external id (a substitution's parent, a relaxation's start).
        round: The round that made it (None for structures bundled with the campaign).
        provenance: What was done to make it.
    """

    hash: str
    formula: str
    reduced_formula: str
    chemsys: str
    nsites: int
    source: str
    parent: str | None
    round: int | None
    provenance: dict[str, Any]


@dataclass(frozen=True)
class RoundRow:
    """One round: `status` running or done; times are Unix seconds; `summary` is set when it is done."""

    round: int
    status: str
    started_at: float
    finished_at: float | None
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class StageRow:
    """A finished stage of a round and its report (metrics only); times are Unix seconds."""

    round: int
    stage: str
    status: str
    started_at: float | None
    finished_at: float
    result: dict[str, Any]


@dataclass
class StoredResult:
    """An oracle result as stored. Units: eV, eV/atom, eV/Å, GPa, s.

    Energy, forces and stress belong to the structure `final_hash` (the oracle-relaxed geometry, or the labelled
    structure itself after a single point); `duplicate_of` names an earlier label whose final structure is the
    same crystal (StructureMatcher), so this one is not a new discovery; `failure_kind` types a failure.
    """

    hash: str
    oracle: str
    settings_hash: str
    status: str
    energy: float | None
    energy_per_atom: float | None
    forces: list[list[float]] | None
    stress: list[float] | None
    reason: str | None
    wall_time: float
    attempts: int
    settings: dict[str, Any]
    metadata: dict[str, Any]
    round: int | None
    final_hash: str | None = None
    failure_kind: str | None = None
    duplicate_of: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def structure_hash(self) -> str:
        """The structure the energy, forces and stress belong to (the final one when known)."""
        return self.final_hash or self.hash


@dataclass
class StoredFrame:
    """One ionic step of an oracle relaxation. Units: eV, eV/Å, GPa."""

    step: int
    structure: Structure
    energy: float
    forces: list[list[float]]
    stress: list[float]


def _migrate_1(c: sqlite3.Connection) -> int:
    """Version 1 kept a round's generated candidates as (hash, source) pairs in the generate stage's report:
    move them into `generated` and keep the report's metrics only."""
    for row in c.execute("SELECT round, result FROM stages WHERE stage = 'generate'").fetchall():
        result = json.loads(row["result"])
        pairs = result.pop("candidates", None) or []
        c.executemany(
            "INSERT OR IGNORE INTO generated(round, position, hash, source) VALUES (?,?,?,?)",
            [(row["round"], i, h, src) for i, (h, src) in enumerate(pairs)],
        )
        c.execute(
            "UPDATE stages SET result = ? WHERE round = ? AND stage = 'generate'",
            (json.dumps(result), row["round"]),
        )
    return 2


# Schema version -> the step that brings a store of that version to the next one (inside the opening transaction).
_MIGRATIONS = {1: _migrate_1}


def _as_query(row: sqlite3.Row) -> Query:
    return Query(hash=row["hash"], strategy=row["strategy"], rank=row["rank"], score=row["score"])


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class CampaignStore:
    """The sqlite campaign store of one workdir (`<workdir>/matloop.db`, WAL mode).

    Args:
        path: The database file. Created (with its schema) on first use.
    """

    FILENAME = "matloop.db"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        try:
            self._open_schema()
        except BaseException:
            self._conn.close()
            raise

    def _open_schema(self) -> None:
        """Create the schema, or check an existing store's version and bring an older one up to date in place.

        Raises:
            SchemaMismatch: the store was written by a newer matloop (or is not a matloop store).
        """
        with self.transaction() as c:
            tables = {r["name"] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = None
            if "meta" in tables:
                rows = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
                version = json.loads(rows[0]["value"]) if rows else None
            if version is not None and version not in _MIGRATIONS and version != SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"{self.path}: campaign store schema version {version}, this matloop reads {SCHEMA_VERSION}"
                    " (and migrates 1); use the matloop that wrote it or a new --workdir"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            for table, column, kind in _ADDED_COLUMNS:
                have = {row["name"] for row in c.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            while version is not None and version != SCHEMA_VERSION:
                version = _MIGRATIONS[version](c)
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (json.dumps(SCHEMA_VERSION),),
            )

    @classmethod
    def in_workdir(cls, workdir: str | Path) -> CampaignStore:
        return cls(Path(workdir) / cls.FILENAME)

    @staticmethod
    def exists_in(workdir: str | Path) -> bool:
        return (Path(workdir) / CampaignStore.FILENAME).is_file()

    def close(self) -> None:
        self._conn.close()

    # -- transactions -------------------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE … COMMIT); nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self._conn
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")
        finally:
            self._depth = 0

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    # -- meta ---------------------------------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    # -- structures ---------------------------------------------------------------------------------------------------
    def add_structure(
        self,
        structure: Structure,
        *,
        source: str,
        parent: str | None = None,
        round: int | None = None,
        provenance: dict[str, Any] | None = None,
        hash: str | None = None,
    ) -> str:
        """Insert a structure unless its hash is already known; returns the hash (the first provenance wins)."""
        h = hash or structure_hash(structure)
        comp = structure.composition
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO structures(hash, formula, reduced_formula, chemsys, nsites, structure, source,"
                " parent, round, provenance, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    h,
                    comp.formula.replace(" ", ""),
                    comp.reduced_formula,
                    comp.chemical_system,
                    len(structure),
                    structure_to_json(structure),
                    source,
                    parent,
                    round,
                    json.dumps(provenance or {}),
                    time.time(),
                ),
            )
        return h

    def has_structure(self, h: str) -> bool:
        return bool(self._query("SELECT 1 FROM structures WHERE hash = ?", (h,)))

    def get_structure(self, h: str) -> Structure:
        rows = self._query("SELECT structure FROM structures WHERE hash = ?", (h,))
        if not rows:
            raise KeyError(f"no structure {h} in {self.path}")
        return structure_from_json(rows[0]["structure"])

    def structure_rows(self, *, where: str = "1=1", params: Sequence[Any] = ()) -> list[StructureRow]:
        """Structure rows (without the structure JSON) matching a WHERE clause, in insertion order."""
        rows = self._query(
            "SELECT hash, formula, reduced_formula, chemsys, nsites, source, parent, round, provenance"
            f" FROM structures WHERE {where} ORDER BY rowid",
            params,
        )
        return [StructureRow(**(dict(r) | {"provenance": json.loads(r["provenance"])})) for r in rows]

    def structure_row(self, h: str) -> StructureRow:
        """The row of structure `h`.

        Raises:
            KeyError: `h` is not stored.
        """
        rows = self.structure_rows(where="hash = ?", params=(h,))
        if not rows:
            raise KeyError(f"no structure {h} in {self.path}")
        return rows[0]

    def get_structures(self, hashes: Sequence[str]) -> dict[str, Structure]:
        out: dict[str, Structure] = {}
        for i in range(0, len(hashes), 500):
            chunk = list(hashes[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for r in self._query(f"SELECT hash, structure FROM structures WHERE hash IN ({marks})", chunk):
                out[r["hash"]] = structure_from_json(r["structure"])
        return out

    # -- oracle results -----------------------------------------------------------------------------------------------
    def get_oracle_result(self, h: str, settings_hash: str) -> StoredResult | None:
        rows = self._query(
            "SELECT * FROM oracle_results WHERE hash = ? AND settings_hash = ?", (h, settings_hash)
        )
        return self._to_result(rows[0]) if rows else None

    def oracle_results(
        self, *, settings_hash: str | None = None, ok_only: bool = False
    ) -> list[StoredResult]:
        sql = "SELECT * FROM oracle_results WHERE 1=1"
        params: list[Any] = []
        if settings_hash is not None:
            sql += " AND settings_hash = ?"
            params.append(settings_hash)
        if ok_only:
            sql += " AND status = 'ok'"
        # Canonical order (round, then hash), not completion order: a resumed campaign commits results in another
        # order than an uninterrupted one, and everything trained on them must come out the same.
        return [
            self._to_result(r)
            for r in self._query(sql + " ORDER BY COALESCE(round, -1), hash, settings_hash", params)
        ]

    def add_oracle_result(
        self,
        h: str,
        *,
        oracle: str,
        settings_hash: str,
        result: dict[str, Any],
        round: int | None = None,
    ) -> None:
        """Store one oracle result (an `OracleResult.to_dict()`) in one transaction; an existing result for the
        same key is kept.

        The result's final structure (when it has one) is stored as a structure of its own (source
        "oracle_relaxed", parent `h`) unless it is the labelled structure itself, and linked as `final_hash`;
        relaxation frames go to `oracle_frames`.
        """
        final = result.get("final_structure")
        with self.transaction() as c:
            if self.get_oracle_result(h, settings_hash) is not None:
                return
            final_hash = None
            if final is not None:
                structure = final if isinstance(final, Structure) else Structure.from_dict(final)
                final_hash = structure_hash(structure)
                if final_hash != h:
                    self.add_structure(
                        structure,
                        source="oracle_relaxed",
                        parent=h,
                        round=round,
                        provenance={"relaxed_by": oracle, "settings_hash": settings_hash},
                        hash=final_hash,
                    )
            c.execute(
                "INSERT INTO oracle_results(hash, settings_hash, oracle, status, energy, energy_per_atom,"
                " forces, stress, reason, wall_time, attempts, settings, metadata, round, created_at, final_hash,"
                " failure_kind, duplicate_of) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    h,
                    settings_hash,
                    oracle,
                    result["status"],
                    result.get("energy"),
                    result.get("energy_per_atom"),
                    None if result.get("forces") is None else json.dumps(result["forces"]),
                    None if result.get("stress") is None else json.dumps(result["stress"]),
                    result.get("reason"),
                    float(result.get("wall_time") or 0.0),
                    int(result.get("attempts") or 0),
                    json.dumps(result.get("settings") or {}),
                    json.dumps(result.get("metadata") or {}, default=str),
                    round,
                    time.time(),
                    final_hash,
                    result.get("failure_kind"),
                    None,
                ),
            )
            c.executemany(
                "INSERT INTO oracle_frames(hash, settings_hash, step, structure, energy, forces, stress)"
                " VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        h,
                        settings_hash,
                        step,
                        json.dumps(frame["structure"])
                        if isinstance(frame["structure"], dict)
                        else structure_to_json(frame["structure"]),
                        float(frame["energy"]),
                        json.dumps(frame["forces"]),
                        json.dumps(frame["stress"]),
                    )
                    for step, frame in enumerate(result.get("frames") or [])
                ],
            )

    def set_duplicate_of(self, h: str, *, settings_hash: str, duplicate_of: str) -> None:
        """Record that the final structure of the label of `h` is the crystal of the label `duplicate_of`."""
        with self.transaction() as c:
            c.execute(
                "UPDATE oracle_results SET duplicate_of = ? WHERE hash = ? AND settings_hash = ?",
                (duplicate_of, h, settings_hash),
            )

    def oracle_frames(self, h: str, settings_hash: str) -> list[StoredFrame]:
        """The relaxation frames of the label of `h` under `settings_hash`, in step order (empty: single point)."""
        rows = self._query(
            "SELECT * FROM oracle_frames WHERE hash = ? AND settings_hash = ? ORDER BY step",
            (h, settings_hash),
        )
        return [
            StoredFrame(
                step=r["step"],
                structure=structure_from_json(r["structure"]),
                energy=r["energy"],
                forces=json.loads(r["forces"]),
                stress=json.loads(r["stress"]),
            )
            for r in rows
        ]

    @staticmethod
    def _to_result(r: sqlite3.Row) -> StoredResult:
        return StoredResult(
            hash=r["hash"],
            oracle=r["oracle"],
            settings_hash=r["settings_hash"],
            status=r["status"],
            energy=r["energy"],
            energy_per_atom=r["energy_per_atom"],
            forces=_loads(r["forces"]),
            stress=_loads(r["stress"]),
            reason=r["reason"],
            wall_time=r["wall_time"] or 0.0,
            attempts=r["attempts"] or 0,
            settings=json.loads(r["settings"]),
            metadata=json.loads(r["metadata"]),
            round=r["round"],
            final_hash=r["final_hash"],
            failure_kind=r["failure_kind"],
            duplicate_of=r["duplicate_of"],
        )

    # -- rounds and stages --------------------------------------------------------------------------------------------
    def start_round(self, rnd: int) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO rounds(round, status, started_at) VALUES (?, 'running', ?)",
                (rnd, time.time()),
            )

    def finish_round(self, rnd: int, summary: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE rounds SET status = 'done', finished_at = ?, summary = ? WHERE round = ?",
                (time.time(), json.dumps(summary), rnd),
            )

    def rounds(self) -> list[RoundRow]:
        rows = self._query("SELECT * FROM rounds ORDER BY round")
        return [RoundRow(**(dict(r) | {"summary": _loads(r["summary"])})) for r in rows]

    def stage_done(self, rnd: int, stage: str) -> bool:
        return bool(self._query("SELECT 1 FROM stages WHERE round = ? AND stage = ?", (rnd, stage)))

    def stage_result(self, rnd: int, stage: str) -> dict[str, Any] | None:
        rows = self._query("SELECT result FROM stages WHERE round = ? AND stage = ?", (rnd, stage))
        return json.loads(rows[0]["result"]) if rows else None

    def mark_stage_done(
        self, rnd: int, stage: str, result: dict[str, Any], *, started_at: float | None = None
    ) -> None:
        """Mark a stage done; call inside the transaction that wrote the stage's results."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO stages(round, stage, status, started_at, finished_at, result) VALUES (?,?,?,?,?,?)",
                (rnd, stage, "done", started_at, time.time(), json.dumps(result, default=str)),
            )

    def stages(self) -> list[StageRow]:
        """Every finished stage, in the order they finished."""
        rows = self._query("SELECT * FROM stages ORDER BY finished_at")
        return [StageRow(**(dict(r) | {"result": json.loads(r["result"])})) for r in rows]

    # -- round products -----------------------------------------------------------------------------------------------
    def add_generated(self, rnd: int, rows: Sequence[Generated]) -> None:
        """The candidates the generators proposed in round `rnd`, in generation order (structures stored first)."""
        with self.transaction() as c:
            c.execute("DELETE FROM generated WHERE round = ?", (rnd,))
            c.executemany(
                "INSERT INTO generated(round, position, hash, source) VALUES (?,?,?,?)",
                [(rnd, i, g.hash, g.source) for i, g in enumerate(rows)],
            )

    def generated(self, rnd: int) -> list[Generated]:
        """The candidates proposed in round `rnd`, in generation order."""
        rows = self._query("SELECT hash, source FROM generated WHERE round = ? ORDER BY position", (rnd,))
        return [Generated(hash=r["hash"], source=r["source"]) for r in rows]

    def add_candidates(self, rnd: int, rows: Sequence[FunnelOutcome]) -> None:
        """The funnel's outcome for every candidate of round `rnd`."""
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO candidates(round, hash, source, passed, reason, fingerprint)"
                " VALUES (?,?,?,?,?,?)",
                [(rnd, o.hash, o.source, int(o.passed), o.reason, o.fingerprint) for o in rows],
            )

    def candidates(self, rnd: int, *, passed: bool | None = None) -> list[FunnelOutcome]:
        """The funnel's verdicts of round `rnd` (only those that passed, or failed, when `passed` says so)."""
        sql = "SELECT * FROM candidates WHERE round = ?"
        params: list[Any] = [rnd]
        if passed is not None:
            sql += " AND passed = ?"
            params.append(int(passed))
        return [
            FunnelOutcome(
                hash=r["hash"],
                source=r["source"],
                passed=bool(r["passed"]),
                reason=r["reason"],
                fingerprint=r["fingerprint"],
            )
            for r in self._query(sql + " ORDER BY rowid", params)
        ]

    def fingerprints(self, *, before_round: int) -> dict[str, str]:
        """The stored fingerprint of every candidate that passed the funnel before `before_round`, by hash."""
        rows = self._query(
            "SELECT hash, fingerprint FROM candidates WHERE round < ? AND fingerprint IS NOT NULL",
            (before_round,),
        )
        return {r["hash"]: r["fingerprint"] for r in rows}

    def add_predictions(self, rnd: int, rows: Sequence[Prediction]) -> None:
        """The screening results of round `rnd`."""
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO predictions(round, hash, relaxed_hash, model, energy_per_atom,"
                " energy_per_atom_std, e_hull, e_hull_std, data) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        rnd,
                        p.hash,
                        p.relaxed_hash,
                        p.model,
                        p.energy_per_atom,
                        p.energy_per_atom_std,
                        p.e_hull,
                        p.e_hull_std,
                        json.dumps(p.data or {}, default=str),
                    )
                    for p in rows
                ],
            )

    def round_predictions(self, rnd: int) -> list[Prediction]:
        """The screening results of round `rnd`, in screening order."""
        return self.predictions_by_round(rnd).get(rnd, [])

    def predictions_by_round(self, rnd: int | None = None) -> dict[int, list[Prediction]]:
        """The screening results of every round (or only of `rnd`), each round's in screening order."""
        if rnd is None:
            rows = self._query("SELECT * FROM predictions ORDER BY round, rowid")
        else:
            rows = self._query("SELECT * FROM predictions WHERE round = ? ORDER BY rowid", (rnd,))
        out: dict[int, list[Prediction]] = {}
        for r in rows:
            out.setdefault(r["round"], []).append(
                Prediction(
                    hash=r["hash"],
                    relaxed_hash=r["relaxed_hash"],
                    model=r["model"],
                    energy_per_atom=r["energy_per_atom"],
                    energy_per_atom_std=r["energy_per_atom_std"],
                    e_hull=r["e_hull"],
                    e_hull_std=r["e_hull_std"],
                    data=json.loads(r["data"]),
                )
            )
        return out

    def add_queries(self, rnd: int, rows: Sequence[Query]) -> None:
        """Acquisition: the structures to send to the oracle in round `rnd`."""
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO queries(round, hash, strategy, rank, score) VALUES (?,?,?,?,?)",
                [(rnd, q.hash, q.strategy, q.rank, q.score) for q in rows],
            )

    def round_queries(self, rnd: int) -> list[Query]:
        """The queries of round `rnd`, by rank."""
        return [
            _as_query(r) for r in self._query("SELECT * FROM queries WHERE round = ? ORDER BY rank", (rnd,))
        ]

    def queries_by_round(self) -> dict[int, list[Query]]:
        """The queries of every round, each round's by rank."""
        out: dict[int, list[Query]] = {}
        for r in self._query("SELECT * FROM queries ORDER BY round, rank"):
            out.setdefault(r["round"], []).append(_as_query(r))
        return out

    def first_query_rounds(self) -> dict[str, int]:
        """The round in which each queried structure was first sent to the oracle (0 = a round-0 reference)."""
        rows = self._query("SELECT hash, MIN(round) AS round FROM queries GROUP BY hash")
        return {r["hash"]: r["round"] for r in rows}

    def set_stability(self, rnd: int, rows: Sequence[StabilityRecord]) -> None:
        """The hull verdicts at the end of round `rnd` (the `near_stable` column holds `StabilityRecord.hit`)."""
        with self.transaction() as c:
            c.execute("DELETE FROM stability WHERE round = ?", (rnd,))
            c.executemany(
                "INSERT INTO stability(round, hash, e_hull, stable, near_stable) VALUES (?,?,?,?,?)",
                [(rnd, v.hash, float(v.e_hull), int(v.stable), int(v.hit)) for v in rows],
            )

    def stability(self, rnd: int | None = None) -> list[StabilityRecord]:
        """Hull verdicts of round `rnd` (default: the latest round that has any), lowest E_hull first."""
        if rnd is None:
            last = self._query("SELECT MAX(round) AS r FROM stability")[0]["r"]
            if last is None:
                return []
            rnd = last
        return [
            StabilityRecord(
                hash=r["hash"], e_hull=r["e_hull"], stable=bool(r["stable"]), hit=bool(r["near_stable"])
            )
            for r in self._query("SELECT * FROM stability WHERE round = ? ORDER BY e_hull, hash", (rnd,))
        ]

    # -- design assessment --------------------------------------------------------------------------------------------
    def assessments(self, requirement: str, settings_key: str) -> dict[str, dict[str, Any]]:
        """Stored results of one expensive design check under one settings key, by structure hash."""
        rows = self._query(
            "SELECT hash, result FROM assessments WHERE requirement = ? AND settings_key = ?",
            (requirement, settings_key),
        )
        return {r["hash"]: json.loads(r["result"]) for r in rows}

    def add_assessment(
        self,
        h: str,
        *,
        requirement: str,
        settings_key: str,
        result: dict[str, Any],
        round: int | None,
        wall_time: float,
    ) -> None:
        """Store one expensive check's result (`RequirementResult.to_dict()`) as soon as it completes."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO assessments(hash, requirement, settings_key, status, result, round, "
                "wall_time, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    h,
                    requirement,
                    settings_key,
                    result["status"],
                    json.dumps(result),
                    round,
                    wall_time,
                    time.time(),
                ),
            )

    def set_shortlist(self, rnd: int, rows: Sequence[dict[str, Any]]) -> None:
        """The shortlist rows (`ShortlistRow.to_dict()`) judged at the end of round `rnd`."""
        with self.transaction() as c:
            c.execute("DELETE FROM shortlist WHERE round = ?", (rnd,))
            c.executemany(
                "INSERT INTO shortlist(round, hash, status, row) VALUES (?,?,?,?)",
                [(rnd, r["hash"], r["status"], json.dumps(r)) for r in rows],
            )

    def shortlist(self, rnd: int | None = None) -> list[dict[str, Any]]:
        """Shortlist rows of round `rnd` (default: the latest round that has any), in the order stored."""
        if rnd is None:
            last = self._query("SELECT MAX(round) AS r FROM shortlist")[0]["r"]
            if last is None:
                return []
            rnd = last
        rows = self._query("SELECT row FROM shortlist WHERE round = ? ORDER BY rowid", (rnd,))
        return [json.loads(r["row"]) for r in rows]

    # -- summaries ----------------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        def one(sql: str) -> int:
            return int(self._query(sql)[0][0])

        return {
            "structures": one("SELECT COUNT(*) FROM structures"),
            "generated": one("SELECT COUNT(*) FROM candidates"),
            "passed_funnel": one("SELECT COUNT(*) FROM candidates WHERE passed = 1"),
            "screened": one("SELECT COUNT(*) FROM predictions"),
            "queried": one("SELECT COUNT(*) FROM queries"),
            "labelled": one("SELECT COUNT(*) FROM oracle_results WHERE status = 'ok'"),
            "failed": one("SELECT COUNT(*) FROM oracle_results WHERE status != 'ok'"),
        }
