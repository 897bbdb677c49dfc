"""Property conditions: parsing `KEY=VALUE` / `KEY=LO:HI`, validation and tensor encoding.

Supported properties and where their training labels come from:

* `chemical_system` ("Li-Fe-O"): the elements of each training crystal (from the structure). At sampling
  time it is also enforced exactly by masking the type logits to the allowed elements.
* `space_group` (1-230): the space-group number stored with each mp_20 crystal (from its structure).
* `band_gap` (eV): Materials Project DFT-PBE values, present for part of mp_20; missing labels train the null token.
* `e_above_hull` (eV/atom): Materials Project values, present for the same part of mp_20.
* `hhi` (0-10000): HHI production score of the composition (pymatgen's bundled table).
* `magnetic_density` (μB/Å³): ML label, Σ|m_i|/V from pretrained CHGNet 0.3.0 site magnetic moments on the
  DFT-relaxed mp_20 structure (`generator.diffusion.chgnet_labels`).
* `bulk_modulus` (GPa): ML label, clamped-ion bulk modulus from a CHGNet 0.3.0 energy-volume fit (isotropic
  ±5 % volume strains, fractional coordinates fixed, no relaxation); NaN where the fit is not sane.

Checkpoints record the conditions they were trained with (`checkpoint_conditions`); older checkpoints know
only `BASE_CONDITIONS`, and requests for a condition a checkpoint lacks raise `GeneratorError`
(`check_supported`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pymatgen.core.periodic_table import Element

from generator.base import GeneratorError

SCALAR_RANGES: dict[str, tuple[float, float]] = {
    "band_gap": (0.0, 10.0),
    "e_above_hull": (0.0, 1.0),
    "hhi": (0.0, 10000.0),
    # CHGNet labels of mp_20 train+val: median 0.0008, 99 % below 0.14, max 0.23 μB/Å³ (bcc Fe ≈ 0.19)
    "magnetic_density": (0.0, 0.3),
    # CHGNet clamped-ion labels of mp_20 train+val: median 89, 99 % below 260, max 498 GPa
    "bulk_modulus": (0.0, 500.0),
}
KNOWN = ("chemical_system", "space_group", *SCALAR_RANGES)
# what checkpoints in format matloop-diffusion/1 without a `conditions` entry were trained with
BASE_CONDITIONS = ("chemical_system", "space_group", "band_gap", "e_above_hull", "hhi")
ALIASES = {
    "chemsys": "chemical_system",
    "spacegroup": "space_group",
    "sg": "space_group",
    "hhi_score": "hhi",
    "energy_above_hull": "e_above_hull",
    "e_hull": "e_above_hull",
}
MAX_Z = 100


@dataclass(frozen=True)
class Condition:
    """One validated condition.

    Attributes:
        name: Canonical property name.
        elements: Atomic numbers for `chemical_system`.
        value: Exact target (space group number, or scalar in the property's unit).
        low: Lower bound of a target range (scalar properties).
        high: Upper bound of a target range (scalar properties).
    """

    name: str
    elements: tuple[int, ...] = ()
    value: float | None = None
    low: float | None = None
    high: float | None = None

    def target(self, u: float) -> float:
        """A target value for one sample; ranges are sampled uniformly with `u` ∈ [0,1)."""
        if self.value is not None:
            return float(self.value)
        assert self.low is not None and self.high is not None
        return self.low + u * (self.high - self.low)

    def describe(self) -> str:
        if self.name == "chemical_system":
            return "-".join(Element.from_Z(z).symbol for z in self.elements)
        if self.value is not None:
            return f"{self.value:g}"
        return f"{self.low:g}:{self.high:g}"


def parse_condition_string(text: str) -> tuple[str, str]:
    """Split a `KEY=VALUE` or `KEY=LO:HI` command-line string into (key, value)."""
    if "=" not in text:
        raise GeneratorError(f"condition {text!r} is not KEY=VALUE or KEY=LO:HI (e.g. band_gap=1.5:3.0)")
    key, value = text.split("=", 1)
    key, value = key.strip(), value.strip()
    if not key or not value:
        raise GeneratorError(f"condition {text!r} has an empty key or value; write KEY=VALUE or KEY=LO:HI")
    return key, value


def parse_conditions(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse several `KEY=VALUE` strings into a dict; a repeated key is an error."""
    out: dict[str, str] = {}
    for item in items:
        key, value = parse_condition_string(item)
        if key in out:
            raise GeneratorError(f"condition {key!r} given twice; give each property once")
        out[key] = value
    return out


def _parse_float(name: str, text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise GeneratorError(
            f"{name}: {text!r} is not a number; use a value like 1.5 or a range like 1.5:3.0"
        ) from None
    if not math.isfinite(x):
        raise GeneratorError(f"{name}: {text!r} is not a finite number")
    return x


def _parse_chemsys(value: Any) -> tuple[int, ...]:
    parts = value if isinstance(value, list | tuple) else re.split(r"[-,\s]+", str(value).strip())
    parts = [p for p in (str(x).strip() for x in parts) if p]
    if not parts:
        raise GeneratorError(
            "chemical_system is empty; write elements joined by '-', e.g. chemical_system=Li-Fe-O"
        )
    zs = []
    for sym in parts:
        if not Element.is_valid_symbol(sym):
            raise GeneratorError(
                f"chemical_system: unknown element {sym!r}; use element symbols such as Li-Fe-O"
            )
        z = Element(sym).Z
        if z > MAX_Z:
            raise GeneratorError(f"chemical_system: element {sym} (Z={z}) is beyond Z={MAX_Z}")
        zs.append(z)
    if len(set(zs)) != len(zs):
        raise GeneratorError(f"chemical_system {value!r} repeats an element")
    return tuple(sorted(zs))


def validate_condition(key: str, value: Any) -> Condition:
    """Validate one condition; `value` may be a string ("1.5", "1.5:3.0", "Li-O"), a number or a (lo, hi) pair."""
    name = ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
    if name not in KNOWN:
        raise GeneratorError(f"unknown property {key!r}; use one of: {', '.join(KNOWN)}")
    if name == "chemical_system":
        return Condition(name=name, elements=_parse_chemsys(value))
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise GeneratorError(f"{name}: a range needs exactly two numbers (low, high)")
        text = f"{value[0]}:{value[1]}"
    else:
        text = str(value).strip()
    if name == "space_group":
        try:
            sg = int(float(text))
        except ValueError:
            raise GeneratorError(f"space_group: {text!r} is not a space-group number (1-230)") from None
        if str(sg) != text.split(".")[0] or not 1 <= sg <= 230:
            raise GeneratorError(f"space_group: {text!r} is not a space-group number (1-230)")
        return Condition(name=name, value=float(sg))
    lo_ok, hi_ok = SCALAR_RANGES[name]
    if ":" in text:
        lo_s, hi_s = text.split(":", 1)
        lo, hi = _parse_float(name, lo_s), _parse_float(name, hi_s)
        if lo > hi:
            raise GeneratorError(f"{name}: range {text!r} has low > high; write LO:HI with LO ≤ HI")
        if hi < lo_ok or lo > hi_ok:
            raise GeneratorError(
                f"{name}: range {text!r} is impossible; values lie within {lo_ok:g}:{hi_ok:g}"
            )
        return Condition(name=name, low=max(lo, lo_ok), high=min(hi, hi_ok))
    x = _parse_float(name, text)
    if not lo_ok <= x <= hi_ok:
        raise GeneratorError(f"{name}: {x:g} is impossible; values lie within {lo_ok:g}:{hi_ok:g}")
    return Condition(name=name, value=x)


def validate_conditions(conditions: dict[str, Any] | None) -> dict[str, Condition]:
    """Validate a {property: value} mapping; returns {canonical name: Condition}."""
    out: dict[str, Condition] = {}
    for key, value in (conditions or {}).items():
        cond = validate_condition(key, value)
        if cond.name in out:
            raise GeneratorError(f"condition {cond.name!r} given twice; give each property once")
        out[cond.name] = cond
    return out


def checkpoint_conditions(payload: dict[str, Any]) -> tuple[str, ...]:
    """Conditions a checkpoint payload was trained with (`BASE_CONDITIONS` for checkpoints that predate the list)."""
    return tuple(payload.get("conditions", BASE_CONDITIONS))


def check_supported(conditions: Iterable[str], supported: Sequence[str]) -> None:
    """Raise `GeneratorError` if a request uses a condition a model was not trained with.

    Args:
        conditions: Requested condition names (e.g. the keys of `validate_conditions`' result).
        supported: The model's conditions (`checkpoint_conditions(payload)`, or a denoiser's `conditions`).
    """
    missing = [name for name in conditions if name not in supported]
    if missing:
        raise GeneratorError(
            f"{', '.join(missing)} conditioning is not available: this diffusion checkpoint was not trained with "
            f"{' or '.join(missing)} labels; it supports: {', '.join(supported)}"
        )


def encode_batch(
    conditions: dict[str, Condition], batch_size: int, *, generator: torch.Generator | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Encode validated conditions for `batch_size` samples as {name: (values, present_mask)}.

    Ranges draw one target per sample uniformly inside the range.
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    present = torch.ones(batch_size, dtype=torch.bool)
    for name, cond in conditions.items():
        if name == "chemical_system":
            v = torch.zeros(batch_size, MAX_Z + 1)
            v[:, list(cond.elements)] = 1.0
        elif name == "space_group":
            v = torch.full((batch_size,), int(cond.value or 0), dtype=torch.long)
        else:
            u = torch.rand(batch_size, generator=generator)
            v = torch.tensor([cond.target(float(x)) for x in u], dtype=torch.float32)
        out[name] = (v, present)
    return out
