"""Scale-out: the label and screen stages on a 2-worker Dask LocalCluster against the same work inline.

* label: GPAW PW-PBE single points of tiny cells (fcc Al, 1 atom, at distinct strains; low cutoff), each in its own
  calculator process, through `label_hashes` exactly as the campaign's label stage calls it;
* screen: the campaign's `loop.stages.screen.screen` (CHGNet-ensemble relaxation in chunks of 4, then hull placement) of Cu-Au
  candidates (rattled, strained 4-atom fcc orderings), against an EMT hull of fcc Cu and Au.

Both modes start from empty work directories (no cached results) and include loading the emulator (once inline,
once per worker on Dask); the Dask time excludes starting the cluster (a campaign keeps one for its whole run),
which is reported separately. The machine's load average is recorded before and after each part: on a shared
machine a speed-up below 2x mostly measures the other processes.

Usage:
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/scaleout.py [--part label|screen|both]
        [--n-label 8] [--n-screen 200] [--workers 2] [--out scaleout.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def al_cells(n: int) -> list[Structure]:
    """`n` one-atom fcc Al cells, 4.04 Å conventional constant strained by 0.5 % steps (distinct hashes)."""
    return [
        Structure(Lattice.cubic(4.04 * (1 + 0.005 * i)), ["Al"] * 4, FCC).get_primitive_structure()
        for i in range(n)
    ]


def cu_au_candidates(n: int, *, seed: int = 0) -> list[Structure]:
    """`n` rattled, strained 4-atom fcc Cu-Au orderings (Vegard lattice constant ± 3 %, 0.05 Å rattle)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        n_au = i % 5
        species = ["Au"] * n_au + ["Cu"] * (4 - n_au)
        a = (3.61 + (4.08 - 3.61) * n_au / 4) * (1 + rng.uniform(-0.03, 0.03))
        coords = np.asarray(FCC) + rng.normal(0, 0.05 / a, size=(4, 3))
        out.append(Structure(Lattice.cubic(a), species, coords))
    return out


def timed_label(settings: Any, cells: list[Structure], executor: Any, workdir: Path) -> dict[str, Any]:
    from loop.labelling import label_hashes
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
        "energies_per_atom": [results[h].energy_per_atom for h in hashes],
    }


def bench_label(n: int, workers: int) -> dict[str, Any]:
    from loop.execution import ExecutionConfig, make_executor
    from oracle.gpaw_dft import GPAWSettings

    settings = GPAWSettings(cutoff=250, kpoint_density=1.5, smearing="marzari-vanderbilt", smearing_width=0.2)
    cells = al_cells(n)
    out: dict[str, Any] = {"n": n, "settings": {"cutoff": 250, "kpoint_density": 1.5}, "load_before": load()}
    with tempfile.TemporaryDirectory(prefix="scaleout-label-") as tmp:
        out["inline"] = timed_label(settings, cells, None, Path(tmp) / "inline")
        t0 = time.perf_counter()
        with make_executor(ExecutionConfig(kind="local", n_workers=workers)) as ex:
            out["cluster_start_s"] = round(time.perf_counter() - t0, 1)
            out["dask"] = timed_label(settings, cells, ex, Path(tmp) / "dask")
    out["load_after"] = load()
    out["speedup"] = round(out["inline"]["wall_s"] / out["dask"]["wall_s"], 2)
    out["same_energies"] = bool(
        np.allclose(out["inline"]["energies_per_atom"], out["dask"]["energies_per_atom"], atol=1e-6)
    )
    for mode in ("inline", "dask"):
        del out[mode]["energies_per_atom"]
    return out


def bench_screen(n: int, workers: int) -> dict[str, Any]:
    from loop import tasks
    from loop.config import validate_config
    from loop.execution import make_executor
    from loop.labelling import label_hashes
    from loop.stages.screen import screen
    from loop.store import CampaignStore

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
        "load_before": load(),
    }
    refs = [Structure(Lattice.cubic(a), [el] * 4, FCC) for a, el in ((3.61, "Cu"), (4.08, "Au"))]
    cells = cu_au_candidates(n)
    energies = {}
    with tempfile.TemporaryDirectory(prefix="scaleout-screen-") as tmp:
        store = CampaignStore.in_workdir(tmp)
        ref_hashes = [store.add_structure(s, source="reference") for s in refs]
        label_hashes(store, ref_hashes, settings=config.oracle, workdir=Path(tmp))
        hashes = [store.add_structure(s, source="benchmark") for s in cells]
        tasks._EMULATORS.clear()
        t0 = time.perf_counter()
        rows = screen(config, store=store, hashes=hashes, checkpoint=None, executor=None).predictions
        out["inline"] = {"wall_s": round(time.perf_counter() - t0, 1)}
        energies["inline"] = [r.energy_per_atom for r in rows]
        tasks._EMULATORS.clear()
        t0 = time.perf_counter()
        with make_executor(config.execution) as ex:
            out["cluster_start_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            rows = screen(config, store=store, hashes=hashes, checkpoint=None, executor=ex).predictions
            out["dask"] = {"wall_s": round(time.perf_counter() - t0, 1)}
        energies["dask"] = [r.energy_per_atom for r in rows]
        store.close()
    out["load_after"] = load()
    out["speedup"] = round(out["inline"]["wall_s"] / out["dask"]["wall_s"], 2)
    out["same_energies"] = bool(np.allclose(energies["inline"], energies["dask"], atol=1e-5))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["label", "screen", "both"], default="both")
    parser.add_argument("--n-label", type=int, default=8)
    parser.add_argument("--n-screen", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    if args.part in ("label", "both"):
        report["label"] = bench_label(args.n_label, args.workers)
        print(json.dumps({"label": report["label"]}), flush=True)
    if args.part in ("screen", "both"):
        report["screen"] = bench_screen(args.n_screen, args.workers)
        print(json.dumps({"screen": report["screen"]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
