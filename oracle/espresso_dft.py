"""Quantum ESPRESSO (pw.x) oracle through ASE's Espresso calculator.

Needs ``pw.x`` and one UPF pseudopotential per element (none ship with matloop). Units: cutoff eV (written
to pw.x in Ry), smearing width eV (Ry in the input), k-point density Å⁻¹; results in eV, eV/Å, GPa.
"""

from __future__ import annotations

import os
import re
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

RYDBERG_EV = 13.605693122994


class EspressoSettings(AseOracleSettings):
    """pw.x settings.

    Attributes:
        command: The pw.x command (e.g. ``pw.x`` or ``mpiexec -n 2 pw.x``).
        pseudo_dir: Folder of UPF files; default ``$ESPRESSO_PSEUDO`` or ``~/espresso/pseudo`` (as pw.x does).
        pseudopotentials: Element -> UPF file name; elements not listed are looked up in ``pseudo_dir`` by
            name (a file ``<El>.*.upf`` or ``<el>_*.upf``, case-insensitive).
        cutoff: Wave-function cutoff, eV.
        dual: Charge-density cutoff as a multiple of ``cutoff`` (8-12 for ultrasoft/PAW, 4 for norm-conserving).
        kpoint_density: Γ-centred Monkhorst-Pack density, Å⁻¹.
        smearing: pw.x smearing scheme.
        smearing_width: Smearing width, eV.
        spin_polarized: "auto" (on with a magnetic element present) or forced on/off.
        conv_thr: SCF convergence, Ry (pw.x ``conv_thr``).
        electron_maxstep: SCF iterations of the first attempt (attempt k uses k times as many).
        mixing_beta: Mixing of the first attempt (attempt k uses it divided by 2^(k-1)).
    """

    kind: Literal["espresso"] = "espresso"
    command: str = "pw.x"
    pseudo_dir: str | None = None
    pseudopotentials: dict[str, str] = Field(default_factory=dict)
    cutoff: float = Field(600.0, gt=0)
    dual: float = Field(8.0, ge=4.0)
    kpoint_density: float = Field(2.0, gt=0)
    smearing: Literal["fermi-dirac", "gaussian", "marzari-vanderbilt", "methfessel-paxton"] = "fermi-dirac"
    smearing_width: float = Field(0.05, gt=0)
    spin_polarized: Literal["auto"] | bool = "auto"
    conv_thr: float = Field(1e-8, gt=0)
    electron_maxstep: int = Field(100, ge=1)
    mixing_beta: float = Field(0.4, gt=0, le=1)

    non_physics_fields: ClassVar[frozenset[str]] = AseOracleSettings.non_physics_fields | {
        "command",
        "pseudo_dir",
        "electron_maxstep",
        "mixing_beta",
    }


@register
class EspressoOracle(PlaneWaveOracle):
    """Real DFT with Quantum ESPRESSO's pw.x (plane waves, user-supplied UPF pseudopotentials)."""

    name = "espresso"
    calculator = "espresso"
    Settings = EspressoSettings
    implemented_properties = ("energy", "forces", "stress")
    is_dft = True
    settings: EspressoSettings

    def pseudo_dir(self) -> Path:
        """The folder pw.x will read pseudopotentials from."""
        # Absolute, because pw.x runs inside the attempt folder.
        if self.settings.pseudo_dir:
            return Path(self.settings.pseudo_dir).expanduser().resolve()
        if env := os.environ.get("ESPRESSO_PSEUDO"):
            return Path(env).resolve()
        return Path.home() / "espresso" / "pseudo"

    def pseudopotentials(self, elements: list[str]) -> dict[str, str]:
        """Element -> UPF file name for `elements`.

        Raises:
            UnsupportedStructure: when an element has no pseudopotential file.
        """
        folder = self.pseudo_dir()
        files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        chosen: dict[str, str] = {}
        missing = []
        for el in elements:
            name = self.settings.pseudopotentials.get(el)
            if name is None:
                pattern = re.compile(rf"^{el}[._-].*\.upf$", re.IGNORECASE)
                name = next((f for f in files if pattern.match(f)), None)
            if name is None or not (folder / name).is_file():
                missing.append(el)
            else:
                chosen[el] = name
        if missing:
            raise UnsupportedStructure(
                f"espresso has no pseudopotential for {', '.join(missing)} in {folder}; "
                "set pseudo_dir or pseudopotentials"
            )
        return chosen

    def check(self, structure: Structure) -> None:
        """Raise `UnsupportedStructure` when an element has no UPF file (the binary is checked at run time)."""
        super().check(structure)
        self.pseudopotentials(sorted({el.symbol for el in structure.composition.elements}))

    def preflight(self) -> None:
        if shutil.which(self.settings.command.split()[-1]) is None:
            raise OracleUnavailable(
                f"{self.settings.command.split()[-1]} not found on PATH",
                fix="install Quantum ESPRESSO or set command",
            )

    @property
    def density_cutoff_factor(self) -> float:
        return self.settings.dual

    def initial_magmoms(self, structure: Structure) -> list[float] | None:
        symbols = [site.specie.symbol for site in structure]
        spin = self.settings.spin_polarized
        if spin == "auto":
            spin = bool(set(symbols) & MAGNETIC_ELEMENTS)
        return [DEFAULT_MAGMOMS.get(s, 0.0) for s in symbols] if spin else None

    def calculator_job(self, structure: Structure, *, attempt: int, directory: Path) -> dict[str, Any]:
        s = self.settings
        ecutwfc = s.cutoff / RYDBERG_EV
        system: dict[str, Any] = {
            "ecutwfc": ecutwfc,
            "ecutrho": s.dual * ecutwfc,
            "occupations": "smearing",
            "smearing": s.smearing,
            "degauss": s.smearing_width / RYDBERG_EV,
        }
        if self.initial_magmoms(structure) is not None:
            system["nspin"] = 2
        return {
            "command": s.command,
            "pseudo_dir": str(self.pseudo_dir()),
            "pseudopotentials": self.pseudopotentials(
                sorted({el.symbol for el in structure.composition.elements})
            ),
            "input_data": {
                "control": {"calculation": "scf", "tprnfor": True, "tstress": True, "disk_io": "low"},
                "system": system,
                "electrons": {
                    "conv_thr": s.conv_thr,
                    "electron_maxstep": s.electron_maxstep * attempt,
                    "mixing_beta": s.mixing_beta / (2 ** (attempt - 1)),
                },
            },
            "kpts": kpoint_mesh(structure, s.kpoint_density),
            "koffset": [0, 0, 0],
        }

    def write_input(self, structure: Structure, *, directory: Path) -> Path:
        """Write the pw.x input of the first attempt for `structure` into `directory`, without running it.

        Returns:
            The input file (``espresso.pwi``). Positions are those of the Niggli-reduced cell, sites in input order.
        """
        from oracle.calc_worker import BUILDERS, atoms_from_spec

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.check(structure)
        reduced = niggli_reduce(structure)
        atoms = atoms_from_spec(atoms_spec(reduced, self.initial_magmoms(reduced)))
        calc = BUILDERS["espresso"](self.calculator_job(reduced, attempt=1, directory=directory), directory)
        calc.write_inputfiles(atoms, ["energy", "forces", "stress"])
        return directory / "espresso.pwi"
