"""Child-process side of every ASE-based oracle: run one calculation described by a job file.

Run as a script, ``python calc_worker.py JOB.json`` (or under ``mpiexec ... gpaw python``), never imported by
the oracle package at run time. It deliberately imports nothing from matloop (and not pymatgen) so that the
only start-up cost over a bare calculation is the interpreter itself: the parent decides every setting and
this side only builds the ASE calculator by name, runs it and writes a JSON answer.

Job file keys: ``calculator`` (gpaw, emt, cp2k, espresso, vasp, sevennet), ``params`` (calculator keyword arguments,
already in the calculator's own units), ``atoms`` (numbers, positions Å, cell Å, pbc, magmoms μB or null),
``relax_steps`` (0 = single point), ``relax_fmax`` eV/Å, ``symprec`` Å (null, or keep the given, already
symmetrised cell on its space group with ASE ``FixSymmetry``), optional ``relax_params`` (calculator keyword arguments
of the relaxation when they differ from ``params``, e.g. a coarser k-mesh: the answer is then a single point with
``params`` at the relaxed geometry, without frames), ``output`` (file name of the answer).

Answer file: ``{"status": "ok", "energy": eV, "forces": eV/Å, "stress": GPa Voigt (ASE sign), ...}`` (after a
relaxation also ``relaxed``: final positions/cell, convergence, steps; and ``frames``: energy, forces, stress,
positions and cell of every ionic step, the input geometry first) or
``{"status": "failed", "kind": "scf" | "error", "reason": "..."}``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

# Running this file as a script puts its own folder first on sys.path; drop it so that a sibling module can
# never shadow a real package (e.g. ``gpaw``).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

EV_PER_A3_PER_GPA = 1.0 / 160.21766208  # 1 GPa in eV/Å³


def _build_gpaw(params: dict[str, Any], directory: Path) -> Any:
    from gpaw import GPAW

    return GPAW(**params, txt=str(directory / "gpaw.txt"))


def _build_emt(params: dict[str, Any], directory: Path) -> Any:
    from ase.calculators.emt import EMT

    return EMT(**params)


def _build_cp2k(params: dict[str, Any], directory: Path) -> Any:
    from ase.calculators.cp2k import CP2K

    params = dict(params)
    command = params.pop("command")
    data_dir = params.pop("data_dir", None)
    if data_dir:
        os.environ["CP2K_DATA_DIR"] = data_dir
    # CP2K truncates strings at 80 characters (PROJECT, file names): keep every path relative to the
    # attempt folder, which is this process's working directory.
    return CP2K(command=command, directory=".", label="cp2k", **params)


def _build_espresso(params: dict[str, Any], directory: Path) -> Any:
    from ase.calculators.espresso import Espresso, EspressoProfile

    params = dict(params)
    profile = EspressoProfile(command=params.pop("command"), pseudo_dir=params.pop("pseudo_dir"))
    return Espresso(profile=profile, directory=str(directory), **params)


def _build_vasp(params: dict[str, Any], directory: Path) -> Any:
    from ase.calculators.vasp import Vasp

    return Vasp(directory=str(directory), **params)


# A machine-learned potential costs seconds to load and milliseconds to evaluate, so a process that labels many
# structures keeps one calculator per settings (ASE recomputes whenever the atoms change).
_LOADED: dict[str, Any] = {}


def _build_sevennet(params: dict[str, Any], directory: Path) -> Any:
    key = json.dumps(params, sort_keys=True)
    if key not in _LOADED:
        import torch
        from sevenn.calculator import SevenNetCalculator

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        _LOADED[key] = SevenNetCalculator(model=params["model"], device="cpu")
    return _LOADED[key]


class CP2KConvergenceError(RuntimeError):
    """CP2K 2023 only warns when an SCF run stops unconverged; its output is checked instead."""


def _cp2k_report(directory: Path) -> dict[str, Any]:
    """Code version and SCF steps from ``cp2k.out``; raise if any SCF run there did not converge."""
    import re

    text = (directory / "cp2k.out").read_text(errors="replace")
    if "SCF run NOT converged" in text:
        raise CP2KConvergenceError("SCF run NOT converged (cp2k.out)")
    report: dict[str, Any] = {}
    if version := re.search(r"CP2K\| version string:\s+(.+)", text):
        report["code_version"] = version.group(1).strip()
    if steps := re.findall(r"SCF run converged in\s+(\d+) steps", text):
        report["n_scf"] = int(steps[-1])
    return report


REPORTS = {"cp2k": _cp2k_report}

BUILDERS = {
    "gpaw": _build_gpaw,
    "emt": _build_emt,
    "cp2k": _build_cp2k,
    "espresso": _build_espresso,
    "vasp": _build_vasp,
    "sevennet": _build_sevennet,
}


def _code_version(name: str) -> str:
    try:
        if name == "gpaw":
            import gpaw

            return f"gpaw {gpaw.__version__}"
        if name == "sevennet":
            from importlib.metadata import version

            return f"sevenn {version('sevenn')}"
        import ase

        return f"ase {ase.__version__} ({name})"
    except Exception:  # a version string is nice to have, never worth failing a label for
        return name


def _rank() -> int:
    try:
        from ase.parallel import world

        return int(world.rank)
    except Exception:
        return 0


def _properties(atoms: Any) -> dict[str, Any]:
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces().tolist()
    stress = [float(x) / EV_PER_A3_PER_GPA for x in atoms.get_stress(voigt=True)]
    return {"energy": energy, "forces": forces, "stress": stress}


def _finite(values: dict[str, Any]) -> bool:
    flat = [values["energy"], *values["stress"], *(x for row in values["forces"] for x in row)]
    return all(math.isfinite(x) for x in flat)


def _n_scf(calc: Any) -> int | None:
    try:
        return int(calc.get_number_of_iterations())
    except Exception:
        return None


def atoms_from_spec(spec: dict[str, Any]) -> Any:
    """ASE Atoms from the job's plain-JSON cell description."""
    from ase import Atoms

    atoms = Atoms(numbers=spec["numbers"], positions=spec["positions"], cell=spec["cell"], pbc=spec["pbc"])
    if spec.get("magmoms") is not None:
        atoms.set_initial_magnetic_moments(spec["magmoms"])
    return atoms


