"""Soak: the daemon on the EMT smoke campaign (Cu-Au) for many rounds, watched from outside.

After each finished round (read through `loop.store.CampaignStore`), records the daemon's main process resident
memory (VmRSS, MiB), its open file descriptors (/proc/<pid>/fd), the campaign store's size on disk (matloop.db with
its WAL files, MiB), the whole work directory's size, and the summed RSS of its child processes (Dask workers,
calculators). Targets: main-process RSS growth <= 10 % after round 3 (max over later rounds vs round 3) and no
descriptor growth after round 3.

Usage:
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.soak --rounds 20 --workdir /tmp/soak \
        [--config configs/smoke.yaml] [--lite] [--out soak.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.lib.timing import load_average
from loop.store import CampaignStore

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
# Every stage still runs each round (diffusion included), with smaller budgets, so that 20 rounds fit on a busy machine.
LITE = {
    "generator": {"mix": {"diffusion": 2, "substitution": 8, "random_search": 4}, "fine_tune_steps": 5},
    "emulator_training": {"relax_steps": 10, "fine_tune_epochs": 1},
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(c) for c in (task / "children").read_text().split())
    return out + [g for c in out for g in children(c)]


def tree_rss_mib(pid: int) -> float:
    total = 0.0
    for c in children(pid):
        with contextlib.suppress(OSError):  # exited in the meantime
            total += rss_mib(c)
    return total


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MIB


def store_mib(workdir: Path) -> float:
    return sum(p.stat().st_size for p in workdir.glob(f"{CampaignStore.FILENAME}*")) / MIB


def finished_rounds(store: CampaignStore | None) -> list[int]:
    """The rounds the daemon has finished, from its store (none while it has not created one)."""
    return [] if store is None else [r.round for r in store.rounds() if r.status == "done"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs/smoke.yaml")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--lite", action="store_true", help="smaller per-round budgets (every stage still runs)"
    )
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the store")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(args.config.read_text())
    config.setdefault("stop", {})["max_rounds"] = args.rounds
    if args.lite:
        for section, values in LITE.items():
            config.setdefault(section, {}).update(values)
    config_path = args.workdir.parent / f"{args.workdir.name}-soak.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = (args.workdir.parent / f"{args.workdir.name}-daemon.log").open("w")
    cmd = [sys.executable, "-m", "loop.cli", "daemon", str(config_path), "--workdir", str(args.workdir)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    # Opened once the daemon has made it, and kept open: opening a store writes its schema version, which a watcher
    # should do once, not at every look.
    store: CampaignStore | None = None
    rows: list[dict[str, float]] = []
    seen: set[int] = set()
    while True:
        alive = proc.poll() is None
        if store is None and alive and CampaignStore.exists_in(args.workdir):
            store = CampaignStore.in_workdir(args.workdir)
        for rnd in finished_rounds(store):
            if rnd in seen or not alive:
                continue
            seen.add(rnd)
            row = {
                "round": rnd,
                "elapsed_s": round(time.time() - t0, 1),
                "rss_mib": round(rss_mib(proc.pid), 1),
                "fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
                "store_mib": round(store_mib(args.workdir), 3),
                "workdir_mib": round(dir_mib(args.workdir), 2),
                "checkpoints_mib": round(dir_mib(args.workdir / "checkpoints"), 2),
                "mlflow_mib": round(dir_mib(args.workdir / "mlflow"), 2),
                "children_rss_mib": round(tree_rss_mib(proc.pid), 1),
                "load_1min": load_average()[0],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not alive:
            break
        time.sleep(args.poll)
    if store is not None:
        store.close()
    summary = summarize(rows)
    summary |= {"exit_code": proc.returncode, "wall_s": round(time.time() - t0, 1), "rounds": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    return 0 if proc.returncode == 0 else 1


def summarize(rows: list[dict[str, float]]) -> dict[str, float | bool | None]:
    """Growth after round 3: the largest later value against round 3's (RSS in %, descriptors in count)."""
    base = next((r for r in rows if r["round"] == 3), None)
    later = [r for r in rows if r["round"] > 3]
    if base is None or not later:
        return {"rss_growth_pct": None, "fd_growth": None, "meets_targets": False}
    rss_growth = 100.0 * (max(r["rss_mib"] for r in later) / base["rss_mib"] - 1.0)
    fd_growth = max(r["fds"] for r in later) - base["fds"]
    return {
        "rss_round3_mib": base["rss_mib"],
        "rss_max_after_mib": max(r["rss_mib"] for r in later),
        "rss_growth_pct": round(rss_growth, 1),
        "fd_round3": base["fds"],
        "fd_max_after": max(r["fds"] for r in later),
        "fd_growth": fd_growth,
        "store_mib_first_last": [rows[0]["store_mib"], rows[-1]["store_mib"]],
        "meets_targets": rss_growth <= 10.0 and fd_growth <= 0,
    }


if __name__ == "__main__":
    raise SystemExit(main())
