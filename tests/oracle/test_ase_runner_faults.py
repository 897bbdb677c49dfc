"""Fault paths of the shared runner, with real GPAW calculations: SCF failure, timeout, crash."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from oracle import GPAWOracle, GPAWSettings
from oracle.ase_runner import RESULT_FILE

CHEAP = {"cutoff": 400.0, "kpoint_density": 2.0}


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
    assert result.reason.startswith("timeout")
    assert result.attempts == 1  # a retry of a timed-out run would only time out again
    assert time.perf_counter() - t0 < 30
    pid = int((tmp_path / "slow" / "attempt-1" / "child.pid").read_text())
    assert _process_group_gone(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie


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
    assert _process_group_gone(int(pid_file.read_text()))


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
