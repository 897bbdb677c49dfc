"""The `design:` config section: what a target application asks of a material, and the cheap rules' one
implementation.

Every requirement judges one structure to a `RequirementResult` (pass / fail / unknown, with its value). The
composition rules (elements, cost) need nothing but the formula, so the funnel applies them to every generated
candidate by calling the same `assess` methods (`loop.science.funnel`); the density rule needs a relaxed cell and the band
gap an oracle calculation, so they are judged on labelled structures only (`loop.runtime.shortlist`). The electrochemical
window (`loop.design.electrochemistry`), the Li-ion conductivity, the phonons and the thermal stability are judged
in `loop.runtime.shortlist`, the last three by molecular dynamics or phonon calculations with the MLFF.

Units: band gap eV, conductivity mS/cm, temperatures K, durations ps, voltages V vs Li/Li+, densities g/cm³,
phonon frequencies THz, HHI on pymatgen's 0-10000 scale.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pymatgen.analysis.hhi import HHIModel
from pymatgen.core import Composition, Element, Structure

from loop.errors import InputError
from loop.validation import format_validation_error, validate_oracle_settings
from oracle.base import get_oracle_class

if TYPE_CHECKING:
    from loop.design.electrochemistry import StabilityWindow

CHEAP = ("elements", "cost", "density", "band_gap", "electrochemical_window")
"""Requirements judged from the composition, the cell, the oracle's own numbers or the hull (milliseconds)."""
EXPENSIVE = ("conductivity", "phonons", "thermal")
"""Requirements judged by MLFF molecular dynamics or phonons (minutes each), in the order they run: the thermal
stability check is the final stage of the funnel."""
REQUIREMENTS = (*CHEAP, *EXPENSIVE)
UNITS = {
    "elements": "",
    "cost": "HHI",
    "density": "g/cm3",
    "band_gap": "eV",
    "electrochemical_window": "V vs Li/Li+",
    "conductivity": "mS/cm at 300 K",
    "phonons": "THz (lowest mode)",
    "thermal": "Lindemann ratio",
}
"""The unit of each requirement's value in a shortlist row."""


class Status(StrEnum):
    """A requirement's verdict on one structure."""

    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"  # not computable here (e.g. no band gap from this oracle), not asked, or not run


@dataclass(frozen=True)
class RequirementResult:
    """One requirement's verdict on one structure.

    Attributes:
        requirement: Its name (one of `REQUIREMENTS`).
        status: pass, fail or unknown.
        value: The number judged (in `unit`), or None when unknown.
        unit: Unit of `value` ("eV", "mS/cm", "V", "g/cm3", ...; "" for none).
        detail: One line: the threshold, the method, or why it is unknown.
        data: Everything else the check returned (JSON-ready), e.g. the whole conductivity result.
    """

    requirement: str
    status: Status
    value: float | str | None = None
    unit: str = ""
    detail: str = ""
    data: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequirementResult:
        return cls(**{**data, "status": Status(data["status"])})


def unknown(requirement: str, why: str) -> RequirementResult:
    """An unknown verdict with its reason."""
    return RequirementResult(requirement=requirement, status=Status.UNKNOWN, detail=why)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _element(symbol: str) -> str:
    if not isinstance(symbol, str) or not Element.is_valid_symbol(symbol):
        raise ValueError(f"unknown element {symbol!r}; use a symbol such as 'Co'")
    return symbol


class ElementRule(_Strict):
    """Which elements a material may contain.

    Attributes:
        allowed: If set, every element must be in this list.
        forbidden: Elements no material may contain (e.g. scarce, toxic or radioactive ones).
    """

    allowed: list[str] | None = None
    forbidden: list[str] = Field(default_factory=list)

    @field_validator("allowed", "forbidden")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_element(v) for v in value]

    @property
    def active(self) -> bool:
        return self.allowed is not None or bool(self.forbidden)

    def assess(self, composition: Composition) -> RequirementResult:
        elements = {el.symbol for el in composition.element_composition.elements}
        value = "-".join(sorted(elements))
        if self.allowed is not None and not elements <= set(self.allowed):
            extra = sorted(elements - set(self.allowed))
            return RequirementResult("elements", Status.FAIL, value, "", f"elements {extra} not allowed")
        if elements & set(self.forbidden):
            bad = sorted(elements & set(self.forbidden))
            return RequirementResult("elements", Status.FAIL, value, "", f"forbidden elements {bad}")
        return RequirementResult("elements", Status.PASS, value, "", "no forbidden element")


@cache
def _hhi_model() -> HHIModel:
    return HHIModel()


