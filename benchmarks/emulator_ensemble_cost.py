"""Cost of the K-member CHGNet ensemble vs one plain CHGNet, energy + forces on 100 mp_20 crystals.

Target (issue 3): K=4 ensemble E+F on 100 structures <= 1.5x the time of one plain CHGNet on the same structures.

Modes (each timed in its own subprocess, so its peak RSS is its own; best of --repeats, after one warm-up pass):
    plain          CHGNet.predict_structure(task="ef", batch_size=4), graphs built inside (the reference)
    ens_e_std_f    ensemble: energy mean ± std, mean forces (one back-propagation of the member-mean energy)
    ens_ef_std     ensemble: energy and forces mean ± std (one back-propagation per member)
    naive          K independent full CHGNets, each building its own graphs (what sharing avoids)
    plain_e        one CHGNet, energy only (task="e"), for screening
    ens_e_std      ensemble, energy mean ± std only (no back-propagation), what screening uses

Run by hand (not part of the test suite; note the load from `uptime`, the machine is shared):
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.emulator_ensemble_cost [--n 100] [--members 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

from benchmarks.lib.timing import load_average

MP20_VAL = Path(__file__).resolve().parents[1] / "generator" / "data" / "mp_20" / "val.csv.gz"
MODES = ("plain", "ens_e_std_f", "ens_ef_std", "naive", "plain_e", "ens_e_std")


def load_structures(n: int) -> list:
    import pandas as pd
    from pymatgen.core import Structure

    frame = pd.read_csv(MP20_VAL).head(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_str(cif, fmt="cif") for cif in frame["cif"]]


def run_mode(mode: str, *, n: int, members: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from chgnet.model import CHGNet

    from emulator import ChgnetEnsemble, ChgnetEnsembleSettings

    structures = load_structures(n)
    if mode in ("plain", "naive", "plain_e"):
        models = [CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)]
        models *= members if mode == "naive" else 1
        task = "e" if mode == "plain_e" else "ef"

        def work() -> None:
            for model in models:
                model.predict_structure(structures, task=task, batch_size=4)

    else:
        ens = ChgnetEnsemble(settings=ChgnetEnsembleSettings(n_members=members, batch_size=4))
        per_member = mode == "ens_ef_std"
        forces = mode != "ens_e_std"

        def work() -> None:
            ens.predict(structures, forces=forces, stress=False, derivative_std=per_member)

    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "seconds": min(times),
        "all_seconds": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, n=args.n, members=args.members, repeats=args.repeats)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    load_before = load_average()
    results = {}
    for mode in MODES:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--mode",
                mode,
                "--n",
                str(args.n),
                "--members",
                str(args.members),
                "--repeats",
                str(args.repeats),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    plain = {
        mode: results["plain_e" if mode in ("plain_e", "ens_e_std") else "plain"]["seconds"] for mode in MODES
    }
    print(
        f"{args.n} mp_20 val crystals, K={args.members}, batch 4, 1 thread; load avg before {load_before}, "
        f"after {load_average()}"
    )
    print("ratio: vs plain (E+F modes) or vs plain_e (energy-only modes)")
    print(f"{'mode':<14}{'best s':>9}{'ratio':>8}{'peak RSS MB':>13}")
    for mode, r in results.items():
        print(f"{mode:<14}{r['seconds']:>9.2f}{r['seconds'] / plain[mode]:>8.2f}{r['peak_rss_mb']:>13.0f}")


if __name__ == "__main__":
    main()
