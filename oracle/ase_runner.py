"""Shared machinery of the ASE-based oracles: reduce, isolate, time out, retry, store.

Every ASE oracle (GPAW, EMT, CP2K, Quantum ESPRESSO, VASP) labels a structure the same way:

1. ``check()`` the structure (an unsupported one becomes a failed result inside ``label``).
2. Return the result stored in ``<workdir>/result.json`` when it was made from the same structure with the
   same physics settings (a failed one only when the attempt policy is also unchanged).
3. Niggli-reduce the cell. The reduced lattice is an integer, unimodular combination of the input lattice
   vectors in the *same Cartesian frame* and the sites keep their order, so energy, forces (per input site,
   eV/Å) and stress (GPa) of the reduced cell are those of the input structure with no mapping needed.
4. Run each attempt in a child process (``calc_worker.py``, its own process group) with a wall-time limit:
   a segfault, an MPI abort or a hang kills only the child. Attempt ``k`` gets the implementation's fallback
   settings for ``k`` (e.g. looser mixing, more SCF iterations).
5. Write ``result.json`` atomically (temporary file + rename) and return the ``OracleResult``.

Units: energy eV, eV/atom; forces eV/Å; stress GPa (Voigt xx, yy, zz, yz, xz, xy; ASE sign); lengths Å; time s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import psutil
import spglib
from ase import Atoms
from ase.spacegroup.symmetrize import refine_symmetry
from pydantic import Field
from pymatgen.core import Lattice, Structure

from oracle.base import (
    CalculationFailed,
    InternalFault,
    Oracle,
    OracleError,
    OracleResult,
    OracleSettings,
    OracleTimeout,
    OracleUnavailable,
    RelaxationFrame,
    SCFError,
    UnsupportedStructure,
)
from oracle.cost import plane_wave_memory_gb

log = logging.getLogger("matloop.oracle")

RESULT_FILE = "result.json"
CALLS_FILE = "calls.jsonl"
WORKER_SCRIPT = Path(__file__).with_name("calc_worker.py")
_STORE_FORMAT = 1
_KILL_GRACE_S = 3.0
# How often a running calculation's CPU time is read, s.
_CPU_POLL_S = 2.0
MIN_DISTANCE = 0.5
"""Å; closer atoms make every code fail or lie, so such structures are rejected up front."""


class AseOracleSettings(OracleSettings):
    """Settings shared by the ASE-based oracles.

    Attributes:
        relax_steps: Ionic steps of the oracle's own relaxation of positions and cell (ASE BFGS on a
            `FrechetCellFilter`); 0 = single point. The verdict, the stored structure and the training label all
            come from the final step.
        relax_fmax: Force convergence of that relaxation, eV/Å (the cell filter scales stresses to the same unit).
        symprec: Symmetry tolerance, Å. When set, the cell is symmetrised to the space group spglib finds at this
            tolerance before the calculation, and a relaxation keeps that symmetry (ASE ``FixSymmetry``): a
            symmetric crystal then costs its irreducible k-points only, and numerical noise cannot lower its
            symmetry. Energies of a constrained relaxation are upper bounds of the unconstrained minimum. None:
            the cell is used as given.
    """

    relax_steps: int = Field(0, ge=0)
    relax_fmax: float = Field(0.05, gt=0)
    symprec: float | None = Field(None, gt=0, le=0.1)

    def settings_hash(self) -> str:
        """As `OracleSettings.settings_hash`; an unset ``symprec`` leaves hashes of earlier results unchanged."""
        exclude = set(self.non_physics_fields) | ({"symprec"} if self.symprec is None else set())
        payload = json.dumps(self.model_dump(exclude=exclude), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def structure_fingerprint(structure: Structure) -> str:
    """Hash of species, lattice (to 1e-5 Å) and fractional positions (to 1e-6), for cache validation."""
    payload = {
        "species": [site.species_string for site in structure],
        "lattice": np.round(structure.lattice.matrix, 5).tolist(),
        "frac": np.round(np.mod(structure.frac_coords, 1.0), 6).tolist(),
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def niggli_reduce(structure: Structure) -> Structure:
    """Niggli-reduce `structure`, keeping the Cartesian frame and the site order.

    Returns:
        The reduced structure. Its lattice rows are integer combinations of the input rows (|det| = 1) and
        site ``i`` is the periodic image of input site ``i``, so per-site forces and the stress tensor need
        no mapping back to the input.

    Raises:
        UnsupportedStructure: if the reduction changed frame or order (never expected; guards a library change).
    """
    reduced = structure.get_reduced_structure("niggli")
    negative = [i for i in range(3) if reduced.lattice.matrix[i, i] < 0]
    if len(negative) >= 2:
        # pymatgen returns every orthogonal cell as diag(-a, -b, c), and GPAW's text log, drawing the cell, fails
        # on it ("negative dimensions are not allowed"). Negating two rows keeps the frame, the handedness, the
        # lengths and the Cartesian positions.
        matrix = reduced.lattice.matrix.copy()
        matrix[negative[:2]] *= -1
        reduced = Structure(
            Lattice(matrix),
            reduced.species,
            reduced.cart_coords,
            coords_are_cartesian=True,
            site_properties=reduced.site_properties,
        )
    transform = np.linalg.solve(structure.lattice.matrix.T, reduced.lattice.matrix.T).T
    integer = np.round(transform)
    same_sites = [a.species_string for a in reduced] == [b.species_string for b in structure]
    shift = reduced.cart_coords - structure.cart_coords
    shift_frac = structure.lattice.get_fractional_coords(shift)
    if (
        not np.allclose(transform, integer, atol=1e-6)
        or not math.isclose(abs(np.linalg.det(integer)), 1.0, abs_tol=1e-6)
        or not same_sites
        or not np.allclose(shift_frac, np.round(shift_frac), atol=1e-6)
    ):
        raise UnsupportedStructure("Niggli reduction did not keep the frame/site order; pass a reduced cell")
    return reduced


@dataclass(frozen=True)
class Symmetrized:
    """A cell moved onto its space group (same lattice frame, same site order).

    Attributes:
        structure: The symmetrised cell, rigidly translated so that a site of the highest site symmetry sits at
            the origin (codes such as GPAW use only symmetry operations without fractional translations, i.e.
            rotations about the cell origin).
        spacegroup: International symbol of the space group found, e.g. "Fd-3m".
        number: Space-group number (1-230).
        max_shift: Largest displacement of a site by the symmetrisation itself (the rigid translation aside), Å.
        origin_operations: Symmetry operations that fix the origin after the translation (the point group a
            symmorphic-only code can use).
    """

    structure: Structure
    spacegroup: str
    number: int
    max_shift: float
    origin_operations: int


def symmetrize(structure: Structure, *, symprec: float) -> Symmetrized:
    """Move `structure` exactly onto the space group spglib finds at `symprec` (Å), keeping frame and site order.

    Site ``i`` of the result is site ``i`` of the input, displaced by at most about `symprec` (plus one rigid
    translation of the whole crystal, see `Symmetrized.structure`); the lattice is adjusted to the exact metric of
    its Bravais lattice. A P1 cell comes back unchanged.
    """
    atoms = Atoms(
        numbers=[site.specie.Z for site in structure],
        positions=structure.cart_coords,
        cell=structure.lattice.matrix,
        pbc=True,
    )
    found = refine_symmetry(atoms, symprec=symprec)
    refined = Structure(
        Lattice(atoms.cell.array), structure.species, atoms.get_positions(), coords_are_cartesian=True
    )
    moved = refined.lattice.get_fractional_coords(refined.cart_coords - structure.cart_coords)
    moved -= np.round(moved)
    max_shift = float(np.linalg.norm(refined.lattice.get_cartesian_coords(moved), axis=1).max(initial=0.0))
    frac = refined.frac_coords
    exact = spglib.get_symmetry_dataset(
        (refined.lattice.matrix, frac, [site.specie.Z for site in refined]), symprec=1e-5
    )
    fixed = np.zeros(len(frac), dtype=int)
    if exact is not None:
        for rotation, translation in zip(exact.rotations, exact.translations, strict=True):
            image = frac @ rotation.T + translation - frac
            fixed += np.all(np.abs(image - np.round(image)) < 1e-5, axis=1)
    anchor = int(np.argmax(fixed))  # the first site of the highest site symmetry
    centred = Structure(
        refined.lattice,
        refined.species,
        np.mod(frac - frac[anchor], 1.0),
        site_properties=refined.site_properties,
    )
    return Symmetrized(
        structure=centred,
        spacegroup=str(found.international),
        number=int(found.number),
        max_shift=max_shift,
        origin_operations=int(fixed[anchor]) if exact is not None else 1,
    )


def atoms_spec(structure: Structure, magmoms: Sequence[float] | None) -> dict[str, Any]:
    """The worker's plain-JSON description of a periodic cell (Å, μB)."""
    return {
        "numbers": [site.specie.Z for site in structure],
        "positions": structure.cart_coords.tolist(),
        "cell": structure.lattice.matrix.tolist(),
        "pbc": [True, True, True],
        "magmoms": list(magmoms) if magmoms is not None else None,
    }


