"""`benchmarks.regenerate_round` generates a round again from a copy of a campaign's store, leaving it untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loop.config import validate_config
from loop.store import CampaignStore
from tests.loop.cu_au_store import seeded_store

ROOT = Path(__file__).resolve().parents[2]


def regenerate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.regenerate_round", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_round_one_of_a_cu_au_store_is_generated_from_a_copy(tmp_path: Path) -> None:
    cfg = validate_config(
        {
            "name": "regen",
            "chemical_systems": ["Cu-Au"],
            "oracle": {"kind": "emt"},
            "generator": {"mix": {"diffusion": 0, "substitution": 4, "random_search": 3}},
        }
    )
    seeded_store(tmp_path, cfg).close()
    proc = regenerate("--workdir", str(tmp_path), "--round", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["round"] == 1 and line["unmade"] == 0
    assert line["asked"] == {"substitution": 4, "random_search": 3 + 4 - line["made"].get("substitution", 0)}
    assert sum(line["made"].values()) == 7
    assert line["distinct_formulas"] >= 2
    store = CampaignStore.in_workdir(tmp_path)
    assert store.generated(1) == [] and not list(tmp_path.glob("*.tmp"))
    store.close()


def test_a_folder_without_a_store_is_one_line(tmp_path: Path) -> None:
    proc = regenerate("--workdir", str(tmp_path), "--round", "1")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: need a campaign folder holding matloop.db and a round >= 1"
    ]
