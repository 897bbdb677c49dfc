"""Scale-out: the label and screen stages on a 2-worker Dask LocalCluster against the same work inline.

* label: GPAW PW-PBE single points of tiny cells (fcc Al, 1 atom, at distinct strains; low cutoff), each in its own
  calculator process, through `label_hashes` exactly as the campaign's label stage calls it;
* screen: the campaign's `loop.work.screening.screen` (CHGNet-ensemble relaxation in chunks of 4, then hull placement) of Cu-Au
  candidates (rattled, strained 4-atom fcc orderings), against an EMT hull of fcc Cu and Au.

Both modes start from empty work directories (no cached results) and include loading the emulator (once inline,
once per worker on Dask; torch and CHGNet are imported in every process beforehand, as a campaign's workers do once
per run); the Dask time excludes starting the cluster (a campaign keeps one for its whole run),
which is reported separately. The machine's load average is recorded before and after each part: on a shared
machine a speed-up below 2x mostly measures the other processes.

* label also runs the same calculations from 2 plain threads of this process (each calculation is its own child
  process, so threads are enough): the speed-up the workload itself allows on this machine, with no Dask at all.
  Two GPAW processes share the memory bandwidth and the L3 cache, so this can sit well below the CPU-loop ceiling.
* screen also runs the same chunks on a plain `concurrent.futures` process pool of the same size (no Dask).
* hardware: the ceiling the machine itself allows. The same pure-Python CPU loop runs `workers` times one after the
  other and then in `workers` parallel processes; the ratio of the two wall times is the best speed-up any program
  can get from `workers` processes here (a virtual machine's cores may share a physical core or a host).
  It runs before the other parts, and each speed-up is also given as a fraction of it.

Usage:
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python -m benchmarks.scaleout [--part label|screen|both]
        [--n-label 8] [--cutoff 250] [--kpoint-density 1.5] [--n-screen 200] [--workers 2]
        [--hardware-repeats 5] [--out scaleout.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import as_completed as futures_as_completed
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from benchmarks.lib.cells import fcc, rattled_cu_au, strained_al
from benchmarks.lib.timing import Stopwatch, load_average, tree_cpu_s

# What this process has imported before its inline screen (torch, CHGNet, the tasks): worker processes import them
# once per campaign run, not per stage, so they are imported before the timing in the parallel modes as well.
# The emulator itself is loaded inside the timing in every mode.
WARM_IMPORTS = "import loop.runtime.tasks, chgnet.model.model"


def _spin(n: int) -> float:
    """Pure-Python CPU work (no memory traffic to speak of); returns its wall time in s."""
    t0 = time.perf_counter()
    sum(i * i for i in range(n))
    return time.perf_counter() - t0


def hardware_ceiling(workers: int, *, repeats: int, n: int = 20_000_000) -> dict[str, Any]:
    """The machine's own parallel throughput: `workers` loops in sequence vs in parallel processes."""
    ratios = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_spin, [1000] * workers))  # start the processes outside the timing
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(workers):
                pool.submit(_spin, n).result()
            serial = time.perf_counter() - t0
            t0 = time.perf_counter()
            list(pool.map(_spin, [n] * workers))
            ratios.append(serial / (time.perf_counter() - t0))
    return {
        "repeats": repeats,
        "ratios": [round(r, 2) for r in ratios],
        "median": round(float(np.median(ratios)), 2),
    }


def timed_label(settings: Any, cells: list[Structure], executor: Any, workdir: Path) -> dict[str, Any]:
    from loop.runtime.labelling import label_hashes
    from loop.store import CampaignStore

    store = CampaignStore.in_workdir(workdir)
    hashes = [store.add_structure(s, source="benchmark") for s in cells]
    t0 = time.perf_counter()
    results = label_hashes(
        store,
        hashes,
        settings=settings,
        workdir=workdir,
        submit=None if executor is None else executor.submit,
        as_completed=None if executor is None else executor.as_completed,
    )
    wall = time.perf_counter() - t0
    store.close()
    return {
        "wall_s": round(wall, 1),
        "n_ok": sum(r.ok for r in results.values()),
        # The calculations' own wall times: their sum over the stage's wall time is the average number running at
        # once (2 = both workers always busy); a sum above inline's means the calculations slowed each other.
        "calc_s": round(sum(r.wall_time for r in results.values()), 1),
        "energies_per_atom": [results[h].energy_per_atom for h in hashes],
    }