def _audit(workdir: Path, **fields: Any) -> None:
    """Append one line to the work dir's calculation log (`calls.jsonl`), kept across processes.

    Every attempt writes "started" before the calculator runs and "finished" after it returns, so one can check
    that a killed and resumed campaign never completed the same calculation twice; a "started" without
    "finished" is a calculation that was in flight when its process died.
    """
    with (workdir / CALLS_FILE).open("a") as log:
        log.write(json.dumps({**fields, "pid": os.getpid(), "time": time.time()}) + "\n")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _workdir_lock(workdir: Path) -> Iterator[None]:
    """Exclusive lock so two workers handed the same structure never both run the calculation."""
    with open(workdir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the child's whole process group (mpiexec ranks, cp2k_shell), then reap it."""
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    # Ranks that outlived the leader are still in the group; make sure none is left behind. A killed process
    # lingers until the kernel schedules it (long on a loaded machine): wait, boundedly, until the group is gone.
    deadline = time.monotonic() + _KILL_GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def group_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, s) used so far by process `pid`, its live descendants and its reaped children."""
    try:
        leader = psutil.Process(pid)
        processes = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if proc is leader else 0.0)
    return total


@dataclass(frozen=True)
class ChildExit:
    """How an attempt's calculation process ended.

    Attributes:
        returncode: Its exit code; negative for a signal (e.g. -11 segfault); None when it was stopped at a limit.
        limit: The limit that stopped it: "wall" (`timeout_s`) or "cpu" (`cpu_timeout_s`); None if it ended itself.
    """

    returncode: int | None
    limit: Literal["wall", "cpu"] | None = None


def run_child(
    command: list[str],
    *,
    cwd: Path,
    timeout_s: float,
    cpu_timeout_s: float | None = None,
    env: dict[str, str] | None = None,
) -> ChildExit:
    """Run `command` in its own process group, killing the group after `timeout_s` s of wall time or, when
    `cpu_timeout_s` is given, once the group has used that many CPU seconds.

    A CPU-time limit does not kill a calculation that merely waited for a core on a busy machine.
    """
    deadline = time.monotonic() + timeout_s
    with open(cwd / "stdout.txt", "wb") as log:
        proc = subprocess.Popen(
            command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        (cwd / "child.pid").write_text(str(proc.pid))
        try:
            limit: Literal["wall", "cpu"] = "wall"
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    return ChildExit(proc.wait(timeout=min(left, _CPU_POLL_S) if cpu_timeout_s else left))
                except subprocess.TimeoutExpired:
                    if cpu_timeout_s is not None and group_cpu_seconds(proc.pid) > cpu_timeout_s:
                        limit = "cpu"
                        break
            _kill_group(proc)
            return ChildExit(None, limit)
        except BaseException:
            # e.g. KeyboardInterrupt in the caller: never leave a calculation running unattended.
            _kill_group(proc)
            raise


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per process: the machine's cores are shared by MPI ranks and other workers.
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(key, "1")
    return env


class AseOracle(Oracle):
    """Base of the oracles that run an ASE calculator in a child process.

    Subclasses implement `calculator_job` (the worker's calculator name and keyword arguments for a given
    attempt) and may override `launch_command` (e.g. for MPI) and `initial_magmoms`.
    """

    calculator: ClassVar[str]
    settings: AseOracleSettings

    @abstractmethod
    def calculator_job(self, structure: Structure, *, attempt: int, directory: Path) -> dict[str, Any]:
        """Keyword arguments of the ASE calculator for `attempt` (1-based), in the calculator's own units."""

    def check(self, structure: Structure) -> None:
        """Raise `UnsupportedStructure` for structures no ASE oracle can compute.

        The size guard first (`StructureTooLarge`, before any O(n²) work), then empty or disordered structures
        (partial occupancies) and atoms closer than `MIN_DISTANCE` Å; subclasses add their element checks after
        calling this.
        """
        self.check_size(structure)
        if len(structure) == 0:
            raise UnsupportedStructure("the structure has no sites")
        if not structure.is_ordered:
            raise UnsupportedStructure(f"{self.name} needs an ordered structure (no partial occupancies)")
        if len(structure) > 1:
            dist = structure.distance_matrix + np.eye(len(structure)) * 1e9
            if dist.min() < MIN_DISTANCE:
                i, j = np.unravel_index(np.argmin(dist), dist.shape)
                raise UnsupportedStructure(
                    f"sites {i} and {j} are {dist[i, j]:.2f} Å apart (< {MIN_DISTANCE} Å)",
                    fix="fix the structure",
                )
        super().check(structure)

    def relaxation_job(self, structure: Structure, *, attempt: int, directory: Path) -> dict[str, Any] | None:
        """Calculator keyword arguments of the relaxation when cheaper than `calculator_job`'s, else None.

        When given, the structure is relaxed with these and the result is a single point with the label's own
        settings at the relaxed geometry (no frames: their numbers would belong to other settings).
        """
        return None

    def launch_command(self, job_file: Path) -> list[str]:
        """The command that runs the worker on `job_file`."""
        return [sys.executable, str(WORKER_SCRIPT), str(job_file)]

    def run_attempt(self, job_file: Path, *, directory: Path) -> ChildExit:
        """Run one attempt's job file, leaving the worker's answer in `directory`.

        The default isolates the calculator in a child process (`run_child`); an oracle whose calculator is cheap
        to keep loaded may run it in this process instead.
        """
        return run_child(
            self.launch_command(job_file),
            cwd=directory,
            timeout_s=self.settings.timeout_s,
            cpu_timeout_s=self.settings.cpu_timeout_s,
            env=_child_env(),
        )

    def initial_magmoms(self, structure: Structure) -> list[float] | None:
        """Initial magnetic moments per site, μB (None: non-spin-polarised)."""
        return None

    def code_version(self) -> str:
        return self.name

    def preflight(self) -> None:
        """Raise `OracleUnavailable` when no calculation can start on this machine (e.g. executable missing).

        Such a failure says nothing about the structure, so it is transient: returned but never stored.
        """

    def _stored(self, workdir: Path, fingerprint: str, metadata: dict[str, Any]) -> OracleResult | None:
        """The result kept in ``result.json`` for this structure and these settings, if any.

        A file that exists but cannot be read back as a result (truncated write, garbage, missing fields, wrong
        shapes) is moved aside to ``result.json.corrupt-<n>``, logged to ``calls.jsonl`` and to the
        ``matloop.oracle`` logger, noted in `metadata` (``replaced_corrupt_result``, so the new result carries it to
        the caller) and the label is computed again.
        """
        path = workdir / RESULT_FILE
        if not path.exists():
            return None
        try:
            stored = json.loads(path.read_text())
            if stored.get("format") != _STORE_FORMAT:
                return None
            if (
                stored.get("settings_hash") != self.settings.settings_hash()
                or stored.get("structure_fingerprint") != fingerprint
            ):
                return None
            result = OracleResult.from_dict(stored["result"])
            _validate(result)
        except Exception as exc:  # any unreadable content is one fault: a corrupt file
            why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            metadata["replaced_corrupt_result"] = f"{self._set_aside(path, why)} ({why})"
            return None
        policy = {"max_attempts": self.settings.max_attempts, "timeout_s": self.settings.timeout_s}
        if not result.ok and stored.get("policy") != policy:
            return None  # a failure under a different attempt policy deserves a new try
        result.metadata["from_store"] = True
        return result

    @staticmethod
    def _set_aside(path: Path, why: str) -> str:
        """Move a corrupt file aside (never delete evidence); returns the new name."""
        n = 1
        while path.with_name(f"{path.name}.corrupt-{n}").exists():
            n += 1
        aside = path.with_name(f"{path.name}.corrupt-{n}")
        os.replace(path, aside)
        _audit(path.parent, event="corrupt_result", file=aside.name, why=why)
        log.warning(
            "corrupt oracle result %s (%s): moved to %s, computing the label again", path, why, aside.name
        )
        return aside.name

    def label(self, structure: Structure, *, workdir: Path) -> OracleResult:
        """Label `structure` (see the module docstring); never raises for calculation faults.

        Args:
            structure: The crystal; results refer to its sites in its order.
            workdir: Directory for calculator files and ``result.json`` (created if needed).

        Returns:
            An ``OracleResult``: energy eV, energy_per_atom eV/atom, forces eV/Å (n_sites × 3), stress GPa, all of
            ``final_structure`` (the relaxed geometry when ``relax_steps`` > 0, else the input structure),
            ``frames`` of a relaxation. ``metadata`` holds ``settings_hash``, ``code_version``, ``n_scf``,
            ``attempt_log`` (the calculator parameters of each attempt, k-mesh included), ``reduced_lattice`` if
            Niggli changed the cell, ``relax_converged`` and ``relax_steps_taken`` after a relaxation;
            ``from_store`` is True when the result was read back from ``result.json``. A typed fault
            (`OracleError`) comes back as a failed result with its ``failure_kind``; ``transient`` failures
            (machine set-up, internal faults) are not stored in ``result.json``, nor are faults decided before
            any calculation ran (unsupported or too large: cheap to decide again).
        """
        t0 = time.perf_counter()
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        fingerprint = structure_fingerprint(structure)
        metadata: dict[str, Any] = {
            "settings_hash": self.settings.settings_hash(),
            "structure_fingerprint": fingerprint,
            "oracle": self.name,
            "is_dft": self.is_dft,
            "level_of_theory": self.level_of_theory,
        }
        attempts: list[dict[str, Any]] = []
        metadata["attempt_log"] = attempts
        with _workdir_lock(workdir):
            stored = self._stored(workdir, fingerprint, metadata)
            if stored is not None:
                return stored
            try:
                self.check(structure)
                self.preflight()
                result = self.compute(structure, workdir=workdir, metadata=metadata)
            except OracleError as exc:
                result = OracleResult.failure(
                    exc,
                    wall_time=time.perf_counter() - t0,
                    attempts=len(attempts),
                    settings=self.settings.model_dump(),
                    metadata=metadata,
                )
                if result.transient or not attempts:
                    return result
            except Exception as exc:  # the caller's loop must survive any fault of ours, too
                return OracleResult.failure(
                    InternalFault(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0][:300]),
                    wall_time=time.perf_counter() - t0,
                    attempts=len(attempts),
                    settings=self.settings.model_dump(),
                    metadata=metadata,
                )
            result.wall_time = time.perf_counter() - t0
            _write_json_atomic(
                workdir / RESULT_FILE,
                {
                    "format": _STORE_FORMAT,
                    "settings_hash": self.settings.settings_hash(),
                    "structure_fingerprint": fingerprint,
                    "policy": {
                        "max_attempts": self.settings.max_attempts,
                        "timeout_s": self.settings.timeout_s,
                    },
                    "result": result.to_dict(),
                },
            )
            return result

    def compute(self, structure: Structure, *, workdir: Path, metadata: dict[str, Any]) -> OracleResult:
        """Run the calculation (attempts with fallbacks) and return the successful result.

        Raises:
            UnsupportedStructure: the cell cannot be reduced or the calculator refuses its settings.
            SCFError: the SCF did not converge in any attempt.
            OracleTimeout: an attempt exceeded ``timeout_s`` (no slower retry follows).
            CalculationFailed: the calculator crashed or returned no usable numbers.
            OracleUnavailable: the calculation could not be started (launcher missing).
        """
        reduced = niggli_reduce(structure)
        if reduced.lattice.matrix.tolist() != structure.lattice.matrix.tolist():
            metadata["reduced_lattice"] = reduced.lattice.matrix.tolist()
        symprec = self.settings.symprec
        if symprec is not None:
            sym = symmetrize(reduced, symprec=symprec)
            reduced = sym.structure
            metadata["symmetry"] = {
                "spacegroup": sym.spacegroup,
                "number": sym.number,
                "symprec": symprec,
                "max_shift": sym.max_shift,
                "origin_operations": sym.origin_operations,
            }
        magmoms = self.initial_magmoms(reduced)
        metadata["spin_polarized"] = magmoms is not None
        log: list[dict[str, Any]] = metadata["attempt_log"]
        failure: OracleError = CalculationFailed("no attempt made", fix="set max_attempts >= 1")
        for attempt in range(1, self.settings.max_attempts + 1):
            directory = workdir / f"attempt-{attempt}"
            directory.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (directory / "answer.json").unlink()
            params = self.calculator_job(reduced, attempt=attempt, directory=directory)
            job = {
                "calculator": self.calculator,
                "params": params,
                "atoms": atoms_spec(reduced, magmoms),
                "relax_steps": self.settings.relax_steps,
                "relax_fmax": self.settings.relax_fmax,
                "symprec": symprec,
                "relax_params": self.relaxation_job(reduced, attempt=attempt, directory=directory),
                "output": "answer.json",
                "parent_pid": os.getpid(),
                "band_gap": "band_gap" in self.implemented_properties,
            }
            job_file = directory / "job.json"
            job_file.write_text(json.dumps(job, indent=1))
            entry: dict[str, Any] = {"attempt": attempt, "params": params}
            if job["relax_params"] is not None:
                entry["relax_params"] = job["relax_params"]
            log.append(entry)
            _audit(workdir, attempt=attempt, event="started")
            t_attempt = time.perf_counter()
            try:
                ended = self.run_attempt(job_file, directory=directory)
            except OSError as exc:  # launcher missing or not executable
                entry["outcome"] = f"could not start the calculation: {exc}"
                raise OracleUnavailable(entry["outcome"]) from None
            entry["wall_time"] = time.perf_counter() - t_attempt
            answer = self._read_answer(directory)
            _audit(
                workdir, attempt=attempt, event="finished", ok=bool(answer and answer.get("status") == "ok")
            )
            code = ended.returncode
            if ended.limit == "cpu":
                failure = OracleTimeout(
                    f"timeout: attempt {attempt} exceeded {self.settings.cpu_timeout_s:g} CPU s"
                )
            elif ended.limit == "wall":
                failure = OracleTimeout(
                    f"timeout: attempt {attempt} exceeded {self.settings.timeout_s:g} s of wall time"
                )
            elif answer is None:
                why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                failure = CalculationFailed(
                    f"calculator crashed ({why}) without an answer; see {directory.name}/stdout.txt"
                )
            elif answer.get("status") != "ok":
                if answer.get("kind") == "scf":
                    within = f" within {params['maxiter']} iterations" if "maxiter" in params else ""
                    failure = SCFError(f"SCF did not converge{within} ({answer.get('reason', '')})")
                else:
                    failure = CalculationFailed(f"calculator error: {answer.get('reason', '')}")
            else:
                entry["outcome"] = "ok"
                return self._ok(answer, structure, reduced, attempts=attempt, metadata=metadata)
            entry["outcome"] = failure.reason
            if ended.limit is not None:
                break  # a slower retry of a run that hit the wall would only hit it again
        raise failure

    @staticmethod
    def _read_answer(directory: Path) -> dict[str, Any] | None:
        try:
            return json.loads((directory / "answer.json").read_text())
        except (OSError, ValueError):
            return None

    def _ok(
        self,
        answer: dict[str, Any],
        structure: Structure,
        reduced: Structure,
        *,
        attempts: int,
        metadata: dict[str, Any],
    ) -> OracleResult:
        n = len(structure)
        metadata["code_version"] = answer.get("code_version", self.code_version())
        metadata["n_scf"] = answer.get("n_scf")
        if "magnetic_moment" in answer:
            metadata["magnetic_moment"] = answer["magnetic_moment"]  # μB per cell
        if answer.get("band_gap") is not None:
            # eV: the Kohn-Sham gap on the label's own k-mesh, with the oracle's functional
            metadata["band_gap"] = answer["band_gap"]
            metadata["band_gap_functional"] = getattr(self.settings, "xc", None)

        def geometry(cell: list[list[float]], positions: list[list[float]]) -> Structure:
            return Structure(Lattice(cell), reduced.species, positions, coords_are_cartesian=True)

        # A single point's numbers belong to the input structure as given (the reduced cell is the same crystal in
        # the same frame and site order) unless it was symmetrised; a relaxation's to its final geometry, in the
        # reduced cell.
        final = reduced if "symmetry" in metadata else structure
        frames: list[RelaxationFrame] = []
        if "relaxed" in answer:
            relaxed = answer["relaxed"]
            final = geometry(relaxed["cell"], relaxed["positions"])
            metadata["relax_converged"] = relaxed["converged"]
            metadata["relax_steps_taken"] = relaxed["steps"]
            frames = [
                RelaxationFrame(
                    structure=geometry(f["cell"], f["positions"]),
                    energy=float(f["energy"]),
                    forces=f["forces"],
                    stress=f["stress"],
                )
                for f in answer.get("frames", [])
            ]
        energy = float(answer["energy"])
        result = OracleResult(
            status="ok",
            energy=energy,
            energy_per_atom=energy / n,
            forces=answer["forces"],
            stress=answer["stress"],
            final_structure=final,
            frames=frames,
            attempts=attempts,
            settings=self.settings.model_dump(),
            metadata=metadata,
        )
        _validate(result)
        return result


