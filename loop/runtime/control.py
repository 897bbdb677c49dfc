"""Controlling a campaign's workdir from outside the process that runs it: the lock that `run`, `daemon` and
`sync-tracking` hold (one process per campaign), and stop requests (`matloop stop`).

Light on purpose: `matloop stop` imports no room.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from loop.errors import InputError

LOCK_FILE = "daemon.lock"
STOP_FILE = "stop.request"


def campaign_running(workdir: Path) -> bool:
    """Whether a `run`/`daemon` process holds the campaign's lock."""
    path = Path(workdir) / LOCK_FILE
    if not path.is_file():
        return False
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold the campaign's lock: a second `run`/`daemon` on the same workdir fails fast instead of racing.

    Raises:
        InputError: another process holds it.
    """
    path = Path(workdir) / LOCK_FILE
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InputError(
            f"{workdir}: another matloop process is running this campaign (see {path})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def request_stop(workdir: Path) -> str:
    """Ask a running campaign to stop once the calculation (or stage) under way is stored (`matloop stop`).

    The request is a file the running process removes when it stops; with no process running nothing is written,
    so a stale request cannot stop the next run.
    """
    workdir = Path(workdir)
    if not campaign_running(workdir):
        return f"no matloop process is running the campaign in {workdir}; nothing to stop"
    (workdir / STOP_FILE).write_text(str(time.time()))
    return (
        f"stop requested: the campaign in {workdir} stops once the calculation (or stage) under way is stored; "
        "rerun to resume"
    )


def stop_requested(workdir: Path) -> bool:
    """Whether `matloop stop` asked the campaign in `workdir` to stop."""
    return (Path(workdir) / STOP_FILE).exists()


class StopRequested(Exception):
    """Raised between atomic steps when a stop was asked for (signal or `matloop stop`)."""


__all__ = [
    "LOCK_FILE",
    "STOP_FILE",
    "StopRequested",
    "campaign_running",
    "request_stop",
    "stop_requested",
    "workdir_lock",
]
