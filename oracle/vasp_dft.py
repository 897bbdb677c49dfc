"""VASP oracle through ASE's Vasp calculator.

Needs a VASP executable and the licensed POTCAR files (``$VASP_PP_PATH/potpaw_PBE/<El><suffix>/POTCAR``);
neither ships with matloop. Units: cutoff eV, smearing width eV, k-point density Å⁻¹; results in eV, eV/Å, GPa.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pymatgen.core import Structure

from oracle.ase_runner import (
    AseOracleSettings,
    PlaneWaveOracle,
    atoms_spec,
    kpoint_mesh,
    niggli_reduce,
)
from oracle.base import OracleUnavailable, UnsupportedStructure, register
from oracle.gpaw_dft import DEFAULT_MAGMOMS, MAGNETIC_ELEMENTS

_ISMEAR = {"fermi-dirac": -1, "gaussian": 0, "methfessel-paxton": 1}


class VaspSettings(AseOracleSettings):
    """VASP settings.

    Attributes:
        command: The VASP command (e.g. ``vasp_std`` or ``mpiexec -n 4 vasp_std``).
        pp_path: Folder holding ``potpaw_PBE`` etc.; default ``$VASP_PP_PATH``.
        potpaw: Sub-folder of ``pp_path`` with the POTCARs for ``xc``.
        setups: ASE's POTCAR choice per element ("minimal", "recommended", "materialsproject", "gw").
        xc: Exchange-correlation functional.
        cutoff: ENCUT, eV.
        kpoint_density: Γ-centred Monkhorst-Pack density, Å⁻¹.
        smearing: Smearing scheme (ISMEAR).
        smearing_width: SIGMA, eV.
        spin_polarized: "auto" (on with a magnetic element present) or forced on/off.
        ediff: SCF convergence, eV.
        nelm: SCF iterations of the first attempt (attempt k uses k times as many).
        amix: Mixing of the first attempt (attempt k uses it divided by 2^(k-1)).
    """

    kind: Literal["vasp"] = "vasp"
    command: str = "vasp_std"
    pp_path: str | None = None
    potpaw: str = "potpaw_PBE"
    setups: Literal["minimal", "recommended", "materialsproject", "gw"] = "recommended"
    xc: Literal["PBE", "PBEsol", "LDA"] = "PBE"
    cutoff: float = Field(520.0, gt=0)
    kpoint_density: float = Field(2.0, gt=0)
    smearing: Literal["fermi-dirac", "gaussian", "methfessel-paxton"] = "gaussian"
    smearing_width: float = Field(0.05, gt=0)
    spin_polarized: Literal["auto"] | bool = "auto"
    ediff: float = Field(1e-6, gt=0)
    nelm: int = Field(100, ge=1)
    amix: float = Field(0.4, gt=0, le=1)

    non_physics_fields: ClassVar[frozenset[str]] = AseOracleSettings.non_physics_fields | {
        "command",
        "pp_path",
        "nelm",
        "amix",
    }


@register
class VaspOracle(PlaneWaveOracle):
    """Real DFT with VASP (PAW, licensed POTCARs supplied by the user)."""

    name = "vasp"
    calculator = "vasp"
    Settings = VaspSettings
    implemented_properties = ("energy", "forces", "stress")
    is_dft = True
    settings: VaspSettings

    def potcar_folder(self) -> Path | None:
        """``<pp_path>/<potpaw>``, or None when no POTCAR path is configured."""
        root = self.settings.pp_path or os.environ.get("VASP_PP_PATH")
        return (Path(root).expanduser() / self.settings.potpaw).resolve() if root else None

    def potcars(self, elements: list[str]) -> list[Path]:
        """POTCAR file of each element, in order.

        Raises:
            UnsupportedStructure: when the POTCAR folder or an element's POTCAR is missing.
        """
        from ase.calculators.vasp.create_input import get_pp_setup

        folder = self.potcar_folder()
        if folder is None or not folder.is_dir():
            raise UnsupportedStructure(
                "vasp needs POTCARs: set pp_path or VASP_PP_PATH to the folder with potpaw_PBE"
            )
        suffixes, _ = get_pp_setup(self.settings.setups)
        paths = [folder / f"{el}{suffixes.get(el, '')}" / "POTCAR" for el in elements]
        missing = [el for el, p in zip(elements, paths, strict=True) if not p.is_file()]
        if missing:
            raise UnsupportedStructure(f"vasp has no POTCAR for {', '.join(missing)} in {folder}")
        return paths

    def check(self, structure: Structure) -> None:
        """Raise `UnsupportedStructure` when a POTCAR is missing (the executable is checked at run time)."""
        super().check(structure)
        self.potcars(sorted({el.symbol for el in structure.composition.elements}))

    def preflight(self) -> None:
        exe = self.settings.command.split()[-1]
        if shutil.which(exe) is None:
            raise OracleUnavailable(f"{exe} not found on PATH", fix="install VASP or set command")

    def initial_magmoms(self, structure: Structure) -> list[float] | None:
        symbols = [site.specie.symbol for site in structure]
        spin = self.settings.spin_polarized
        if spin == "auto":
            spin = bool(set(symbols) & MAGNETIC_ELEMENTS)
        return [DEFAULT_MAGMOMS.get(s, 0.0) for s in symbols] if spin else None

    def calculator_job(self, structure: Structure, *, attempt: int, directory: Path) -> dict[str, Any]:
        s = self.settings
        folder = self.potcar_folder()
        return {
            "command": s.command,
            # An absolute folder makes ASE ignore VASP_PP_PATH, so the child needs no environment.
            "pp": str(folder) if folder is not None else s.potpaw,
            "setups": s.setups,
            "xc": s.xc,
            "encut": s.cutoff,
            "prec": "Accurate",
            "lreal": False,
            "kpts": kpoint_mesh(structure, s.kpoint_density),
            "gamma": True,
            "ismear": _ISMEAR[s.smearing],
            "sigma": s.smearing_width,
            "ispin": 2 if self.initial_magmoms(structure) is not None else 1,
            "ediff": s.ediff,
            "nelm": s.nelm * attempt,
            "amix": s.amix / (2 ** (attempt - 1)),
            "ibrion": -1,
            "nsw": 0,
            "isif": 2,
            "lwave": False,
            "lcharg": False,
        }

    def write_input(self, structure: Structure, *, directory: Path) -> list[Path]:
        """Write INCAR, KPOINTS, POSCAR and POTCAR of the first attempt into `directory`, without running VASP.

        Returns:
            The written files. POSCAR holds the Niggli-reduced cell with atoms grouped by element as VASP
            requires; ``ase-sort.dat`` maps them back to the input order (ASE does this when reading results).
        """
        from oracle.calc_worker import BUILDERS, atoms_from_spec

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.check(structure)
        reduced = niggli_reduce(structure)
        atoms = atoms_from_spec(atoms_spec(reduced, self.initial_magmoms(reduced)))
        calc = BUILDERS["vasp"](self.calculator_job(reduced, attempt=1, directory=directory), directory)
        calc.write_input(atoms)
        return [directory / name for name in ("INCAR", "KPOINTS", "POSCAR", "POTCAR")]