def _validate(result: OracleResult) -> None:
    """Raise `CalculationFailed` unless a result is internally consistent (finite numbers, matching shapes)."""
    if result.status not in ("ok", "failed"):
        raise CalculationFailed(f"unknown status {result.status!r}")
    if not result.ok:
        return
    if (
        result.final_structure is None
        or result.forces is None
        or result.stress is None
        or result.energy is None
    ):
        raise CalculationFailed("an ok result without final structure, energy, forces or stress")
    n = len(result.final_structure)
    forces = np.asarray(result.forces, dtype=float)
    stress = np.asarray(result.stress, dtype=float)
    if forces.shape != (n, 3) or stress.shape != (6,):
        raise CalculationFailed(f"forces {forces.shape} / stress {stress.shape} do not fit {n} sites")
    if not (math.isfinite(result.energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
        raise CalculationFailed("non-finite energy, forces or stress")


def kpoint_mesh(structure: Structure, density: float) -> list[int]:
    """Γ-centred Monkhorst-Pack mesh for a k-point density in Å⁻¹ (ASE's ``kptdensity`` convention).

    ``n_i = max(1, ceil(2π |b_i| density))`` with ``b_i`` the reciprocal vectors without the 2π factor.
    """
    recip = np.linalg.inv(structure.lattice.matrix).T
    return [max(1, math.ceil(2 * math.pi * float(np.linalg.norm(b)) * density - 1e-9)) for b in recip]


def label_structures(
    oracle: Oracle, structures: Sequence[Structure], *, workdir_for: Callable[[Structure], Path]
) -> list[OracleResult]:
    """Label each structure in turn in ``workdir_for(structure)``; failed labels come back as failed results."""
    return [oracle.label(s, workdir=workdir_for(s)) for s in structures]


class PlaneWaveOracle(AseOracle):
    """An ASE oracle with a plane-wave basis (settings `cutoff` in eV and `kpoint_density` in Å⁻¹): GPAW, VASP, QE."""

    @property
    def density_cutoff_factor(self) -> float:
        """Density-grid cutoff over the wavefunction cutoff (4 for PAW; Quantum ESPRESSO sets its own `dual`)."""
        return 4.0

    def memory_estimate_gb(self, structure: Structure) -> float:
        """Plane-wave estimate (`oracle.cost.plane_wave_memory_gb`) at this cutoff, k-mesh and spin setting."""
        return plane_wave_memory_gb(
            structure,
            cutoff=self.settings.cutoff,
            kpoint_mesh=kpoint_mesh(structure, self.settings.kpoint_density),
            spin_polarized=self.initial_magmoms(structure) is not None,
            density_cutoff_factor=self.density_cutoff_factor,
        )