class CostRule(_Strict):
    """Cost and supply risk, by the Herfindahl-Hirschman index of the elements' production (pymatgen's data).

    Attributes:
        max_hhi: Ceiling on the production HHI (0-10000; > 2500 counts as a concentrated market); None: off.
    """

    max_hhi: float | None = Field(default=None, gt=0, le=10000)

    @property
    def active(self) -> bool:
        return self.max_hhi is not None

    def assess(self, composition: Composition) -> RequirementResult:
        hhi = _hhi_model().get_hhi_production(composition.element_composition)
        if hhi is None:
            return unknown("cost", "no HHI data for an element")
        hhi = float(hhi)
        if self.max_hhi is None:
            return RequirementResult("cost", Status.UNKNOWN, hhi, "HHI", "no ceiling set")
        ok = hhi <= self.max_hhi
        return RequirementResult(
            "cost",
            Status.PASS if ok else Status.FAIL,
            hhi,
            "HHI",
            f"production HHI, ceiling {self.max_hhi:g}",
        )


class DensityRule(_Strict):
    """Mass density of the relaxed cell.

    Attributes:
        min_g_cm3: Lowest accepted density, g/cm³ (None: no lower bound).
        max_g_cm3: Highest accepted density, g/cm³ (None: no upper bound; a light electrolyte keeps the cell's
            specific energy high).
    """

    min_g_cm3: float | None = Field(default=None, gt=0)
    max_g_cm3: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DensityRule:
        if self.min_g_cm3 is not None and self.max_g_cm3 is not None and self.min_g_cm3 >= self.max_g_cm3:
            raise ValueError(f"min_g_cm3 {self.min_g_cm3} must be below max_g_cm3 {self.max_g_cm3}")
        return self

    @property
    def active(self) -> bool:
        return self.min_g_cm3 is not None or self.max_g_cm3 is not None

    def assess(self, structure: Structure) -> RequirementResult:
        rho = float(structure.density)
        if not self.active:
            return RequirementResult("density", Status.UNKNOWN, rho, "g/cm3", "no bound set")
        low = self.min_g_cm3 if self.min_g_cm3 is not None else 0.0
        high = self.max_g_cm3 if self.max_g_cm3 is not None else math.inf
        status = Status.PASS if low <= rho <= high else Status.FAIL
        return RequirementResult("density", status, rho, "g/cm3", f"accepted [{low:g}, {high:g}] g/cm3")


class BandGapRequirement(_Strict):
    """An electronic insulator: the band gap of the oracle's own calculation.

    Only an oracle that declares `band_gap` among its `implemented_properties` answers it (GPAW does: the
    Kohn-Sham gap on the label's k-mesh with the oracle's functional, PBE by default). Semi-local functionals
    such as PBE underestimate gaps by roughly 30-50 %, so set `min_ev` below the gap the application needs.

    Attributes:
        min_ev: Smallest accepted Kohn-Sham band gap, eV.
    """

    min_ev: float = Field(ge=0)

    def assess(self, gap: float | None, *, functional: str | None, why_unknown: str) -> RequirementResult:
        if gap is None or not math.isfinite(gap):
            return unknown("band_gap", why_unknown)
        status = Status.PASS if gap >= self.min_ev else Status.FAIL
        method = f"{functional or 'DFT'} Kohn-Sham gap (underestimates by ~30-50 %)"
        return RequirementResult("band_gap", status, float(gap), "eV", f"{method}, min {self.min_ev:g} eV")


class WindowRequirement(_Strict):
    """Electrochemical stability against Li: the range of Li chemical potential, written as a voltage vs Li/Li+,
    over which the phase is stable on the campaign's hull (grand-potential analysis, `loop.design.electrochemistry`).

    Attributes:
        max_reduction_v: The window's lower end must lie at or below this voltage (0 = stable against Li metal).
        min_oxidation_v: The window's upper end must lie at or above this voltage (e.g. 4 for a 4 V cathode).
        min_width_v: Smallest accepted width of the window, V.
    """

    max_reduction_v: float | None = None
    min_oxidation_v: float | None = None
    min_width_v: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _something(self) -> WindowRequirement:
        if self.max_reduction_v is None and self.min_oxidation_v is None and self.min_width_v is None:
            raise ValueError("set max_reduction_v, min_oxidation_v or min_width_v (V vs Li/Li+)")
        return self

    def assess(self, window: StabilityWindow) -> RequirementResult:
        """Judge a window computed on the hull (`loop.design.electrochemistry.stability_window`)."""
        return judge_window(window, self)


