"""The stages of a round, one module each, run in order by `loop.campaign`.

A stage (`loop.stages.base.Stage`) has a name, a `compute` that reads typed inputs from the campaign store and
returns a typed result, and a `commit` that writes that result into the store and returns the stage's metrics. The
campaign calls `commit` inside one transaction that also marks the stage done, so a killed process leaves the whole
stage or none of it (the label stage alone also commits each oracle result as it completes).

Round 0 builds the hull from references; every later round searches. This package's namespace holds only the order
(importing it costs nothing); the stage modules import the rooms they drive.
"""

from __future__ import annotations

ROUND0_STAGES = ("references", "label", "update", "retrain", "track")
ROUND_STAGES = ("generate", "funnel", "screen", "acquire", "label", "update", "retrain", "assess", "track")


def stages_of(rnd: int) -> tuple[str, ...]:
    """The names of the stages of round `rnd`, in the order they run."""
    return ROUND0_STAGES if rnd == 0 else ROUND_STAGES


__all__ = ["ROUND0_STAGES", "ROUND_STAGES", "stages_of"]