class _ThreadSubmit:
    """`submit`/`as_completed` over a thread pool, shaped like the Dask client `label_hashes` expects."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool

    def submit(self, fn: Any, *args: Any, pure: bool = True) -> Any:
        del pure  # a Dask keyword: every call here runs
        return self.pool.submit(fn, *args)

    @staticmethod
    def as_completed(futures: list[Any]) -> Any:
        return futures_as_completed(futures)


class _PoolClient:
    """The part of a Dask client `Executor.map_chunks` uses, over a process pool."""

    def __init__(self, pool: ProcessPoolExecutor) -> None:
        self.pool = pool

    def submit(self, fn: Any, *args: Any, pure: bool = True) -> Any:
        del pure
        return self.pool.submit(fn, *args)


def bench_label(n: int, workers: int, *, cutoff: float, kpoint_density: float) -> dict[str, Any]:
    from loop.runtime.execution import ExecutionConfig, make_executor
    from oracle.gpaw_dft import GPAWSettings

    settings = GPAWSettings(
        cutoff=cutoff, kpoint_density=kpoint_density, smearing="marzari-vanderbilt", smearing_width=0.2
    )
    cells = strained_al(n)
    out: dict[str, Any] = {
        "n": n,
        "settings": {"cutoff": cutoff, "kpoint_density": kpoint_density},
        "load_before": load_average(),
    }
    with tempfile.TemporaryDirectory(prefix="scaleout-label-") as tmp:
        out["inline"] = timed_label(settings, cells, None, Path(tmp) / "inline")
        t0 = time.perf_counter()
        with make_executor(ExecutionConfig(kind="local", n_workers=workers)) as ex:
            out["cluster_start_s"] = round(time.perf_counter() - t0, 1)
            out["dask"] = timed_label(settings, cells, ex, Path(tmp) / "dask")
        with ThreadPoolExecutor(max_workers=workers) as pool:
            out["threads"] = timed_label(settings, cells, _ThreadSubmit(pool), Path(tmp) / "threads")
    out["load_after"] = load_average()
    out["speedup"] = round(out["inline"]["wall_s"] / out["dask"]["wall_s"], 2)
    out["threads_speedup"] = round(out["inline"]["wall_s"] / out["threads"]["wall_s"], 2)
    out["same_energies"] = bool(
        np.allclose(out["inline"]["energies_per_atom"], out["dask"]["energies_per_atom"], atol=1e-6)
    )
    out["same_energies"] = out["same_energies"] and bool(
        np.allclose(out["inline"]["energies_per_atom"], out["threads"]["energies_per_atom"], atol=1e-6)
    )
    for mode in ("inline", "dask", "threads"):
        del out[mode]["energies_per_atom"]
    return out


def bench_screen(n: int, workers: int) -> dict[str, Any]:
    from emulator.tasks import clear_cache
    from loop.config import validate_config
    from loop.runtime.execution import Executor, make_executor
    from loop.runtime.labelling import label_hashes
    from loop.store import CampaignStore
    from loop.work.screening import screen

    config = validate_config(
        {
            "name": "scaleout-screen",
            "chemical_systems": ["Cu-Au"],
            "emulator": {"kind": "chgnet_ensemble", "n_members": 2, "design": "bootstrap_only"},
            "emulator_training": {"relax_fmax": 0.2, "relax_steps": 25},
            "oracle": {"kind": "emt"},
            "execution": {"kind": "local", "n_workers": workers},
        }
    )
    out: dict[str, Any] = {
        "n": n,
        "emulator": "chgnet_ensemble K=2 (bootstrap_only), FIRE fmax 0.2 eV/Å, <= 25 steps",
        "load_before": load_average(),
    }
    refs = [fcc("Cu", 3.61), fcc("Au", 4.08)]
    cells = rattled_cu_au(n)
    energies = {}
    with tempfile.TemporaryDirectory(prefix="scaleout-screen-") as tmp:
        store = CampaignStore.in_workdir(tmp)
        ref_hashes = [store.add_structure(s, source="reference") for s in refs]
        label_hashes(store, ref_hashes, settings=config.oracle, workdir=Path(tmp))
        hashes = [store.add_structure(s, source="benchmark") for s in cells]
        clear_cache()
        watch = Stopwatch(cpu=tree_cpu_s)
        rows = screen(config, store=store, hashes=hashes, checkpoint=None, executor=None).predictions
        out["inline"] = {"wall_s": round(watch.wall_s(), 1), "cpu_s": round(watch.cpu_s(), 1)}
        energies["inline"] = [r.energy_per_atom for r in rows]
        clear_cache()
        t0 = time.perf_counter()
        with make_executor(config.execution) as ex:
            out["cluster_start_s"] = round(time.perf_counter() - t0, 1)
            # CPU of the main process and the workers together: above inline's, the workers slowed each other
            # (shared caches, memory bandwidth) or paid per-task costs; wall x 2 above it, they waited.
            ex.client.run(exec, WARM_IMPORTS)
            watch = Stopwatch(cpu=tree_cpu_s)
            rows = screen(config, store=store, hashes=hashes, checkpoint=None, executor=ex).predictions
            out["dask"] = {"wall_s": round(watch.wall_s(), 1), "cpu_s": round(watch.cpu_s(), 1)}
        energies["dask"] = [r.energy_per_atom for r in rows]
        # The same chunks on plain worker processes (no Dask): what two CHGNet processes get on this machine.
        clear_cache()
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            # Started and warm outside the timing, as the Dask workers are (a few calls each reach every process).
            list(pool.map(exec, [WARM_IMPORTS] * workers * 4))
            watch = Stopwatch(cpu=tree_cpu_s)
            rows = screen(
                config, store=store, hashes=hashes, checkpoint=None, executor=Executor(_PoolClient(pool))
            ).predictions
            out["processes"] = {
                "wall_s": round(watch.wall_s(), 1),
                "cpu_s": round(watch.cpu_s(), 1),
            }
        energies["processes"] = [r.energy_per_atom for r in rows]
        store.close()
    out["load_after"] = load_average()
    out["speedup"] = round(out["inline"]["wall_s"] / out["dask"]["wall_s"], 2)
    out["processes_speedup"] = round(out["inline"]["wall_s"] / out["processes"]["wall_s"], 2)
    out["same_energies"] = all(
        bool(np.allclose(energies["inline"], energies[mode], atol=1e-5)) for mode in ("dask", "processes")
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["label", "screen", "both"], default="both")
    parser.add_argument("--n-label", type=int, default=8)
    parser.add_argument("--cutoff", type=float, default=250.0, help="GPAW plane-wave cutoff for label (eV)")
    parser.add_argument(
        "--kpoint-density", type=float, default=1.5, help="GPAW k-point density for label (Å⁻¹)"
    )
    parser.add_argument("--hardware-repeats", type=int, default=5)
    parser.add_argument("--n-screen", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    report["hardware"] = hardware_ceiling(args.workers, repeats=args.hardware_repeats)
    print(json.dumps({"hardware": report["hardware"]}), flush=True)
    if args.part in ("label", "both"):
        report["label"] = bench_label(
            args.n_label, args.workers, cutoff=args.cutoff, kpoint_density=args.kpoint_density
        )
        print(json.dumps({"label": report["label"]}), flush=True)
    if args.part in ("screen", "both"):
        report["screen"] = bench_screen(args.n_screen, args.workers)
        print(json.dumps({"screen": report["screen"]}), flush=True)
    for part in ("label", "screen"):
        if part in report:
            report[part]["of_hardware_ceiling"] = round(
                report[part]["speedup"] / report["hardware"]["median"], 2
            )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
