"""Fault paths of the shared runner, with real GPAW calculations: SCF failure, timeout, crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from oracle import EMTOracle, GPAWOracle, GPAWSettings, UnsupportedStructure
from oracle.ase_runner import RESULT_FILE, ChildExit, run_child

CHEAP = {"cutoff": 400.0, "kpoint_density": 2.0, "relax_steps": 0}


def _live_workers(directory: Path) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line mentions `directory` (the job file)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(directory) in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def _process_group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_scf_non_convergence_fails_after_looser_fallback(si, tmp_path):
    oracle = GPAWOracle(GPAWSettings(**CHEAP, maxiter=3, max_attempts=2))
    result = oracle.label(si, workdir=tmp_path / "scf")
    assert result.status == "failed"
    assert "SCF did not converge" in result.reason
    assert result.failure_kind == "scf" and result.transient is False
    assert result.attempts == 2
    first, second = (entry["params"] for entry in result.metadata["attempt_log"])
    assert second["mixer"]["beta"] < first["mixer"]["beta"]
    assert second["maxiter"] == 2 * first["maxiter"] == 6
    assert (tmp_path / "scf" / RESULT_FILE).exists()


def test_timeout_kills_the_calculation(nacl_rattled, tmp_path):
    settings = GPAWSettings(cutoff=600.0, kpoint_density=3.0, timeout_s=1.0, max_attempts=2)
    t0 = time.perf_counter()
    result = GPAWOracle(settings).label(nacl_rattled, workdir=tmp_path / "slow")
    assert result.status == "failed"
    assert result.reason == "timeout: attempt 1 exceeded 1 s of wall time"
    assert result.failure_kind == "timeout"
    assert result.attempts == 1  # a retry of a timed-out run would only time out again
    assert time.perf_counter() - t0 < 30
    pid = int((tmp_path / "slow" / "attempt-1" / "child.pid").read_text())
    assert _process_group_gone(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    assert _live_workers(tmp_path / "slow") == []


def test_cpu_time_limit_spares_a_waiting_process_and_stops_a_busy_one(tmp_path):
    # A process that only waits (as a calculation does for a core on a loaded machine) uses no CPU time.
    (tmp_path / "wait").mkdir()
    ended = run_child(
        [sys.executable, "-c", "import time; time.sleep(4)"],
        cwd=tmp_path / "wait",
        timeout_s=60.0,
        cpu_timeout_s=1.5,
    )
    assert ended == ChildExit(0)
    (tmp_path / "busy").mkdir()
    t0 = time.perf_counter()
    ended = run_child(
        [sys.executable, "-c", "while True: pass"], cwd=tmp_path / "busy", timeout_s=60.0, cpu_timeout_s=1.5
    )
    assert ended == ChildExit(None, "cpu")
    assert time.perf_counter() - t0 < 30  # stopped by CPU time, long before the wall limit
    # A process that waits past the wall-clock limit is stopped by that one, and says so.
    (tmp_path / "hung").mkdir()
    ended = run_child(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        cwd=tmp_path / "hung",
        timeout_s=2.0,
        cpu_timeout_s=30,
    )
    assert ended == ChildExit(None, "wall")
    assert _process_group_gone(int((tmp_path / "busy" / "child.pid").read_text()))


def test_gpaw_cpu_timeout_is_reported_in_cpu_seconds(nacl_rattled, tmp_path):
    settings = GPAWSettings(cutoff=600.0, kpoint_density=3.0, cpu_timeout_s=2.0, timeout_s=600.0)
    result = GPAWOracle(settings).label(nacl_rattled, workdir=tmp_path / "cpu")
    assert result.status == "failed" and result.failure_kind == "timeout"
    assert result.reason == "timeout: attempt 1 exceeded 2 CPU s"
    assert settings.settings_hash() == GPAWSettings(cutoff=600.0, kpoint_density=3.0).settings_hash()
    assert _live_workers(tmp_path / "cpu") == []


def test_timeout_under_mpi_leaves_no_rank_behind(nacl_rattled, tmp_path):
    settings = GPAWSettings(cutoff=600.0, kpoint_density=3.0, timeout_s=3.0, mpi_ranks=2)
    result = GPAWOracle(settings).label(nacl_rattled, workdir=tmp_path / "mpi")
    assert result.status == "failed" and result.reason.startswith("timeout")
    assert _process_group_gone(int((tmp_path / "mpi" / "attempt-1" / "child.pid").read_text()))
    assert _live_workers(tmp_path / "mpi") == []


def test_calculation_stops_when_the_oracle_process_is_killed(nacl_rattled, tmp_path):
    cif = tmp_path / "nacl.cif"
    nacl_rattled.to(filename=str(cif))
    workdir = tmp_path / "orphan"
    code = (
        "import sys; from pathlib import Path; from pymatgen.core import Structure;"
        "from oracle import GPAWOracle, GPAWSettings;"
        "GPAWOracle(GPAWSettings(cutoff=700.0, kpoint_density=4.0))"
        ".label(Structure.from_file(sys.argv[1]), workdir=Path(sys.argv[2]))"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, str(cif), str(workdir)])
    pid_file = workdir / "attempt-1" / "child.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_workers(workdir), "the calculation did not start"
    parent.kill()  # like kill -9 of a daemon: no chance to clean up
    parent.wait()
    # The worker notices within ~2 s; the calculation alone would run far longer than this wait.
    deadline = time.monotonic() + 10
    while _live_workers(workdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_workers(workdir) == []
    assert not (workdir / RESULT_FILE).exists()


def test_a_crashing_calculator_becomes_a_failed_result(nacl_rattled, tmp_path):
    settings = GPAWSettings(cutoff=600.0, kpoint_density=3.0, max_attempts=1)
    workdir = tmp_path / "crash"
    box: dict = {}
    runner = threading.Thread(
        target=lambda: box.setdefault("result", GPAWOracle(settings).label(nacl_rattled, workdir=workdir))
    )
    runner.start()
    pid_file = workdir / "attempt-1" / "child.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the child get into gpaw
    os.kill(int(pid_file.read_text()), signal.SIGSEGV)
    runner.join(timeout=60)
    result = box["result"]
    assert result.status == "failed"
    assert "crashed" in result.reason and "signal 11" in result.reason
    assert result.failure_kind == "crashed"
    assert _process_group_gone(int(pid_file.read_text()))
    assert _live_workers(workdir) == []


def test_check_rejects_disordered_and_overlapping_structures(tmp_path):
    disordered = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    with pytest.raises(UnsupportedStructure, match="ordered"):
        EMTOracle().check(disordered)
    overlapping = Structure(Lattice.cubic(3.6), ["Cu", "Cu"], [[0, 0, 0], [0.05, 0, 0]])
    with pytest.raises(UnsupportedStructure, match=r"sites 0 and 1 are 0\.18 Å apart"):
        GPAWOracle().check(overlapping)
    result = EMTOracle().label(overlapping, workdir=tmp_path / "overlap")
    assert result.status == "failed" and "apart" in result.reason and result.attempts == 0


def test_failed_result_is_retried_under_a_new_attempt_policy(si, tmp_path):
    workdir = tmp_path / "retry"
    failed = GPAWOracle(GPAWSettings(**CHEAP, maxiter=3, max_attempts=1)).label(si, workdir=workdir)
    assert failed.status == "failed"
    again = GPAWOracle(GPAWSettings(**CHEAP, maxiter=3, max_attempts=1)).label(si, workdir=workdir)
    assert again.metadata.get("from_store") is True
    # Same physics, new attempt policy: a stored failure is not trusted, the label is tried again.
    retried = GPAWOracle(GPAWSettings(**CHEAP, maxiter=3, max_attempts=2)).label(si, workdir=workdir)
    assert retried.metadata.get("from_store") is None
    assert retried.attempts == 2