def run(job: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Do the calculation of `job` in `directory` and return the answer dict (never raises)."""
    atoms = atoms_from_spec(job["atoms"])
    answer: dict[str, Any] = {"code_version": _code_version(job["calculator"])}
    try:
        steps = int(job.get("relax_steps", 0))
        relax_params = job.get("relax_params") if steps > 0 else None
        if relax_params is not None:
            # Relax with the cheaper settings in a folder of their own; the answer is the single point with
            # `params` at the relaxed geometry below.
            (directory / "relax").mkdir(exist_ok=True)
            atoms.calc = BUILDERS[job["calculator"]](relax_params, directory / "relax")
        else:
            atoms.calc = BUILDERS[job["calculator"]](job["params"], directory)
        if job.get("symprec"):
            from ase.constraints import FixSymmetry

            # The parent symmetrised the cell; the constraint keeps forces, stress and every step on that space
            # group (the calculator's own symmetry analysis then keeps its reduced k-point set throughout).
            atoms.set_constraint(FixSymmetry(atoms, symprec=float(job["symprec"])))
        initial = _properties(atoms)
        answer["n_scf"] = _n_scf(atoms.calc)
        if steps > 0:
            from ase.filters import FrechetCellFilter
            from ase.optimize import BFGS

            frames: list[dict[str, Any]] = []

            def record() -> None:
                # Observers run after each step's calculation, so these reads hit the calculator's cache.
                frames.append(
                    {
                        **_properties(atoms),
                        "positions": atoms.get_positions().tolist(),
                        "cell": atoms.cell.array.tolist(),
                    }
                )

            opt = BFGS(FrechetCellFilter(atoms), logfile=str(directory / "relax.log"))
            opt.attach(record, interval=1)
            converged = bool(opt.run(fmax=float(job.get("relax_fmax", 0.05)), steps=steps))
            if relax_params is not None:
                atoms.calc = BUILDERS[job["calculator"]](job["params"], directory)
                # The frames' numbers belong to the relaxation's settings, not to the label's: not reported.
                frames = []
            final = _properties(atoms)
            answer["frames"] = frames
            answer["relaxed"] = {
                "positions": atoms.get_positions().tolist(),
                "cell": atoms.cell.array.tolist(),
                "converged": converged,
                "steps": int(opt.get_number_of_steps()),
            }
        else:
            final = initial
        if job["atoms"].get("magmoms") is not None:
            with contextlib.suppress(Exception):  # not every calculator reports a moment
                answer["magnetic_moment"] = float(atoms.get_magnetic_moment())
        if job.get("band_gap"):
            answer["band_gap"] = _band_gap(atoms.calc)
        if job["calculator"] in REPORTS:
            answer.update(REPORTS[job["calculator"]](directory))
        if not _finite(final):
            return {**answer, "status": "failed", "kind": "error", "reason": "calculator returned NaN/inf"}
        return {**answer, **final, "status": "ok"}
    except Exception as exc:
        # GPAW raises KohnShamConvergenceError (a ConvergenceError); ASE optimisers and other codes use
        # names with "Convergence" too, so classify by the class hierarchy's names.
        names = [cls.__name__ for cls in type(exc).__mro__]
        kind = "scf" if any("Convergence" in n for n in names) else "error"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        (directory / "traceback.txt").write_text(traceback.format_exc())
        reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        return {**answer, "status": "failed", "kind": kind, "reason": reason[:300]}
    finally:
        close = getattr(atoms.calc, "close", None) if atoms.calc is not None else None
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def _band_gap(calc: Any) -> float | None:
    """The Kohn-Sham band gap of a finished calculation on its own k-points, eV (0 for a metal); None when the
    calculator keeps no eigenvalues."""
    from ase.dft.bandgap import bandgap

    try:
        gap = bandgap(calc, output=None)[0]
    except Exception:  # a calculator without eigenvalues or a Fermi level: the gap stays unknown
        return None
    return float(gap)


def _exit_with_parent(parent_pid: int, period_s: float = 2.0) -> None:
    """Stop this calculation if the oracle process that launched it dies (e.g. kill -9 of a daemon).

    An orphan would otherwise burn cores and race the relaunched calculation for the same folder.
    """
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(period_s)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:  # alive, owned by someone else: not our concern
                pass

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    job_path = Path(argv[1]).resolve()
    job = json.loads(job_path.read_text())
    if job.get("parent_pid"):
        _exit_with_parent(int(job["parent_pid"]))
    directory = job_path.parent
    os.chdir(directory)
    answer = run(job, directory)
    if _rank() == 0:
        out = directory / job.get("output", "answer.json")
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(answer))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
