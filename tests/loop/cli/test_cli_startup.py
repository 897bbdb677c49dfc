"""`matloop --help` and argument errors must not import the heavy rooms (torch, chgnet, mlflow, dask, matplotlib).

Start-up speed itself is measured in BENCHMARKS.md (no timed assertions here); this test pins down its cause.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "chgnet", "mlflow", "dask", "matplotlib")

# Runs the console entry point in-process, then reports which heavy packages ended up imported.
PROBE = """
import json, sys
args, watched = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
sys.argv = ["matloop", *args]
import loop.cli.main
code = 0
try:
    loop.cli.main.main()
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & watched)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def probe(*args: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("run", "--help"),
        ("generate", "--help"),
        ("export", "--help"),
    ],
)
def test_help_leaves_heavy_rooms_unimported(args):
    info, proc = probe(*args)
    assert info["code"] == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert info["heavy"] == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("run",), "Missing argument"),
        (("generate", "--n", "0", "--out", "x.extxyz"), "--n"),
        (("no-such-command",), "No such command"),
    ],
)
def test_argument_errors_are_one_line_without_heavy_imports(args, says):
    info, proc = probe(*args)
    assert info["code"] == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matloop: error:") and says in lines[0]
    assert info["heavy"] == []


def test_export_offers_hits_and_keeps_stable_as_a_hidden_alias():
    info, proc = probe("export", "--help")
    assert info["code"] == 0
    assert "--hits" in proc.stdout and "--stable" not in proc.stdout
    info, proc = probe("export", "--workdir", "/nonexistent-campaign", "--stable", "--out", "x")
    assert info["code"] == 2 and "no campaign here" in proc.stderr


@pytest.mark.parametrize("command", ["run", "daemon", "sync-tracking"])
def test_a_campaign_already_running_is_refused_before_the_rooms_load(tmp_path, command):
    from pathlib import Path

    from loop.runtime.control import workdir_lock
    from loop.store import CampaignStore

    smoke = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"
    workdir = tmp_path / "campaign"
    CampaignStore.in_workdir(workdir).close()
    args = (
        (command, "--workdir", str(workdir))
        if command == "sync-tracking"
        else (command, str(smoke), "--workdir", str(workdir))
    )
    with workdir_lock(workdir):  # as the process running the campaign holds it
        info, proc = probe(*args)
    assert info["code"] == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another matloop process is running this campaign" in lines[0]
    assert info["heavy"] == []
