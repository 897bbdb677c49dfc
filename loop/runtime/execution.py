"""Where the work runs: a Dask cluster made from the campaign's `execution:` section.

Tasks are idempotent, keyed by structure hash, take plain data and return plain data; the campaign store is the
only source of truth, and results are committed as they complete.

Worker loss: when a worker dies (kill -9, node failure, walltime), the scheduler hands its unfinished tasks to
another worker. A task that was running on `allowed_failures + 1` workers that all died is not retried any more:
its outcome is a `TaskQuarantined` (the caller stores it as a failed result with that reason), so one poisonous
structure cannot take the cluster down forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import dask
from dask.utils import parse_timedelta
from distributed import Client, KilledWorker, LocalCluster, as_completed
from pydantic import BaseModel, ConfigDict, Field, model_validator

from loop.errors import InputError

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def duration_seconds(text: str) -> float:
    """Seconds of a batch-system walltime ("HH:MM:SS", "MM:SS", "D-HH:MM:SS") or a duration ("55m", "3h45m").

    Raises:
        ValueError: not a duration.
    """
    text = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if match and ":" in text:
        days, *parts = match.groups()
        fields = [int(p) for p in parts if p is not None]
        fields = [0] * (3 - len(fields)) + fields
        return int(days or 0) * 86400 + fields[0] * 3600 + fields[1] * 60 + fields[2]
    pieces = re.findall(r"\d+(?:\.\d+)?\s*[a-z]*", text.lower())
    try:
        if not pieces or "".join(pieces).replace(" ", "") != text.lower().replace(" ", ""):
            raise ValueError(text)
        # "3h45m" is read piece by piece, as Dask reads each one.
        return float(sum(parse_timedelta(p.strip(), default="s") for p in pieces))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{text!r} is not a duration (e.g. '04:00:00', '3h45m', '3600s')") from None


class JobQueueConfig(_Strict):
    """One batch job of a dask-jobqueue cluster (SLURM or PBS); each job runs `processes` Dask workers.

    Workers close gracefully at `lifetime` (± `lifetime_stagger`, so that they do not all leave at once) before the
    batch system's walltime kills them: their unfinished tasks move to other workers instead of being lost with
    the job, and an adaptive cluster submits replacement jobs.

    Attributes:
        cores: Cores per job.
        processes: Dask worker processes per job (threads per worker = cores / processes).
        memory: Memory per job, e.g. "64GB".
        walltime: Job walltime, "HH:MM:SS" (or "D-HH:MM:SS" on SLURM).
        queue: Partition (SLURM) or queue (PBS).
        account: Account / project charged.
        job_extra_directives: Extra `#SBATCH` / `#PBS` lines, e.g. ["--constraint=cpu"] or ["-l place=excl"].
        job_script_prologue: Shell lines run before the worker starts (module loads, `source venv/bin/activate`).
        lifetime: How long a worker runs before closing gracefully, e.g. "3h50m"; default: the walltime minus
            twice the stagger minus 2 minutes.
        lifetime_stagger: Random spread of `lifetime`, e.g. "5m".
        local_directory: Node-local scratch for worker spill files.
        interface: Network interface of workers and scheduler (e.g. "ib0") when the default host name is wrong.
        extra: Any other dask-jobqueue keyword, passed as is.
    """

    cores: int = Field(ge=1)
    processes: int = Field(default=1, ge=1)
    memory: str
    walltime: str
    queue: str | None = None
    account: str | None = None
    job_extra_directives: list[str] = Field(default_factory=list)
    job_script_prologue: list[str] = Field(default_factory=list)
    lifetime: str | None = None
    lifetime_stagger: str = "5m"
    local_directory: str | None = None
    interface: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lifetime_inside_walltime(self) -> JobQueueConfig:
        walltime = duration_seconds(self.walltime)
        latest = self.lifetime_seconds() + duration_seconds(self.lifetime_stagger)
        if self.lifetime_seconds() <= 0:
            raise ValueError(
                f"walltime {self.walltime} is too short for a lifetime_stagger of {self.lifetime_stagger}"
            )
        if latest >= walltime:
            raise ValueError(
                f"lifetime + lifetime_stagger ({latest:g} s) must end before the walltime ({walltime:g} s), "
                "or the batch system kills workers that are still running"
            )
        return self

    def lifetime_seconds(self) -> float:
        """Worker lifetime, s (see `lifetime`)."""
        if self.lifetime is not None:
            return duration_seconds(self.lifetime)
        return duration_seconds(self.walltime) - 2 * duration_seconds(self.lifetime_stagger) - 120

    def cluster_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `dask_jobqueue.SLURMCluster` / `PBSCluster`."""
        kwargs: dict[str, Any] = {
            "cores": self.cores,
            "processes": self.processes,
            "memory": self.memory,
            "walltime": self.walltime,
            "job_name": "matloop-worker",
            "job_extra_directives": list(self.job_extra_directives),
            # The workers of a job read their Dask config from the environment: the same quiet monitoring as
            # a LocalCluster's, before the user's lines so that those can override it.
            "job_script_prologue": [*quiet_monitoring_exports(), *self.job_script_prologue],
            "worker_extra_args": [
                "--lifetime",
                f"{self.lifetime_seconds():.0f}s",
                "--lifetime-stagger",
                f"{duration_seconds(self.lifetime_stagger):.0f}s",
            ],
            # No dashboard web server on a fixed port (8787 is often taken on shared login nodes).
            "scheduler_options": {"dashboard": False, "dashboard_address": ":0"},
        }
        for key in ("queue", "account", "local_directory", "interface"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs | self.extra


class AdaptConfig(_Strict):
    """Adaptive scaling: the cluster grows with queued work and shrinks when idle.

    Attributes:
        minimum: Fewest jobs (slurm/pbs) or workers (local) kept up.
        maximum: Most jobs (slurm/pbs) or workers (local).
    """

    minimum: int = Field(default=0, ge=0)
    maximum: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptConfig:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) must not exceed maximum ({self.maximum})")
        return self


