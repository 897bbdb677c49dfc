"""The discovery loop: rounds of generate → funnel → screen → acquire → label → update → retrain → assess → track.

Every stage reads the campaign store, does its work, then writes its results and marks itself done in one
transaction. A restarted process continues with the first stage not done; the label stage submits only the
structures with no stored oracle result. Round 0 labels the references (elements and known compounds of the
campaign's chemical systems) so the hull is built in the oracle's level of theory only.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sqlite3
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loop.config import CampaignConfig, load_config
from loop.errors import CampaignHalted, CheckpointCorrupt, DiskFull, InputError
from loop.report.status import campaign_status
from loop.runtime.checkpoints import CHECKPOINT_KINDS, checkpoint_problem, prune_checkpoints
from loop.runtime.control import (
    LOCK_FILE,
    STOP_FILE,
    StopRequested,
    request_stop,
    stop_requested,
    workdir_lock,
)
from loop.runtime.execution import make_executor
from loop.runtime.faults import crash_point, stage_writes
from loop.stages import (
    ROUND0_STAGES,
    ROUND_STAGES,
    acquire,
    assess,
    funnel,
    generate,
    label,
    references,
    retrain,
    screen,
    stages_of,
    track,
    update,
)
from loop.stages.base import Stage, StageContext, checkpoint_dir
from loop.store import CampaignStore
from loop.tracking.campaign import end_campaign, mlflow_copy_checker
from loop.tracking.runs import ui_command
from loop.views.oracle_calls import oracle_calls, oracle_calls_left, reference_labels

log = logging.getLogger("matloop")

_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# SQLITE_FULL, and SQLITE_IOERR_WRITE (what a file-size quota gives)
_SQLITE_NO_SPACE = {13, 778}
_PROBE_BYTES = 4 << 20  # about two emulator checkpoints' weight files

# Every stage by name; `loop.stages` gives the order of each round.
STAGES: dict[str, Stage[Any]] = {
    s.name: s
    for s in (
        references.STAGE,
        generate.STAGE,
        funnel.STAGE,
        screen.STAGE,
        acquire.STAGE,
        label.STAGE,
        update.STAGE,
        retrain.STAGE,
        assess.STAGE,
        track.STAGE,
    )
}
assert set(STAGES) == {*ROUND0_STAGES, *ROUND_STAGES}


def tracking_ui_command(workdir: Path, *, port: int) -> list[str] | str:
    """The `mlflow ui` command for a campaign's tracking store, bound to 127.0.0.1, or the address of the MLflow
    server the campaign reports to (which is its own dashboard)."""
    store = CampaignStore.in_workdir(workdir)
    try:
        uri = ((store.get_meta("config") or {}).get("tracking") or {}).get("tracking_uri")
    finally:
        store.close()
    if uri and uri.startswith(("http://", "https://")):
        return uri
    return ui_command(Path(workdir), port=port, tracking_uri=uri)


@dataclass
class _StopFlag:
    workdir: Path
    signalled: bool = False

    def __call__(self) -> bool:
        return self.signalled or stop_requested(self.workdir)


def _disk_full_reason(exc: BaseException, workdir: Path) -> str | None:
    """Why a write failed for lack of space, if it did; else None.

    Python's own writes say so with an errno and sqlite with SQLITE_FULL, but torch's checkpoint writer only raises a
    RuntimeError: then a probe write into the workdir tells whether there is room for a checkpoint-sized file.
    """
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            where = f" writing {err.filename}" if err.filename else ""
            return f"{err.strerror or os.strerror(err.errno)}{where}"
        if isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", 0) in _SQLITE_NO_SPACE:
            return f"{err} writing the campaign store"
        err = err.__cause__ or err.__context__
    probe = workdir / f".space-probe-{os.getpid()}"
    try:
        with probe.open("wb") as handle:
            handle.write(bytes(_PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as probe_err:
        if probe_err.errno in _NO_SPACE:
            return f"{probe_err.strerror} in {workdir}"
        return None
    finally:
        probe.unlink(missing_ok=True)
    return None


class Campaign:
    """One campaign in one workdir.

    Use `Campaign.open(config_path=..., workdir=...)` then `run()`.
    """

    def __init__(self, config: CampaignConfig, workdir: Path, *, max_rounds: int | None = None) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.max_rounds = config.stop.max_rounds if max_rounds is None else max_rounds
        self.store: CampaignStore | None = None
        self._stop = _StopFlag(self.workdir)
        self._executor: Any = None

    # -- opening ------------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, *, config_path: Path, workdir: Path, max_rounds: int | None = None) -> Campaign:
        """Validate the config (and its fit with an existing workdir) before anything is written.

        Raises:
            InputError: invalid config, or a workdir that holds a different campaign.
        """
        config = load_config(config_path)
        if max_rounds is not None and max_rounds < 0:
            raise InputError("--rounds must be >= 0")
        workdir = Path(workdir)
        if CampaignStore.exists_in(workdir):
            store = CampaignStore.in_workdir(workdir)
            try:
                stored = store.get_meta("identity")
            finally:
                store.close()
            mine = cls.identity(config)
            if stored is not None and stored != mine:
                diff = sorted(k for k in mine if mine.get(k) != stored.get(k))
                raise InputError(
                    f"{workdir}: holds a campaign with different {', '.join(diff)}; use a new --workdir "
                    "(oracle settings and chemical systems cannot change inside one campaign)"
                )
        elif workdir.exists() and any(workdir.iterdir()):
            raise InputError(
                f"{workdir}: exists and is not a matloop campaign; choose an empty or new directory"
            )
        return cls(config, workdir, max_rounds=max_rounds)

    @staticmethod
    def identity(config: CampaignConfig) -> dict[str, Any]:
        """What must not change inside one campaign (the hull's level of theory and the target)."""
        return {
            "name": config.name,
            "chemical_systems": config.chemical_systems,
            "oracle": config.oracle.settings_hash(),
        }

    # -- running ------------------------------------------------------------------------------------------------------
    def run(self, *, daemon: bool = False) -> dict[str, Any]:
        """Run (or resume) rounds until `max_rounds` or the stop rule; returns the campaign summary.

        With `daemon=True`, SIGTERM/SIGINT let the step under way finish and be stored (in the label stage: the
        calculations under way; those not started wait for the resume), then return normally.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        _setup_logging(self.workdir / "logs" / "campaign.log")
        # Library warnings (torch/CHGNet/pymatgen internals) would drown the progress lines; they go to the log.
        logging.captureWarnings(True)
        warnings.simplefilter("ignore", UserWarning)
        with workdir_lock(self.workdir):
            (self.workdir / STOP_FILE).unlink(missing_ok=True)
            store = self.store = CampaignStore.in_workdir(self.workdir)
            previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} if daemon else {}
            if daemon:
                for s in previous:
                    signal.signal(s, self._on_signal)
            # How the campaign's MLflow run ends: FINISHED by the stop rule, KILLED on request, FAILED on an error.
            end = ("FAILED", "the process ended unexpectedly")
            try:
                self._init_meta()
                # Before anything runs: a torn or corrupted checkpoint is caught here, not by a worker mid-round.
                self._verify_checkpoints()
                with make_executor(self.config.execution) as executor:
                    self._executor = executor
                    self._run_rounds()
                end = ("FINISHED", str(store.get_meta("stopped_because") or "all rounds done"))
            except StopRequested:
                log.info("stopped on request after a completed step; rerun to resume")
                end = ("KILLED", "stopped on request (signal or `matloop stop`); rerun to resume")
            except KeyboardInterrupt:
                end = ("KILLED", "interrupted; rerun to resume")
                raise
            except CampaignHalted as exc:
                _log_halt(exc)
                end = ("FAILED", " ".join(str(exc).split())[:500])
                raise
            except Exception as exc:
                reason = _disk_full_reason(exc, self.workdir)
                if reason is None:
                    end = ("FAILED", " ".join(f"{type(exc).__name__}: {exc}".split())[:500])
                    raise
                end = ("FAILED", f"disk full: {reason}")
                halt = DiskFull(
                    f"disk full: {reason}; the step in progress was not recorded and files being replaced were "
                    f"kept. Free space in {self.workdir} and rerun to resume"
                )
                _log_halt(halt)
                raise halt from None
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
                self._executor = None
                # The request has been honoured (or the process ends anyway): it must not stop the next run.
                (self.workdir / STOP_FILE).unlink(missing_ok=True)
                end_campaign(self.config, store=store, workdir=self.workdir, status=end[0], reason=end[1])
                if end[0] == "FAILED":
                    store.close()
            summary = campaign_status(self.workdir, store=store)
            store.close()
            return summary

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info(
            "signal %s: the calculation (or stage) under way finishes and is stored, then the campaign stops; "
            "rerun to resume",
            signum,
        )
        self._stop.signalled = True

    def _init_meta(self) -> None:
        store = self._open_store()
        if store.get_meta("identity") is None:
            store.set_meta("identity", self.identity(self.config))
            store.set_meta("started_at", time.time())
        store.set_meta("config", self.config.model_dump(mode="json"))

    def _should_stop_campaign(self, next_round: int) -> str | None:
        """The stop rule, checked before a new round starts."""
        store = self._open_store()
        rule = self.config.stop
        if next_round > self.max_rounds:
            return f"reached {self.max_rounds} rounds"
        if oracle_calls_left(self.config, store) == 0:
            return (
                f"made {oracle_calls(store)} oracle calls, stop.max_oracle_calls is {rule.max_oracle_calls} "
                f"(round 0's {reference_labels(store)} reference labels are not calls)"
            )
        if rule.max_hours is not None:
            hours = (time.time() - float(store.get_meta("started_at", time.time()))) / 3600
            if hours >= rule.max_hours:
                return f"ran {hours:.2f} h (max {rule.max_hours})"
        if rule.patience is not None and next_round > rule.patience:
            recent = [
                (r.summary or {}).get("new_discoveries", 0)
                for r in store.rounds()
                if r.round >= next_round - rule.patience and r.round >= 1
            ]
            if len(recent) >= rule.patience and not any(recent):
                return f"no new discoveries in {rule.patience} rounds"
        return None

    def _run_rounds(self) -> None:
        store = self._open_store()
        rnd = 0
        while True:
            stages = stages_of(rnd)
            if not all(store.stage_done(rnd, s) for s in stages):
                begun = any(store.stage_done(rnd, s) for s in stages)
                # A round already under way is always finished; the stop rule is asked before a new one.
                reason = None if (rnd == 0 or begun) else self._should_stop_campaign(rnd)
                if reason:
                    log.info("campaign stops: %s", reason)
                    store.set_meta("stopped_because", reason)
                    return
                if rnd > 0:
                    self._verify_checkpoints()  # again: a daemon may have run for days since it started
                self._run_round(rnd)
            rnd += 1

    def _run_round(self, rnd: int) -> None:
        store = self._open_store()
        store.start_round(rnd)
        ctx = StageContext(
            config=self.config,
            store=store,
            workdir=self.workdir,
            round=rnd,
            executor=self._executor,
            should_stop=self._stop,
        )
        for name in stages_of(rnd):
            if store.stage_done(rnd, name):
                continue
            if self._stop():
                raise StopRequested
            log.info("round %d: %s", rnd, name)
            started = time.time()
            run_stage(STAGES[name], ctx)
            log.info("round %d: %s done in %.1f s", rnd, name, time.time() - started)
        store.finish_round(rnd, self._round_summary(rnd))
        self._prune_checkpoints()

    def _open_store(self) -> CampaignStore:
        if self.store is None:
            raise RuntimeError("the campaign store is open only inside Campaign.run()")
        return self.store

    # -- paths --------------------------------------------------------------------------------------------------------
    def checkpoint_dir(self, rnd: int) -> Path:
        return checkpoint_dir(self.workdir, rnd)

    def _prune_checkpoints(self) -> None:
        """Old rounds' checkpoints leave the workdir once MLflow holds a copy (`checkpoints.keep_rounds`): a
        daemon that runs for weeks would otherwise fill the disk with them."""
        keep = self.config.checkpoints.keep_rounds
        if keep is None or not self.config.tracking.enabled:
            return
        store = self._open_store()
        pruned = prune_checkpoints(
            root=self.workdir / "checkpoints",
            keep_rounds=keep,
            in_use=[store.get_meta(f"{kind}_checkpoint") for kind in CHECKPOINT_KINDS],
            copy_problem=mlflow_copy_checker(self.config, store=store, workdir=self.workdir),
        )
        if pruned.deleted:
            log.info(
                "checkpoints of round(s) %s deleted from the workdir: read back from their MLflow model versions "
                "and identical (checkpoints.keep_rounds: %d)",
                ", ".join(map(str, pruned.deleted)),
                keep,
            )
        for rnd, why in pruned.kept.items():
            log.info("checkpoints of round %d stay in the workdir: %s", rnd, why)

    # -- checkpoint integrity -----------------------------------------------------------------------------------------
    def _saved_checkpoints(self, kind: str) -> list[tuple[int, str, str | None]]:
        """(round, path relative to the workdir, recorded sha256) of every checkpoint of `kind` that a retrain
        stage saved, oldest first."""
        store = self._open_store()
        out = []
        for stage in store.stages():
            if stage.stage != "retrain" or not stage.result.get(f"{kind}_checkpoint"):
                continue
            # By round and file name, not the stored absolute path: a workdir may have been moved since.
            name = Path(stage.result[f"{kind}_checkpoint"]).name
            rel = os.path.relpath(self.checkpoint_dir(stage.round) / name, self.workdir)
            out.append((stage.round, rel, (stage.result.get("checkpoint_sha256") or {}).get(kind)))
        return out

    def _verify_checkpoints(self) -> None:
        """Check the checkpoints the next round will use against the hashes recorded when they were saved.

        A corrupt one is replaced by the newest earlier good checkpoint of the campaign (the generator falls back
        to its shipped checkpoint when none is left), with one line in the log.

        Raises:
            CheckpointCorrupt: the emulator checkpoint is corrupt and no earlier round left a good one.
        """
        store = self._open_store()
        for kind in CHECKPOINT_KINDS:
            current = store.get_meta(f"{kind}_checkpoint")
            if current is None:
                continue
            saved = self._saved_checkpoints(kind)
            recorded = {rel: (rnd, sha) for rnd, rel, sha in saved}
            made_in, expected = recorded.get(current, (None, None))
            problem = checkpoint_problem(kind, self.workdir / current, expected)
            if problem is None:
                continue
            earlier = [
                (rnd, rel)
                for rnd, rel, sha in reversed(saved)
                if rel != current
                and (made_in is None or rnd < made_in)
                and checkpoint_problem(kind, self.workdir / rel, sha) is None
            ]
            if earlier:
                fallback: str | None = earlier[0][1]
            elif kind == "generator":
                fallback = None
            else:
                where = (
                    ""
                    if made_in is None
                    else f" (also logged to MLflow with round {made_in}: checkpoints/emulator/)"
                )
                raise CheckpointCorrupt(
                    f"emulator checkpoint {current} is corrupt ({problem}) and no earlier round left a good one; "
                    f"restore it from a backup{where}, then rerun"
                )
            log.warning(
                "%s checkpoint %s is corrupt (%s): falling back to %s",
                kind,
                current,
                problem,
                fallback or "the shipped checkpoint",
            )
            with store.transaction():
                store.set_meta(f"{kind}_checkpoint", fallback)
                fallbacks = store.get_meta("checkpoint_fallbacks", [])
                fallbacks.append(
                    {"kind": kind, "corrupt": current, "reason": problem, "used": fallback, "at": time.time()}
                )
                store.set_meta("checkpoint_fallbacks", fallbacks)

    def _round_summary(self, rnd: int) -> dict[str, Any]:
        """Counts of one round in the campaign's vocabulary (`loop.science.verdicts`): a hit is stable or near-stable."""
        store = self._open_store()
        update = store.stage_result(rnd, "update") or {}
        label = store.stage_result(rnd, "label") or {}
        stable = update.get("n_stable_new", 0)
        hits = update.get("n_hits_new", stable + update.get("n_near_stable_new", 0))
        return {
            "queried": label.get("n_queried", 0),
            "labelled": label.get("n_ok", 0),
            "failed": label.get("n_failed", 0),
            "stable": stable,
            "near_stable": hits - stable,
            "hits": hits,
            # a hit that is a known crystal (`loop.views.novelty`) is a rediscovery, not a new discovery
            "new_discoveries": update.get("n_new_discoveries", hits),
            "rediscoveries": update.get("n_rediscoveries_new", 0),
            "hit_rate": update.get("hit_rate"),
        }


def run_stage(stage: Stage[Any], ctx: StageContext) -> dict[str, Any]:
    """Compute one stage, then write its results and mark it done in one transaction; returns its report.

    The fault-injection points of `loop.runtime.faults` are armed here: `<stage>:<round>:write<n>` while it runs and
    `<stage>:<round>:commit` inside its closing transaction.
    """
    started = time.time()
    with stage_writes(stage.name, ctx.round, workdir=ctx.workdir):
        result = stage.compute(ctx)
        with ctx.store.transaction():
            report = {**stage.commit(ctx, result), "wall_time_s": round(time.time() - started, 3)}
            crash_point(stage.name, ctx.round, "commit")
            ctx.store.mark_stage_done(ctx.round, stage.name, report, started_at=started)
    return report


def _log_halt(exc: CampaignHalted) -> None:
    """Keep the reason of a halt in the campaign log (a daemon's stderr may be lost); the CLI prints it once."""
    log.error("campaign stopped: %s", exc, extra={"log_file_only": True})


def _setup_logging(path: Path) -> None:
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in log.handlers):
        return
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if not any(type(h) is logging.StreamHandler for h in log.handlers):
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter("[matloop] %(message)s"))
        stream.addFilter(lambda record: not getattr(record, "log_file_only", False))
        log.addHandler(stream)


__all__ = [
    "LOCK_FILE",
    "ROUND0_STAGES",
    "ROUND_STAGES",
    "STAGES",
    "Campaign",
    "StopRequested",
    "request_stop",
    "run_stage",
    "stages_of",
    "tracking_ui_command",
]
