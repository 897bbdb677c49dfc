"""The `matloop` CLI run in a subprocess, as a user runs it: the one way the tests start the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def cli_env(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with one thread and MLflow telemetry off, then `env` on top.

    Args:
        env: Variables to set; a variable given None is removed (e.g. a crash point left by an outer run).
    """
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    for name, value in (env or {}).items():
        if value is None:
            full.pop(name, None)
        else:
            full[name] = value
    return full


def matloop(
    *args: object,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
    timeout: float | None = 1800,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m loop.cli *args` and capture its text output.

    Args:
        args: The command line, each turned into a string (paths may be given as `Path`).
        env: Variables on top of `cli_env`'s (None removes one).
        cwd: Working directory of the process; None = this process's.
        timeout: Seconds before the run is called hung (`subprocess.TimeoutExpired`); None = no limit.
    """
    return subprocess.run(
        [sys.executable, "-m", "loop.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(env),
        cwd=cwd,
        timeout=timeout,
    )
