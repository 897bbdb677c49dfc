"""Fault injection for the crash-consistency tests; inert unless `MATLOOP_CRASH_AFTER` is set (never in normal use).

`MATLOOP_CRASH_AFTER=<stage>:<round>:<point>` SIGKILLs the campaign process at one point of one stage of one round:

    <n>       right after the stage's n-th committed result (the label stage commits one per oracle result)
    commit    inside the stage's closing transaction: its rows are written but not yet committed
    write<n>  as the stage opens its n-th file for writing under the workdir: n-1 files are complete and the
              n-th is empty (a checkpoint or MLflow artifact torn mid-write)

A process killed this way resumes like one killed by the machine: that is what the tests check.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV = "MATLOOP_CRASH_AFTER"

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT


class _WriteWatch:
    """Counts files opened for writing under one directory while armed (a `sys.addaudithook` hook)."""

    def __init__(self) -> None:
        self.root: str | None = None
        self.target = 0
        self.seen = 0
        self.installed = False

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.root is None or event != "open":
            return
        path, _mode, flags = args
        if not isinstance(path, str | bytes | os.PathLike) or not isinstance(flags, int):
            return
        if not flags & _WRITE_FLAGS:
            return
        if not os.path.abspath(os.fsdecode(path)).startswith(self.root):
            return
        self.seen += 1
        if self.seen >= self.target:
            _kill()


_watch = _WriteWatch()


def _kill() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _spec() -> str | None:
    return os.environ.get(ENV) or None


def crash_point(stage: str, rnd: int, point: int | str) -> None:
    """SIGKILL this process if `MATLOOP_CRASH_AFTER` names this point of this stage of this round."""
    spec = _spec()
    if spec is not None and spec == f"{stage}:{rnd}:{point}":
        _kill()


@contextmanager
def stage_writes(stage: str, rnd: int, *, workdir: Path) -> Iterator[None]:
    """Arm the `write<n>` crash point while one stage runs (the audit hook costs nothing when not armed)."""
    spec = _spec()
    prefix = f"{stage}:{rnd}:write"
    if spec is None or not spec.startswith(prefix):
        yield
        return
    if not _watch.installed:
        sys.addaudithook(_watch)
        _watch.installed = True
    _watch.root = os.path.abspath(workdir) + os.sep
    _watch.target, _watch.seen = int(spec[len(prefix) :]), 0
    try:
        yield
    finally:
        _watch.root = None


__all__ = ["ENV", "crash_point", "stage_writes"]