class ExecutionConfig(_Strict):
    """Where the work runs.

    Attributes:
        kind: "local" (a Dask LocalCluster of worker processes, no server), "inline" (no Dask: every task in this
            process, one after the other; the debugging path), "scheduler" (connect to `scheduler_address`) or
            "slurm"/"pbs" (dask-jobqueue, configured by `jobqueue`).
        n_workers: Worker processes (local) or jobs (slurm/pbs) when not adaptive.
        threads_per_worker: BLAS/torch threads per worker; 1 is right for CHGNet and GPAW on small cells.
        scheduler_address: e.g. "tcp://10.0.0.1:8786" when kind is "scheduler".
        allowed_failures: Workers a task may take down with it (killed while running it) before it is quarantined
            as a failed result instead of being retried again. Applies where this process runs the scheduler
            (local, slurm, pbs); an external scheduler uses its own `distributed.scheduler.allowed-failures`.
        adapt: Adaptive scaling between a minimum and a maximum (jobs for slurm/pbs, workers for local) instead of
            a fixed `n_workers`.
        jobqueue: The batch job of each worker group (slurm/pbs).
    """

    kind: Literal["local", "inline", "scheduler", "slurm", "pbs"] = "local"
    n_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    scheduler_address: str | None = None
    allowed_failures: int = Field(default=2, ge=0)
    adapt: AdaptConfig | None = None
    jobqueue: JobQueueConfig | None = None

    @model_validator(mode="after")
    def _settings_needed(self) -> ExecutionConfig:
        if self.kind == "scheduler" and not self.scheduler_address:
            raise ValueError("kind 'scheduler' needs scheduler_address (e.g. tcp://host:8786)")
        if self.kind in ("slurm", "pbs") and self.jobqueue is None:
            raise ValueError(
                f"kind {self.kind!r} needs a jobqueue section (cores, memory, walltime); "
                "see configs/cluster-slurm.yaml"
            )
        return self


