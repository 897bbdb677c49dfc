"""CP2K oracle (Gaussian and plane waves, GTH pseudopotentials, MOLOPT basis sets) through ASE's CP2K calculator.

ASE drives CP2K through its interactive ``cp2k_shell``; the k-point mesh, smearing and mixing go into the
``inp=`` template. Units: cutoff eV, smearing width eV (converted to an electronic temperature in K), k-point
density Å⁻¹; results in eV, eV/Å, GPa (see `oracle.base`).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pymatgen.core import Structure

from oracle.ase_runner import AseOracle, AseOracleSettings, kpoint_mesh
from oracle.base import OracleUnavailable, UnsupportedStructure, register
from oracle.cost import local_basis_memory_gb
from oracle.gpaw_dft import MAGNETIC_ELEMENTS

BOLTZMANN_EV_PER_K = 8.617333262e-5
_ELEMENT = re.compile(r"^[A-Z][a-z]?$")


class CP2KSettings(AseOracleSettings):
    """CP2K settings.

    Attributes:
        command: The CP2K shell executable (Debian names it ``cp2k_shell``; upstream ``cp2k.psmp -s``).
        data_dir: Folder with the basis-set and potential files; default ``$CP2K_DATA_DIR`` or
            ``<prefix>/share/cp2k`` next to the executable.
        cutoff: Finest-grid cutoff, eV (400 Ry ≈ 5442 eV is CP2K's usual production value).
        rel_cutoff: Relative cutoff of the multigrid, Ry.
        basis_set: Basis-set name for every element (in ``basis_set_file``).
        basis_set_file: Basis-set file name.
        pseudo_potential: Pseudopotential name for every element (in ``potential_file``).
        potential_file: Pseudopotential file name.
        xc: Exchange-correlation functional.
        kpoint_density: Γ-centred Monkhorst-Pack density, Å⁻¹.
        smearing_width: Fermi-Dirac smearing, eV (0 = none; then ``added_mos`` is ignored).
        added_mos: Extra empty orbitals for the smearing.
        uks: Unrestricted Kohn-Sham: "auto" (on with a magnetic element present) or forced on/off.
        eps_scf: SCF convergence, CP2K's ``EPS_SCF`` (Hartree-based density error).
        max_scf: SCF iterations of the first attempt (attempt k uses k times as many).
        mixing_alpha: Broyden mixing fraction of the first attempt (attempt k uses it divided by 2^(k-1)).
    """

    kind: Literal["cp2k"] = "cp2k"
    command: str = "cp2k_shell"
    data_dir: str | None = None
    cutoff: float = Field(400 * 13.605693122994, gt=0)
    rel_cutoff: float = Field(60.0, gt=0)
    basis_set: str = "DZVP-MOLOPT-SR-GTH"
    basis_set_file: str = "BASIS_MOLOPT"
    pseudo_potential: str = "GTH-PBE"
    potential_file: str = "POTENTIAL"
    xc: str = "PBE"
    kpoint_density: float = Field(2.0, gt=0)
    smearing_width: float = Field(0.05, ge=0)
    added_mos: int = Field(20, ge=0)
    uks: Literal["auto"] | bool = "auto"
    eps_scf: float = Field(1e-6, gt=0)
    max_scf: int = Field(100, ge=1)
    mixing_alpha: float = Field(0.3, gt=0, le=1)

    non_physics_fields: ClassVar[frozenset[str]] = AseOracleSettings.non_physics_fields | {
        "command",
        "data_dir",
        "max_scf",
        "mixing_alpha",
    }


@functools.cache
def _names_per_element(path: Path) -> dict[str, frozenset[str]]:
    """Map element -> names defined for it in a CP2K basis-set or potential file."""
    found: dict[str, set[str]] = {}
    with open(path, errors="replace") as fh:
        for line in fh:
            tokens = line.split()
            if len(tokens) >= 2 and _ELEMENT.match(tokens[0]) and not tokens[1][0].isdigit():
                found.setdefault(tokens[0], set()).update(tokens[1:])
    return {el: frozenset(names) for el, names in found.items()}


@register
class CP2KOracle(AseOracle):
    """Real DFT with CP2K (GPW); GTH pseudopotentials and MOLOPT basis sets from the installed CP2K data."""

    name = "cp2k"
    calculator = "cp2k"
    Settings = CP2KSettings
    implemented_properties = ("energy", "forces", "stress")
    is_dft = True
    settings: CP2KSettings

    def data_dir(self) -> Path | None:
        """Where the basis-set and potential files are, or None if not found."""
        candidates = [self.settings.data_dir, os.environ.get("CP2K_DATA_DIR")]
        exe = shutil.which(self.settings.command.split()[0])
        if exe is not None:
            candidates.append(str(Path(exe).resolve().parent.parent / "share" / "cp2k"))
        for candidate in candidates:
            if candidate and (Path(candidate) / self.settings.basis_set_file).is_file():
                return Path(candidate)
        return None

    def check(self, structure: Structure) -> None:
        """Raise `UnsupportedStructure` if CP2K, its data files, or a basis/potential for an element is missing."""
        super().check(structure)
        s = self.settings
        if shutil.which(s.command.split()[0]) is None:
            raise OracleUnavailable(f"cp2k executable {s.command.split()[0]!r} not found", fix="install cp2k")
        data = self.data_dir()
        if data is None or not (data / s.potential_file).is_file():
            raise OracleUnavailable(
                "cp2k basis/potential files not found", fix="set data_dir or CP2K_DATA_DIR"
            )
        basis = _names_per_element(data / s.basis_set_file)
        potentials = _names_per_element(data / s.potential_file)
        elements = sorted({el.symbol for el in structure.composition.elements})
        bad = [el for el in elements if s.basis_set not in basis.get(el, ())]
        if bad:
            raise UnsupportedStructure(f"cp2k basis set {s.basis_set} has no entry for {', '.join(bad)}")
        bad = [el for el in elements if s.pseudo_potential not in potentials.get(el, ())]
        if bad:
            raise UnsupportedStructure(
                f"cp2k potential {s.pseudo_potential} has no entry for {', '.join(bad)}"
            )

    def memory_estimate_gb(self, structure: Structure) -> float:
        """Local-basis estimate (`oracle.cost.local_basis_memory_gb`)."""
        return local_basis_memory_gb(
            structure,
            kpoint_mesh=kpoint_mesh(structure, self.settings.kpoint_density),
            spin_polarized=self._uks(structure),
        )

    def _uks(self, structure: Structure) -> bool:
        if self.settings.uks == "auto":
            return bool({el.symbol for el in structure.composition.elements} & MAGNETIC_ELEMENTS)
        return bool(self.settings.uks)

    def input_template(self, structure: Structure, *, attempt: int) -> str:
        """The ``inp=`` template: k-points, SCF mixing and smearing (ASE adds cell, atoms, basis, XC)."""
        s = self.settings
        mesh = kpoint_mesh(structure, s.kpoint_density)
        # CP2K's Monkhorst-Pack meshes miss Γ when even; a MacDonald shift of half a spacing puts it back,
        # so every code here samples the same Γ-centred mesh.
        shifts = [0.5 / n if n % 2 == 0 else 0.0 for n in mesh]
        scheme = "MACDONALD " + " ".join(str(n) for n in mesh) + " " + " ".join(f"{x:.10f}" for x in shifts)
        alpha = s.mixing_alpha / (2 ** (attempt - 1))
        smear = ""
        if s.smearing_width > 0:
            temperature = s.smearing_width / BOLTZMANN_EV_PER_K
            smear = (
                f"      ADDED_MOS {s.added_mos}\n"
                "      &SMEAR ON\n"
                "        METHOD FERMI_DIRAC\n"
                f"        ELECTRONIC_TEMPERATURE [K] {temperature:.3f}\n"
                "      &END SMEAR\n"
            )
        return (
            "&FORCE_EVAL\n"
            "  &DFT\n"
            "    &KPOINTS\n"
            f"      SCHEME {scheme}\n"
            "      SYMMETRY OFF\n"
            "      FULL_GRID OFF\n"
            "    &END KPOINTS\n"
            "    &MGRID\n"
            f"      REL_CUTOFF [Ry] {s.rel_cutoff}\n"
            "    &END MGRID\n"
            "    &SCF\n"
            f"      EPS_SCF {s.eps_scf:g}\n"
            "      SCF_GUESS ATOMIC\n"
            f"{smear}"
            "      &MIXING\n"
            "        METHOD BROYDEN_MIXING\n"
            f"        ALPHA {alpha:g}\n"
            "      &END MIXING\n"
            "    &END SCF\n"
            "  &END DFT\n"
            "&END FORCE_EVAL\n"
        )

    def calculator_job(self, structure: Structure, *, attempt: int, directory: Path) -> dict[str, Any]:
        s = self.settings
        data = self.data_dir()
        command = s.command
        # Debian's cp2k_shell wrapper already passes -s; the upstream binaries need it.
        if "shell" not in Path(command.split()[0]).name and " -s" not in command:
            command = f"{command} -s"
        params: dict[str, Any] = {
            "command": command,
            "cutoff": s.cutoff,
            "basis_set": s.basis_set,
            "data_dir": str(data) if data else None,
            "basis_set_file": s.basis_set_file,
            "pseudo_potential": s.pseudo_potential,
            "potential_file": s.potential_file,
            "xc": s.xc,
            "max_scf": s.max_scf * attempt,
            "uks": self._uks(structure),
            "stress_tensor": True,
            "print_level": "LOW",
            "inp": self.input_template(structure, attempt=attempt),
        }
        return params
