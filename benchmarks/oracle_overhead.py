"""Overhead of matloop's GPAW oracle over the same GPAW calculation done directly.

For Si and NaCl (rattled, so forces are non-trivial and symmetry does not make the run trivially cheap), each
repeat runs, in fresh processes and interleaved:

* bare: a Python process that imports ASE and GPAW, builds the very cell the oracle computes (the
  Niggli-reduced, displaced structure, prepared by this script) and runs GPAW with the same settings and
  k-mesh (energy, forces, stress);
* matloop: a Python process that imports ``oracle``, reads the CIF with pymatgen and calls
  ``GPAWOracle.label`` (Niggli reduction, job file, isolated child process, result.json).

Reported: energies per atom (must agree within 0.05 eV/atom), the best-of-N wall and CPU time (user+sys of
the whole process tree, less sensitive to a busy machine) of each, and two overhead ratios: ``label()`` call vs the whole bare process (both include interpreter start, the GPAW
import and the calculation: the cost of isolation and bookkeeping), and whole process vs whole process
(adds matloop's own import of pymatgen/pydantic). Timings on a shared machine are noisy: note ``uptime``.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.oracle_overhead [--cutoff 700] [--kpoint-density 3.0]
        [--repeats 3] [--fixed-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from benchmarks.lib.cells import fcc
from benchmarks.lib.timing import Stopwatch, children_cpu_s, load_average

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = {
    "Si": ROOT / "configs/structures/Si_mp-149.cif",
    "NaCl": ROOT / "configs/structures/NaCl_mp-22862.cif",
}
DISPLACEMENT = [0.04, -0.03, 0.02]  # Å, applied to site 0

BARE = """
import json, sys, time
t0 = time.perf_counter()
from ase import Atoms
from gpaw import GPAW
args = json.loads(sys.argv[1])
atoms = Atoms(numbers=args["numbers"], positions=args["positions"], cell=args["cell"], pbc=True)
atoms.calc = GPAW(mode={"name": "pw", "ecut": args["cutoff"]}, xc="PBE",
                  kpts={"size": args["mesh"], "gamma": True},
                  occupations={"name": "fermi-dirac", "width": 0.05}, txt=args["txt"])
e = atoms.get_potential_energy(); f = atoms.get_forces(); s = atoms.get_stress()
print(json.dumps({"energy_per_atom": e / len(atoms), "max_force": float(abs(f).max()),
                  "inner": time.perf_counter() - t0}))
"""

MATLOOP = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from pymatgen.core import Structure
from oracle import GPAWOracle, GPAWSettings
args = json.loads(sys.argv[1])
s = Structure.from_file(args["cif"])
s.translate_sites([0], args["shift"], frac_coords=False)
oracle = GPAWOracle(GPAWSettings(cutoff=args["cutoff"], kpoint_density=args["kpoint_density"],
                                 smearing_width=0.05, relax_steps=0))
import resource
def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
c1, t1 = cpu(), time.perf_counter()
r = oracle.label(s, workdir=Path(args["workdir"]))
t2, c2 = time.perf_counter(), cpu()
assert r.ok, r.reason
print(json.dumps({"energy_per_atom": r.energy_per_atom, "max_force": max(abs(x) for row in r.forces for x in row),
                  "label": t2 - t1, "label_cpu": c2 - c1, "inner": t2 - t0}))
"""


