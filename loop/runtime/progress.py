"""Progress of long steps: a tqdm bar on an interactive terminal, otherwise a log line every few minutes.

A daemon's or CI job's stderr is a log file: a redrawn bar there is thousands of lines, so without a terminal the
progress is one `matloop` log line at most every `LOG_EVERY_S` seconds (none for a step that ends sooner).

Units: times s.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

log = logging.getLogger("matloop")

LOG_EVERY_S = 120.0


def interactive(stream: IO[str] | None = None) -> bool:
    """Whether `stream` (default stderr) is a terminal a bar can redraw on: not under CI, not a dumb terminal, and
    not switched off with `MATLOOP_PROGRESS=0`."""
    stream = stream or sys.stderr
    if (
        os.environ.get("MATLOOP_PROGRESS", "") == "0"
        or os.environ.get("CI")
        or os.environ.get("TERM") == "dumb"
    ):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Counts items of one step and shows them (`interactive`: a tqdm bar; otherwise a rare log line)."""

    def __init__(
        self, *, total: int, what: str, unit: str = "structures", stream: IO[str] | None = None
    ) -> None:
        self.total = total
        self.what = what
        self.unit = unit
        self.done = 0
        self._started = self._logged = time.monotonic()
        self._bar: Any = None
        if interactive(stream) and total > 0:
            from tqdm import tqdm  # only on a terminal

            self._bar = tqdm(
                total=total,
                desc=what,
                unit=f" {unit}",
                file=stream or sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )

    def update(self, n: int = 1) -> None:
        """`n` more items done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_S and self.done < self.total:
            self._logged = now
            log.info(
                "%s: %d of %d %s (%.0f s)", self.what, self.done, self.total, self.unit, now - self._started
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elapsed = time.monotonic() - self._started
        if self._bar is None and elapsed >= LOG_EVERY_S:
            log.info("%s: %d of %d %s in %.0f s", self.what, self.done, self.total, self.unit, elapsed)


@contextmanager
def progress(*, total: int, what: str, unit: str = "structures") -> Iterator[Progress]:
    """A `Progress` that is closed when the step ends (or fails)."""
    bar = Progress(total=total, what=what, unit=unit)
    try:
        yield bar
    finally:
        bar.close()


def seconds(x: float) -> float:
    """A duration rounded to the millisecond for a report, s."""
    return float(f"{x:.3f}")


__all__ = ["LOG_EVERY_S", "Progress", "interactive", "progress", "seconds"]