def judge_window(window: StabilityWindow, rule: WindowRequirement | None) -> RequirementResult:
    """The window as a row value, judged by `rule` (None: shown, not asked)."""
    high = "inf" if math.isinf(window.oxidation_v) else f"{window.oxidation_v:.2f}"
    value = f"{window.reduction_v:.2f}-{high}"
    placed = (
        f"; {window.e_above_hull:.3f} eV/atom above the hull, placed on it" if window.e_above_hull > 0 else ""
    )
    ends = (
        f"reduced to {'+'.join(window.reduced_to) or '-'}, oxidised to {'+'.join(window.oxidised_to) or '-'}"
    )
    data = window.to_dict()
    if rule is None:
        return RequirementResult(
            "electrochemical_window", Status.UNKNOWN, value, "V", f"not asked; {ends}{placed}", data
        )
    short = []
    if rule.max_reduction_v is not None and window.reduction_v > rule.max_reduction_v:
        short.append(f"reduced below {window.reduction_v:.2f} V (needs <= {rule.max_reduction_v:g})")
    if rule.min_oxidation_v is not None and window.oxidation_v < rule.min_oxidation_v:
        short.append(f"oxidised above {window.oxidation_v:.2f} V (needs >= {rule.min_oxidation_v:g})")
    if rule.min_width_v is not None and window.width_v < rule.min_width_v:
        short.append(f"width {window.width_v:.2f} V (needs >= {rule.min_width_v:g})")
    status = Status.FAIL if short else Status.PASS
    return RequirementResult(
        "electrochemical_window", status, value, "V", "; ".join(short) or f"{ends}{placed}", data
    )


class ConductivityRequirement(_Strict):
    """Li-ion conductivity at 300 K from MLFF molecular dynamics at elevated temperatures.

    The diffusivity at each temperature comes from the Li mean-squared displacement (pymatgen-analysis-diffusion);
    with 3 or more temperatures the conductivity is extrapolated to 300 K along an Arrhenius line, with the
    uncertainty of that fit. The verdict uses the extrapolated value; a lower bound of its interval below the
    threshold still passes when the value itself is above it (the interval is in the row).

    Attributes:
        min_ms_cm: Smallest accepted conductivity at 300 K, mS/cm (0.1 is a usable solid electrolyte).
        temperatures_k: MD temperatures, K (each above 300 K so that Li hops within the run).
        duration_ps: Simulated time per temperature, ps (after the equilibration).
        equilibration_ps: Equilibration per temperature, ps (dropped).
        min_length_a: Smallest face-to-face width of the MD supercell, Å.
        specie: The mobile ion.
    """

    min_ms_cm: float = Field(gt=0)
    temperatures_k: list[float] = Field(default_factory=lambda: [600.0, 800.0, 1000.0], min_length=1)
    duration_ps: float = Field(default=10.0, gt=0)
    equilibration_ps: float = Field(default=0.5, ge=0)
    min_length_a: float = Field(default=8.0, gt=0)
    specie: str = "Li"

    @field_validator("temperatures_k")
    @classmethod
    def _hot(cls, value: list[float]) -> list[float]:
        if any(t <= 300 for t in value):
            raise ValueError(
                f"MD temperatures must be above 300 K (got {value}); 300 K is reached by Arrhenius"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"temperatures_k repeats a temperature ({value})")
        return sorted(value)

    @field_validator("specie")
    @classmethod
    def _ion(cls, value: str) -> str:
        return _element(value)


class ThermalRequirement(_Strict):
    """Thermal stability, the funnel's final stage: MLFF MD at `temperature_k` for `duration_ps`, then a quench;
    the structure must be retained (no melting or collapse of the framework).

    Attributes:
        temperature_k: MD temperature, K (e.g. the highest operating or processing temperature).
        duration_ps: Simulated time, ps (after the equilibration).
        equilibration_ps: Equilibration, ps (dropped).
        min_length_a: Smallest face-to-face width of the MD supercell, Å.
        mobile_species: Species left out of the framework's melting test (a fast Li conductor's Li sublattice
            moves like a liquid by design).
    """

    temperature_k: float = Field(default=600.0, gt=0)
    duration_ps: float = Field(default=5.0, gt=0)
    equilibration_ps: float = Field(default=0.5, ge=0)
    min_length_a: float = Field(default=8.0, gt=0)
    mobile_species: list[str] = Field(default_factory=lambda: ["Li"])

    @field_validator("mobile_species")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return [_element(v) for v in value]


class PhononRequirement(_Strict):
    """Dynamical stability: MLFF phonons (phonopy) with no imaginary mode beyond a tolerance.

    Attributes:
        tolerance_thz: Imaginary frequencies smaller than this (THz) count as numerical noise (0.1 THz lies above
            the finite-displacement noise of the MLFF on known stable crystals, `loop.design.dynamical`).
        min_length_a: Smallest face-to-face width of the force-constant supercell, Å.
    """

    tolerance_thz: float = Field(default=0.1, gt=0)
    min_length_a: float = Field(default=10.0, gt=0)


