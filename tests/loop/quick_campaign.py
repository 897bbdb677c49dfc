"""The smoke config cut down to seconds of work per stage, for tests of the loop's machinery (tracking, resuming,
moving, signals) rather than of its science: two reference compounds, substitution and random search only (no
diffusion model, so no generator fine-tune), short CHGNet relaxations and distillation, a budget of 3 EMT calls.
Every stage still runs through the real CLI, CHGNet, the campaign store and MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def quick_config(
    *, name: str, rounds: int, execution: dict[str, Any] | None = None, tracking: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The cut-down smoke config as a dict.

    Args:
        name: Campaign name (the MLflow experiment's name).
        rounds: `stop.max_rounds`.
        execution: The `execution` section; default inline (no Dask cluster to start).
        tracking: The `tracking` section; default the smoke config's (local MLflow in the workdir).
    """
    data = yaml.safe_load(SMOKE.read_text())
    data["name"] = name
    data["references"] = {"max_compounds": 2, "max_atoms": 8, "max_element_atoms": 1}
    data["stop"] = {"max_rounds": rounds}
    data["generator"]["mix"] = {"diffusion": 0, "substitution": 4, "random_search": 3}
    data["generator"]["funnel"]["max_atoms"] = 12
    data["emulator"].update(distill_steps=5, distill_structures=8)
    data["emulator_training"].update(relax_steps=8, relax_fmax=0.3)
    data["acquisition"]["budget"] = 3
    data["execution"] = execution or {"kind": "inline"}
    if tracking is not None:
        data["tracking"] = tracking
    return data


def write_quick_config(path: Path, *, name: str, rounds: int, **sections: Any) -> Path:
    """Write `quick_config(...)` as YAML to `path` and return `path`."""
    path.write_text(yaml.safe_dump(quick_config(name=name, rounds=rounds, **sections)))
    return path
