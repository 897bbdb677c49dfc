"""A whole campaign run as a user runs it: `python -m loop.cli run CONFIG --workdir DIR` in a fresh process.

The config is written beside the workdir (`<workdir>.yaml`) and the process's output appended to `<workdir>.log`,
so a stopped benchmark resumes the campaign where it was (the daemon's own checkpoints).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("benchmarks.runs")


def run_campaign(config: dict[str, Any], *, workdir: Path, rounds: int) -> float:
    """Run (or resume) the campaign `config` in `workdir` for `rounds` rounds; returns this call's wall time, s.

    Raises:
        SystemExit: the campaign's process failed (its log is named).
    """
    workdir = workdir.resolve()
    workdir.parent.mkdir(parents=True, exist_ok=True)
    path = workdir.parent / f"{workdir.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "loop.cli",
        "run",
        str(path),
        "--workdir",
        str(workdir),
        "--rounds",
        str(rounds),
    ]
    log.info("%s", " ".join(cmd[1:]))
    started = time.time()
    with open(workdir.parent / f"{workdir.name}.log", "a") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{workdir}: the campaign exited {done.returncode}; see {fh.name}")
    return time.time() - started