class DesignConfig(_Strict):
    """What the target application asks of a material (the `design:` section of a campaign).

    A requirement left out (null) is not asked; its column then reads "unknown" in the shortlist. The funnel
    applies `elements` and `cost` to every generated candidate; everything else is judged on the campaign's hits
    (`loop.runtime.shortlist`), cheapest first, the expensive checks only on hits that passed every cheaper one and the
    thermal check last.

    Attributes:
        elements: Allowed and forbidden elements.
        cost: Supply-risk ceiling (HHI).
        density: Accepted density of the relaxed cell, g/cm³.
        band_gap: Smallest band gap, eV (needs an oracle that computes one).
        electrochemical_window: Stability window against Li, V vs Li/Li+.
        conductivity: Smallest Li-ion conductivity at 300 K, mS/cm, and its MD settings.
        phonons: No imaginary phonon mode beyond a tolerance, THz.
        thermal: Retained after MD at a temperature, K, for a duration, ps.
        expensive: Checks run only on hits that passed every cheap requirement (the others run on every hit).
        seed: Random seed of the MD runs.
    """

    elements: ElementRule = Field(default_factory=ElementRule)
    cost: CostRule = Field(default_factory=CostRule)
    density: DensityRule = Field(default_factory=DensityRule)
    band_gap: BandGapRequirement | None = None
    electrochemical_window: WindowRequirement | None = None
    conductivity: ConductivityRequirement | None = None
    phonons: PhononRequirement | None = None
    thermal: ThermalRequirement | None = None
    expensive: list[Literal["conductivity", "phonons", "thermal"]] = Field(
        default_factory=lambda: list(EXPENSIVE)
    )
    seed: int = 0

    @property
    def asked(self) -> list[str]:
        """The requirements this design asks, in `REQUIREMENTS` order."""
        active = {
            "elements": self.elements.active,
            "cost": self.cost.active,
            "density": self.density.active,
        }
        return [r for r in REQUIREMENTS if active.get(r, getattr(self, r, None) is not None)]

    def check_settings(self, check: str) -> dict[str, Any]:
        """The settings of an expensive check as plain data (what its stored results are keyed by)."""
        section = getattr(self, check)
        if section is None:
            raise ValueError(f"design.{check} is not set")
        return {**section.model_dump(mode="json"), "seed": self.seed}

    def settings_key(self, check: str) -> str:
        """A short hash of `check_settings(check)`: a stored result is reused only under the same settings."""
        text = json.dumps(self.check_settings(check), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_oracle(self, oracle_kind: str, implemented: tuple[str, ...]) -> None:
        """Raise ValueError (one line) when a requirement needs a property the oracle does not compute."""
        if self.band_gap is not None and "band_gap" not in implemented:
            raise ValueError(
                f"band_gap needs a band gap from the oracle, and oracle {oracle_kind} computes only "
                f"{', '.join(implemented)}; remove design.band_gap or choose an oracle that computes one "
                "(gpaw)"
            )


def load_design(data: Any, *, source: str) -> tuple[DesignConfig, Any]:
    """The design section (and the oracle settings, when given) of a YAML mapping: a campaign config (its
    `design:` and `oracle:` sections) or a bare design section.

    Raises:
        InputError: not a mapping, unknown key, impossible range (one line with the key path).
    """
    if not isinstance(data, dict):
        raise InputError(f"{source}: a design file is a mapping (a `design:` section or its keys)")
    oracle = None
    if "design" in data:
        section = data.get("design") or {}
        if data.get("oracle") is not None:
            oracle = validate_oracle_settings(data["oracle"], source=source)
        prefix: tuple[str, ...] = ("design",)
    else:
        section = data
        prefix = ()
    try:
        design = DesignConfig.model_validate(section)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, source=source, prefix=prefix)) from None
    if oracle is not None:
        try:
            design.check_oracle(oracle.kind, get_oracle_class(oracle.kind).implemented_properties)
        except ValueError as exc:
            raise InputError(f"{source}: design: {exc}") from None
    return design, oracle


__all__ = [
    "CHEAP",
    "EXPENSIVE",
    "REQUIREMENTS",
    "BandGapRequirement",
    "ConductivityRequirement",
    "CostRule",
    "DensityRule",
    "DesignConfig",
    "ElementRule",
    "PhononRequirement",
    "RequirementResult",
    "Status",
    "ThermalRequirement",
    "WindowRequirement",
    "load_design",
    "unknown",
]
