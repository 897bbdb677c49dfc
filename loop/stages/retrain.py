"""Retrain: fine-tune the emulator on all oracle labels and the generator on the campaign's discoveries.

The stage stores what `loop.work.retraining` computes.

Units: energies eV, forces eV/Å, stress GPa, times s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loop.runtime.checkpoints import CHECKPOINT_KINDS, checkpoint_sha256
from loop.stages.base import StageContext
from loop.work.retraining import retrain


@dataclass(frozen=True)
class Retrained:
    """The retrain report: metrics, the new checkpoint paths and their sha256 (checked before they are trusted)."""

    report: dict[str, Any]


class RetrainStage:
    """Point the campaign at the new checkpoints."""

    name = "retrain"

    def compute(self, ctx: StageContext) -> Retrained:
        report = retrain(
            ctx.config,
            store=ctx.store,
            round=ctx.round,
            emulator_in=ctx.checkpoint("emulator"),
            generator_in=ctx.checkpoint("generator"),
            out_dir=ctx.checkpoint_dir(),
        )
        # The hashes the next process checks before it trusts these files (`Campaign._verify_checkpoints`).
        report["checkpoint_sha256"] = {
            kind: checkpoint_sha256(kind, Path(report[f"{kind}_checkpoint"]))
            for kind in CHECKPOINT_KINDS
            if report.get(f"{kind}_checkpoint")
        }
        # Stored relative to the workdir, which may be relative itself or moved later.
        for kind in CHECKPOINT_KINDS:
            if report.get(f"{kind}_checkpoint"):
                report[f"{kind}_checkpoint"] = os.path.relpath(report[f"{kind}_checkpoint"], ctx.workdir)
        return Retrained(report=report)

    def commit(self, ctx: StageContext, result: Retrained) -> dict[str, Any]:
        for kind in CHECKPOINT_KINDS:
            if result.report.get(f"{kind}_checkpoint"):
                ctx.store.set_meta(f"{kind}_checkpoint", result.report[f"{kind}_checkpoint"])
        return result.report


STAGE = RetrainStage()
