"""Start-up time of the `matloop` command line: `--help` and an argument error, each run `--repeats` times.

Reports the median wall time and the median CPU time (user + sys) of a fresh interpreter per run; CPU time is
the fairer figure on a shared, loaded machine. Run from the repository root:

    python -m benchmarks.cli_startup --repeats 10
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

CASES = {"--help": ["--help"], "argument error": ["run"]}


def one_run(args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `python -m loop.cli ARGS` in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "loop.cli", *args], capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    options = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name, args in CASES.items():
        runs = [one_run(args) for _ in range(options.repeats)]
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:>15}: median wall {wall:.2f} s, median CPU {cpu:.2f} s over {options.repeats} runs")


if __name__ == "__main__":
    main()
