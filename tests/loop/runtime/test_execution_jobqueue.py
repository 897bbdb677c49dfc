"""dask-jobqueue: the batch scripts generated from the shipped SLURM and PBS example configs, and adaptive scaling
from config (against a stand-in `sbatch` that records what it is given, since no batch system runs here)."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

from loop.config import load_config
from loop.runtime.execution import jobqueue_cluster, scale

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def job_script(name: str) -> tuple[str, object]:
    execution = load_config(CONFIGS / name).execution
    cluster = jobqueue_cluster(execution)
    try:
        return cluster.job_script(), execution
    finally:
        cluster.close()


def directives(script: str, prefix: str) -> list[str]:
    return [line[len(prefix) :].strip() for line in script.splitlines() if line.startswith(prefix)]


def worker_command(script: str) -> str:
    (line,) = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    return line


def test_slurm_job_script_from_the_example_config() -> None:
    script, _ = job_script("cluster-slurm.yaml")
    lines = directives(script, "#SBATCH")
    assert "-J matloop-worker" in lines
    assert "-p compute" in lines and "-A materials" in lines
    assert "--cpus-per-task=4" in lines  # cores per job
    assert "--mem=15G" in lines  # 16 GB requested = 14.9 GiB, rounded up by dask-jobqueue
    assert "-t 04:00:00" in lines  # walltime
    assert lines[-2:] == ["--constraint=cpu", "--mail-type=FAIL"]  # job-extra lines, verbatim and last
    assert "source $HOME/matloop/.venv/bin/activate" in script
    # Dask's dashboard monitors are switched off in the job's environment, before the user's lines (which may
    # override them).
    quiet = script.index("export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False")
    assert quiet < script.index("source $HOME/matloop/.venv/bin/activate")
    command = worker_command(script)
    assert "--nworkers 4" in command and "--nthreads 1" in command
    # Workers leave gracefully 3h45m (± 5 min) into a 4 h job, before the walltime kill.
    assert "--lifetime 13500s" in command and "--lifetime-stagger 300s" in command


def test_pbs_job_script_from_the_example_config() -> None:
    script, _ = job_script("cluster-pbs.yaml")
    lines = directives(script, "#PBS")
    assert "-N matloop-worker" in lines
    assert "-q workq" in lines and "-A materials" in lines
    assert "-l select=1:ncpus=4:mem=15GB" in lines  # cores and memory per job
    assert "-l walltime=04:00:00" in lines
    assert lines[-2:] == ["-l place=scatter:excl", "-j oe"]
    command = worker_command(script)
    assert "--nworkers 4" in command and "--nthreads 1" in command
    assert "--lifetime 13500s" in command and "--lifetime-stagger 300s" in command


def test_default_lifetime_ends_before_the_walltime(tmp_path: Path) -> None:
    text = (CONFIGS / "cluster-slurm.yaml").read_text().replace('    lifetime: "3h45m"', "")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    jobqueue = load_config(path).execution.jobqueue
    assert jobqueue is not None
    # 4 h minus twice the 5 min stagger minus 2 min: the latest worker leaves 7 min before the kill.
    assert jobqueue.lifetime_seconds() == 4 * 3600 - 600 - 120


def _stand_in_batch_system(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    for name, body in {
        "sbatch": f'cat "$1" >> {log}; echo "#END" >> {log}; echo "Submitted batch job $$"',
        "scancel": "exit 0",
        "squeue": "exit 0",
    }.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_adaptive_scaling_from_config_submits_the_minimum_jobs(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "submitted.txt"
    _stand_in_batch_system(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    execution = load_config(CONFIGS / "cluster-slurm.yaml").execution
    assert execution.adapt is not None and (execution.adapt.minimum, execution.adapt.maximum) == (1, 8)
    cluster = jobqueue_cluster(execution)
    try:
        scale(cluster, execution)
        adaptive = cluster._adaptive
        # dask-jobqueue counts workers: 4 per job.
        assert (adaptive.minimum, adaptive.maximum) == (4, 32)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log.exists() and "#END" in log.read_text()):
            time.sleep(0.2)
        submitted = log.read_text().split("#END")[:-1]
        assert len(submitted) == 1  # one job: the minimum, with nothing queued
        assert re.search(r"--lifetime 13500s", submitted[0])
    finally:
        cluster.close()
