"""One process per campaign: the workdir lock that `run`, `daemon` and `sync-tracking` hold."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from loop.errors import InputError

LOCK_FILE = "daemon.lock"


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


__all__ = ["LOCK_FILE", "campaign_running", "workdir_lock"]