@dataclass(frozen=True)
class TaskQuarantined:
    """The outcome of a task that took down every worker it ran on (see the module docstring).

    Attributes:
        reason: One line for the stored result.
        workers_lost: Workers that died while running it.
        last_worker: Address of the last of them.
    """

    reason: str
    workers_lost: int
    last_worker: str | None = None

    kind: Literal["worker_lost"] = "worker_lost"


def task_result(future: Any) -> Any:
    """The value of a finished Dask future, or a `TaskQuarantined` if its workers kept dying.

    Any other exception of the task is raised here, as `future.result()` would.
    """
    try:
        return future.result()
    except KilledWorker as exc:
        lost = int(getattr(exc, "allowed_failures", 0) or 0) + 1
        last = getattr(exc, "last_worker", None)
        address = getattr(last, "address", None) if last is not None else None
        return TaskQuarantined(
            reason=f"quarantined: {lost} Dask worker(s) died while running this task (worker_lost); not retried",
            workers_lost=lost,
            last_worker=address,
        )


class Executor:
    """A thin wrapper: `submit(fn, *args)` and `as_completed(futures)`, over Dask or inline in this process."""

    def __init__(self, client: Any | None) -> None:
        self.client = client

    @property
    def inline(self) -> bool:
        return self.client is None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.client.submit(fn, *args, **kwargs)

    def as_completed(self, futures: list[Any]) -> Iterator[Any]:
        return iter(as_completed(futures))

    def cancel_queued(self, futures: list[Any]) -> list[Any]:
        """Cancel the futures no worker has taken yet; return the others, which run to their end."""
        taken = {key for keys in self.client.processing().values() for key in keys}
        queued = [f for f in futures if f.key not in taken and not f.done()]
        if queued:
            self.client.cancel(queued)
        return [f for f in futures if f not in queued]

    def map_chunks(
        self,
        fn: Callable[..., list[Any]],
        chunks: list[list[Any]],
        *args: Any,
        on_quarantine: Callable[[list[Any], TaskQuarantined], list[Any]] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """Run `fn(chunk, *args)` per chunk (in parallel on Dask) and concatenate the results in chunk order.

        Args:
            on_quarantine: Results for a chunk whose task was quarantined, from the chunk and the quarantine;
                without it, a quarantined chunk raises `WorkerLost`.
            progress: Called with each chunk's number of results as it is collected (in chunk order).
        """
        out: list[Any] = []
        if self.inline:
            for chunk in chunks:
                out.extend(fn(chunk, *args))
                if progress is not None:
                    progress(len(chunk))
            return out
        futures = [self.client.submit(fn, chunk, *args, pure=False) for chunk in chunks]
        for chunk, future in zip(chunks, futures, strict=True):
            result = task_result(future)
            if isinstance(result, TaskQuarantined):
                if on_quarantine is None:
                    raise WorkerLost(result.reason)
                result = on_quarantine(chunk, result)
            out.extend(result)
            if progress is not None:
                progress(len(chunk))
        return out

    @property
    def n_workers(self) -> int:
        if self.inline:
            return 1
        return max(1, len(self.client.scheduler_info().get("workers", {})))


class WorkerLost(RuntimeError):
    """A task was quarantined (its workers kept dying) and the caller has no failed result to put in its place."""


def jobqueue_cluster(execution: ExecutionConfig) -> Any:
    """The dask-jobqueue cluster (SLURM or PBS) of `execution`, not yet scaled (no job submitted).

    Raises:
        InputError: dask-jobqueue is missing.
    """
    try:
        import dask_jobqueue  # optional: the `hpc` extra, only for cluster kinds
    except ImportError:
        raise InputError(
            f"execution.kind {execution.kind!r} needs dask-jobqueue: pip install 'matloop[hpc]'"
        ) from None
    assert execution.jobqueue is not None  # the config validator guarantees it
    cls = dask_jobqueue.SLURMCluster if execution.kind == "slurm" else dask_jobqueue.PBSCluster
    return cls(**execution.jobqueue.cluster_kwargs())


def scale(cluster: Any, execution: ExecutionConfig) -> None:
    """Start workers: adaptive between `adapt.minimum` and `adapt.maximum`, or a fixed `n_workers`."""
    jobs = execution.kind in ("slurm", "pbs")
    if execution.adapt is not None:
        bounds = {"minimum": execution.adapt.minimum, "maximum": execution.adapt.maximum}
        if jobs:
            cluster.adapt(minimum_jobs=bounds["minimum"], maximum_jobs=bounds["maximum"])
        else:
            cluster.adapt(**bounds)
    elif jobs:
        cluster.scale(jobs=execution.n_workers)


# Dask's own monitors (a 10 ms statistical profiler, a 1 ms GIL probe, a 20 ms event-loop tick, 0.5 s system and
# 0.1 s memory samples) feed a dashboard matloop never opens. Measured on 2 cores: an idle 2-worker LocalCluster used
# 5.1 CPU-s per 30 s with the defaults and 0.85 with these, CPU the calculations on the same cores get back.
# Worker processes of a LocalCluster receive this config from their nanny; dask-jobqueue workers read their own.
_QUIET_MONITORING = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def quiet_monitoring_exports() -> list[str]:
    """`_QUIET_MONITORING` as shell lines for a job script (Dask's DASK_A__B__C environment variables)."""
    return [
        f"export DASK_{key.upper().replace('.', '__').replace('-', '_')}={value}"
        for key, value in _QUIET_MONITORING.items()
    ]


@contextmanager
def make_executor(execution: ExecutionConfig) -> Iterator[Executor]:
    """Open the Dask cluster described by an `ExecutionConfig` for the duration of a `with` block.

    Kinds: "inline" (no Dask: everything in this process), "local" (LocalCluster of worker processes, no dashboard),
    "scheduler" (an existing scheduler address), "slurm"/"pbs" (dask-jobqueue).
    """
    if execution.kind == "inline":
        yield Executor(None)
        return
    # Worker processes inherit the environment: one BLAS/torch thread each keeps 2 cores from thrashing.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(execution.threads_per_worker)
    cluster = None
    # The scheduler of local and jobqueue clusters lives in this process and reads these when it starts. A worker
    # holds only the task it runs (saturation 1.0): tasks are long (DFT, relaxations), so prefetching gains nothing,
    # and a worker's death then counts against the task that was running, not against queued bystanders too.
    settings = {
        "distributed.scheduler.allowed-failures": execution.allowed_failures,
        "distributed.scheduler.worker-saturation": 1.0,
        **_QUIET_MONITORING,
    }
    with dask.config.set(settings):
        if execution.kind == "local":
            cluster = LocalCluster(
                n_workers=execution.adapt.minimum if execution.adapt else execution.n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                worker_dashboard_address=None,
                silence_logs=40,
            )
            scale(cluster, execution)
            client = Client(cluster)
        elif execution.kind == "scheduler":
            client = Client(execution.scheduler_address)
        else:
            cluster = jobqueue_cluster(execution)
            scale(cluster, execution)
            client = Client(cluster)
    try:
        yield Executor(client)
    finally:
        _shut_down(client, cluster)


def _shut_down(client: Any, cluster: Any | None) -> None:
    """Close the client and the cluster; a slow shutdown (workers that take long to exit on a busy machine) is
    logged, never raised: every result is committed by then, and the nanny kills what is left."""
    try:
        client.close()
        if cluster is not None:
            cluster.close()
    except (TimeoutError, asyncio.CancelledError) as exc:
        log.warning(
            "the Dask cluster did not shut down cleanly (%s); results are unaffected", type(exc).__name__
        )