def _run(code: str, args: dict) -> tuple[dict, float, float]:
    """Run `code` in a fresh interpreter: (its JSON answer, wall s, CPU s of its whole process tree)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    watch = Stopwatch(cpu=children_cpu_s)
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env, check=True
    )
    wall, cpu = watch.wall_s(), watch.cpu_s()
    return json.loads(out.stdout.strip().splitlines()[-1]), wall, cpu


def _same_cell(cif: Path, kpoint_density: float) -> dict:
    """The cell, positions and k-mesh the oracle will compute, for the bare run."""
    from pymatgen.core import Structure

    from oracle.ase_runner import kpoint_mesh, niggli_reduce

    s = Structure.from_file(cif)
    s.translate_sites([0], DISPLACEMENT, frac_coords=False)
    reduced = niggli_reduce(s)
    return {
        "numbers": [site.specie.Z for site in reduced],
        "positions": reduced.cart_coords.tolist(),
        "cell": reduced.lattice.matrix.tolist(),
        "mesh": kpoint_mesh(reduced, kpoint_density),
    }


def _fixed_cost(tmp: Path, n: int = 5) -> tuple[float, float]:
    """Per-label cost of a calculation that costs ~nothing (EMT on 4 Cu atoms), warm process, s.

    Returns:
        (mean label() time, mean time outside the child process). The first includes the child's
        interpreter start and ``import ase``, which a bare run pays as well; the second is matloop's own
        bookkeeping (checks, Niggli, job file, result.json).
    """
    from oracle import EMTOracle

    cu = fcc("Cu", 3.61)
    EMTOracle().label(cu, workdir=tmp / "emt-warm-up")
    total = outside = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        result = EMTOracle().label(cu, workdir=tmp / f"emt-{i}")
        elapsed = time.perf_counter() - t0
        assert result.ok, result.reason
        total += elapsed
        outside += elapsed - result.metadata["attempt_log"][0]["wall_time"]
    return total / n, outside / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cutoff", type=float, default=700.0, help="plane-wave cutoff, eV")
    parser.add_argument("--kpoint-density", type=float, default=3.0, help="k-point density, 1/Å")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fixed-only", action="store_true", help="only the fixed per-label cost (EMT)")
    opts = parser.parse_args()
    print(f"load: {load_average()}  cutoff {opts.cutoff} eV  k-density {opts.kpoint_density} /Å")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cif in STRUCTURES.items() if not opts.fixed_only else ():
            common = {"cutoff": opts.cutoff, "kpoint_density": opts.kpoint_density}
            cell = _same_cell(cif, opts.kpoint_density)
            bare_wall, bare_cpu, ml_wall, ml_cpu, ml_label, ml_label_cpu = [], [], [], [], [], []
            for i in range(opts.repeats):
                bare, wall, cpu = _run(BARE, {**common, **cell, "txt": f"{tmp}/{name}-{i}.txt"})
                bare_wall.append(wall)
                bare_cpu.append(cpu)
                ml, wall, cpu = _run(
                    MATLOOP,
                    {**common, "cif": str(cif), "shift": DISPLACEMENT, "workdir": f"{tmp}/{name}-{i}"},
                )
                ml_wall.append(wall)
                ml_cpu.append(cpu)
                ml_label.append(ml["label"])
                ml_label_cpu.append(ml["label_cpu"])
            de = abs(bare["energy_per_atom"] - ml["energy_per_atom"])
            print(
                f"{name} (k-mesh {cell['mesh']}): E/atom bare {bare['energy_per_atom']:.6f} "
                f"matloop {ml['energy_per_atom']:.6f} eV/atom (|dE| {de * 1000:.3f} meV/atom, "
                f"{'OK' if de < 0.05 else 'MISMATCH'}); max|F| {bare['max_force']:.4f} / {ml['max_force']:.4f} eV/Å"
            )
            b, lab, m = min(bare_wall), min(ml_label), min(ml_wall)
            print(
                f"  wall, best of {opts.repeats}: bare process {b:.2f} s | label() {lab:.2f} s "
                f"({100 * (lab / b - 1):+.1f}%) | matloop process {m:.2f} s ({100 * (m / b - 1):+.1f}%)"
            )
            bc, lc, mc = min(bare_cpu), min(ml_label_cpu), min(ml_cpu)
            print(
                f"  CPU,  best of {opts.repeats}: bare process {bc:.2f} s | label() {lc:.2f} s "
                f"({100 * (lc / bc - 1):+.1f}%) | matloop process {mc:.2f} s ({100 * (mc / bc - 1):+.1f}%)"
            )
            b, lab, m = median(bare_wall), median(ml_label), median(ml_wall)
            print(
                f"  wall, median: bare process {b:.2f} s | label() {lab:.2f} s ({100 * (lab / b - 1):+.1f}%) | "
                f"matloop process {m:.2f} s ({100 * (m / b - 1):+.1f}%)"
            )
            bc, lc, mc = median(bare_cpu), median(ml_label_cpu), median(ml_cpu)
            print(
                f"  CPU,  median: bare process {bc:.2f} s | label() {lc:.2f} s ({100 * (lc / bc - 1):+.1f}%) | "
                f"matloop process {mc:.2f} s ({100 * (mc / bc - 1):+.1f}%)"
            )
            print(
                f"  all wall: bare {[round(x, 2) for x in bare_wall]} label {[round(x, 2) for x in ml_label]} "
                f"matloop {[round(x, 2) for x in ml_wall]}; CPU bare {[round(x, 2) for x in bare_cpu]} "
                f"label {[round(x, 2) for x in ml_label_cpu]} matloop {[round(x, 2) for x in ml_cpu]}"
            )
        per_label, bookkeeping = _fixed_cost(Path(tmp))
        print(
            f"fixed cost per label (EMT, warm process): {per_label:.3f} s, of which outside the child "
            f"(matloop bookkeeping) {bookkeeping * 1000:.1f} ms"
        )
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
