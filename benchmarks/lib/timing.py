"""Wall and CPU time and the machine's load, as the benchmark scripts report them beside their results.

Timings on a shared machine mean little without the load they were taken under, so a script that reports a time
reports `load_average()` with it. CPU seconds come from one of three clocks: this process (`process_cpu_s`), its
finished children (`children_cpu_s`: calculations run in child processes), or this process with its live
descendants (`tree_cpu_s`: Dask workers). Units: s.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages, rounded to 0.01."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def process_cpu_s() -> float:
    """CPU seconds (user + system) of this process so far."""
    return time.process_time()


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children: the calculations, whatever the load."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants (Dask workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@dataclass
class Stopwatch:
    """Wall and CPU seconds since it was made; CPU on the clock `cpu` (this process's by default).

    Example: ``watch = Stopwatch(cpu=children_cpu_s)``, then the work, then ``watch.wall_s()``, ``watch.cpu_s()``.
    """

    cpu: Callable[[], float] = process_cpu_s
    wall_start: float = field(init=False)
    cpu_start: float = field(init=False)

    def __post_init__(self) -> None:
        self.wall_start = time.perf_counter()
        self.cpu_start = self.cpu()

    def wall_s(self) -> float:
        """Wall seconds since it was made."""
        return time.perf_counter() - self.wall_start

    def cpu_s(self) -> float:
        """CPU seconds on its clock since it was made."""
        return self.cpu() - self.cpu_start
