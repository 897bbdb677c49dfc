"""Where the work runs: a Dask cluster made from the campaign's `execution:` section.

Tasks are idempotent, keyed by structure hash, take plain data and return plain data; the campaign store is the
only source of truth, and results are committed as they complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from loop.errors import InputError


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
        from distributed import as_completed

        return iter(as_completed(futures))

    def map_chunks(self, fn: Callable[..., list[Any]], chunks: list[list[Any]], *args: Any) -> list[Any]:
        """Run `fn(chunk, *args)` per chunk (in parallel on Dask) and concatenate the results in chunk order."""
        if self.inline:
            return [item for chunk in chunks for item in fn(chunk, *args)]
        futures = [self.client.submit(fn, chunk, *args, pure=False) for chunk in chunks]
        results = self.client.gather(futures)
        return [item for part in results for item in part]

    @property
    def n_workers(self) -> int:
        if self.inline:
            return 1
        return max(1, len(self.client.scheduler_info().get("workers", {})))


@contextmanager
def make_executor(execution: Any) -> Iterator[Executor]:
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
    from distributed import Client

    cluster = None
    if execution.kind == "local":
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=execution.n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
            silence_logs=40,
        )
        client = Client(cluster)
    elif execution.kind == "scheduler":
        client = Client(execution.scheduler_address)
    else:
        try:
            import dask_jobqueue
        except ImportError:
            raise InputError(
                f"execution.kind {execution.kind!r} needs dask-jobqueue: pip install 'matloop[hpc]'"
            ) from None
        cls = dask_jobqueue.SLURMCluster if execution.kind == "slurm" else dask_jobqueue.PBSCluster
        cluster = cls(**execution.jobqueue)
        cluster.scale(jobs=execution.n_workers)
        client = Client(cluster)
    try:
        yield Executor(client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
