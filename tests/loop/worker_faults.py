"""Fault injection on Dask workers for the worker-loss tests (importable by worker processes, never used by matloop).

`kill_busy_worker` and `kill_worker_in_calculation` play the node failure: SIGKILL of a worker process while it runs a
task, or while it runs an oracle calculation. `die_on` wraps a task function so that the task for one structure kills
whichever worker runs it, every time (the poisonous task that the scheduler must quarantine).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _busy(dask_worker: Any) -> tuple[int, int]:
    return os.getpid(), len(dask_worker.state.executing)


def _finished(dask_scheduler: Any) -> int:
    return sum(1 for ts in dask_scheduler.tasks.values() if ts.state == "memory")


def kill_busy_worker(client: Any, *, after_finished: int = 0, timeout_s: float = 3600.0) -> int:
    """SIGKILL a worker process that is running a task, once `after_finished` tasks have finished; its pid.

    Raises:
        TimeoutError: no worker was busy in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.run_on_scheduler(_finished) >= after_finished:
            for pid, executing in client.run(_busy, on_error="ignore").values():
                if executing:
                    os.kill(pid, signal.SIGKILL)
                    return pid
        time.sleep(0.05)
    raise TimeoutError("no Dask worker was running a task")


def kill_worker_in_calculation(oracle_dir: Path, *, calls_file: str, timeout_s: float = 600.0) -> int:
    """SIGKILL the worker process that is inside an oracle calculation under `oracle_dir`; its pid.

    A worker that Dask reports busy may still be before the calculation's "started" audit line or past its
    "finished" one; this waits for a "started" line without its "finished" line, so the kill lands in a
    calculation (the calculator subprocess runs for about a second, the poll takes milliseconds).

    Raises:
        TimeoutError: no calculation was in flight in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for log in oracle_dir.glob(f"*/{calls_file}"):
            open_calls: dict[tuple[int, int], bool] = {}
            for line in log.read_text().splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:  # a line being written
                    continue
                key = (event["pid"], event["attempt"])
                open_calls[key] = event["event"] == "started"
            for (pid, _), in_flight in open_calls.items():
                if in_flight and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    return pid
        time.sleep(0.02)
    raise TimeoutError("no oracle calculation was in flight")


def _names(arg: Any, doomed: str) -> bool:
    if isinstance(arg, str):
        return arg.endswith(doomed)
    return isinstance(arg, list | tuple) and any(_names(a, doomed) for a in arg)


def die_on(doomed: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)`, unless a string argument (or item of a list argument) ends with `doomed`: then
    SIGKILL this worker."""
    if any(_names(a, doomed) for a in args):
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(*args, **kwargs)


def echo(chunk: list[str]) -> list[str]:
    """A chunk task that returns its items."""
    return list(chunk)
