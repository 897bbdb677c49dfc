"""The default oracle: plane-wave PAW DFT with GPAW (through ASE), run in a child process.

Units: cutoff eV, k-point density Å⁻¹, smearing width eV, SCF energy tolerance eV per valence electron,
initial magnetic moments μB; results in eV, eV/Å, GPa (see `oracle.base`).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pymatgen.core import Structure

from oracle.ase_runner import WORKER_SCRIPT, AseOracleSettings, PlaneWaveOracle, kpoint_mesh
from oracle.base import OracleUnavailable, UnsupportedStructure, register

# Initial moments (μB) for spin-polarised runs: high-spin-ish starting guesses for 3d metals and the
# open-shell 4f elements; the SCF settles the actual moment.
DEFAULT_MAGMOMS: dict[str, float] = {
    "Ti": 1.0,
    "V": 3.0,
    "Cr": 4.0,
    "Mn": 5.0,
    "Fe": 4.0,
    "Co": 3.0,
    "Ni": 2.0,
    "Cu": 1.0,
    "Mo": 2.0,
    "Ru": 2.0,
    "Ce": 1.0,
    "Pr": 2.0,
    "Nd": 3.0,
    "Pm": 4.0,
    "Sm": 5.0,
    "Eu": 7.0,
    "Gd": 7.0,
    "Tb": 6.0,
    "Dy": 5.0,
    "Ho": 4.0,
    "Er": 3.0,
    "Tm": 2.0,
    "Yb": 1.0,
}
MAGNETIC_ELEMENTS: frozenset[str] = frozenset(
    {
        "V",
        "Cr",
        "Mn",
        "Fe",
        "Co",
        "Ni",
        "Ce",
        "Pr",
        "Nd",
        "Pm",
        "Sm",
        "Eu",
        "Gd",
        "Tb",
        "Dy",
        "Ho",
        "Er",
        "Tm",
        "Yb",
    }
)
"""Elements whose presence turns spin polarisation on when ``spin_polarized="auto"``."""


class GPAWSettings(AseOracleSettings):
    """Plane-wave GPAW settings.

    Attributes:
        cutoff: Plane-wave cutoff, eV. 700 eV is needed for usable stresses with O, F or d-metals.
        kpoint_density: Γ-centred Monkhorst-Pack density, Å⁻¹ (ASE ``kptdensity`` convention).
        xc: Exchange-correlation functional (a PAW setup set of that name must be installed).
        smearing: Occupation smearing scheme.
        smearing_width: Smearing width, eV.
        spin_polarized: "auto" (on when a magnetic element is present), or force on/off.
        initial_magmoms: Per-element initial moments, μB, overriding the built-in defaults.
        scf_energy_tol: SCF energy convergence, eV per valence electron.
        scf_density_tol: SCF density convergence (electrons per valence electron).
        maxiter: SCF iterations of the first attempt (attempt k uses k times as many).
        mixer_beta: Density mixing fraction of the first attempt (attempt k uses it divided by 2^(k-1), at least 0.01).
        mixer_history: Number of old densities in the Pulay mixer.
        mixer_weight: Mixer metric weight.
        mpi_ranks: MPI processes per calculation; >1 runs ``mpiexec -n N gpaw python``.
        relax_steps: Ionic steps of the DFT relaxation of positions and cell (BFGS on a FrechetCellFilter, after
            Niggli reduction); 0 = single point. On by default: a campaign's verdicts, stored structures and
            training labels come from the relaxed geometry (a single point at an emulator geometry sat up to
            0.8 eV/Å and ±4 GPa away from it in the audited demo).
        relax_fmax: Force convergence of that relaxation, eV/Å.
        relax_kpoint_density: k-point density of the relaxation, Å⁻¹, when it may be coarser than
            ``kpoint_density`` (geometries converge with fewer k-points than energy differences); the label is then
            a single point at ``kpoint_density`` at the relaxed geometry, without relaxation frames. None: relax
            with ``kpoint_density``.
        max_atoms: Largest cell accepted (atoms); plane-wave cost grows as N³, so larger cells are refused before
            they start (together with the memory estimate, `max_memory_gb`).
        symprec: Symmetry tolerance, Å (see `AseOracleSettings`). On by default at 0.01 Å (spglib's and
            pymatgen's customary tolerance): emulator-relaxed candidates keep their parent's symmetry only to
            about 1e-4-1e-3 Å, and GPAW (tolerance 1e-7) would otherwise treat them as P1 and compute every
            k-point of the mesh.
    """

    kind: Literal["gpaw"] = "gpaw"
    cutoff: float = Field(700.0, gt=0)
    kpoint_density: float = Field(2.0, gt=0)
    xc: Literal["PBE", "LDA", "RPBE", "revPBE"] = "PBE"
    smearing: Literal["fermi-dirac", "marzari-vanderbilt"] = "fermi-dirac"
    smearing_width: float = Field(0.05, ge=0)
    spin_polarized: Literal["auto"] | bool = "auto"
    initial_magmoms: dict[str, float] = Field(default_factory=dict)
    scf_energy_tol: float = Field(5e-4, gt=0)
    scf_density_tol: float = Field(1e-4, gt=0)
    maxiter: int = Field(200, ge=1)
    mixer_beta: float = Field(0.05, gt=0, le=1)
    mixer_history: int = Field(5, ge=1)
    mixer_weight: float = Field(50.0, gt=0)
    mpi_ranks: int = Field(1, ge=1)
    relax_steps: int = Field(20, ge=0)
    relax_fmax: float = Field(0.05, gt=0)
    relax_kpoint_density: float | None = Field(None, gt=0)
    max_atoms: int = Field(200, ge=1)
    symprec: float | None = Field(0.01, gt=0, le=0.1)

    non_physics_fields: ClassVar[frozenset[str]] = AseOracleSettings.non_physics_fields | {
        "mpi_ranks",
        "maxiter",
        "mixer_beta",
        "mixer_history",
        "mixer_weight",
    }


@functools.cache
def installed_setups(xc: str) -> frozenset[str]:
    """Elements with a PAW setup file for `xc` in GPAW's setup paths (e.g. the gpaw-data package)."""
    try:
        from gpaw import setup_paths
    except ImportError:
        return frozenset()
    pattern = re.compile(rf"^([A-Z][a-z]?)\.{re.escape(xc)}(\.gz)?$")
    found: set[str] = set()
    for folder in setup_paths:
        folder = Path(folder)
        if folder.is_dir():
            found.update(m.group(1) for p in folder.iterdir() if (m := pattern.match(p.name)))
    return frozenset(found)


@register
class GPAWOracle(PlaneWaveOracle):
    """Real DFT: GPAW plane-wave PAW with a Γ-centred k-mesh; the default oracle of a campaign."""

    name = "gpaw"
    calculator = "gpaw"
    Settings = GPAWSettings
    # band_gap: the Kohn-Sham gap of the label's own SCF (its functional, its k-mesh), eV
    implemented_properties = ("energy", "forces", "stress", "band_gap")
    is_dft = True
    settings: GPAWSettings

    def check(self, structure: Structure) -> None:
        """Raise `UnsupportedStructure` if GPAW is absent or an element has no installed PAW setup."""
        super().check(structure)
        if importlib.util.find_spec("gpaw") is None:
            raise OracleUnavailable(
                "gpaw is not installed", fix="install matloop[gpaw] or choose another oracle"
            )
        have = installed_setups(self.settings.xc)
        bad = sorted({el.symbol for el in structure.composition.elements} - have)
        if bad:
            raise UnsupportedStructure(
                f"gpaw has no {self.settings.xc} PAW setup for {', '.join(bad)}", fix="choose another oracle"
            )
        if self.settings.mpi_ranks > 1 and shutil.which("mpiexec") is None:
            raise OracleUnavailable("mpi_ranks > 1 needs mpiexec on PATH", fix="set mpi_ranks: 1")

    def initial_magmoms(self, structure: Structure) -> list[float] | None:
        symbols = [site.specie.symbol for site in structure]
        spin = self.settings.spin_polarized
        if spin == "auto":
            spin = bool(set(symbols) & (MAGNETIC_ELEMENTS | set(self.settings.initial_magmoms)))
        if not spin:
            return None
        moments = {**DEFAULT_MAGMOMS, **self.settings.initial_magmoms}
        return [moments.get(s, 0.0) for s in symbols]

    def relaxation_job(self, structure: Structure, *, attempt: int, directory: Path) -> dict[str, Any] | None:
        density = self.settings.relax_kpoint_density
        if density is None or density == self.settings.kpoint_density:
            return None
        return self.calculator_job(structure, attempt=attempt, directory=directory, kpoint_density=density)

    def calculator_job(
        self, structure: Structure, *, attempt: int, directory: Path, kpoint_density: float | None = None
    ) -> dict[str, Any]:
        s = self.settings
        # Fallback for later attempts: gentler mixing with a longer memory and more iterations; none of
        # these change the converged answer, only whether it is reached.
        beta = s.mixer_beta if attempt == 1 else max(0.01, s.mixer_beta / (2 ** (attempt - 1)))
        history = s.mixer_history if attempt == 1 else max(s.mixer_history, 8)
        maxiter = s.maxiter * attempt
        params = {
            "mode": {"name": "pw", "ecut": s.cutoff},
            "xc": s.xc,
            "kpts": {"size": kpoint_mesh(structure, kpoint_density or s.kpoint_density), "gamma": True},
            "occupations": {"name": s.smearing, "width": s.smearing_width},
            "convergence": {"energy": s.scf_energy_tol, "density": s.scf_density_tol},
            "maxiter": maxiter,
            "mixer": {"beta": beta, "nmaxold": history, "weight": s.mixer_weight},
        }
        if attempt > 1:
            # GPAW's symmetry analysis fails on some nearly-symmetric cells ("SymmetryAnalysisBug"); the full
            # k-mesh without symmetry reduction gives the same energy, only slower.
            params["symmetry"] = "off"
        return params

    def launch_command(self, job_file: Path) -> list[str]:
        if self.settings.mpi_ranks == 1:
            return super().launch_command(job_file)
        gpaw_exe = Path(sys.executable).with_name("gpaw")
        launcher = str(gpaw_exe) if gpaw_exe.exists() else "gpaw"
        return [
            "mpiexec",
            "--allow-run-as-root",
            "-n",
            str(self.settings.mpi_ranks),
            launcher,
            "python",
            str(WORKER_SCRIPT),
            str(job_file),
        ]

    def code_version(self) -> str:
        try:
            import gpaw

            return f"gpaw {gpaw.__version__}"
        except ImportError:
            return "gpaw (not installed)"
