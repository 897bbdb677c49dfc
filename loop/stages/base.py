"""What every stage is: a name, a compute half and a commit half, over one context per round.

Units: times s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from loop.config import CampaignConfig
from loop.store import CampaignStore

R = TypeVar("R")


@dataclass(frozen=True)
class StageContext:
    """What a stage of one round may use.

    Attributes:
        config: The campaign config.
        store: The campaign store (the only source of truth: stages read their inputs from it).
        workdir: The campaign's workdir (oracle work dirs, checkpoints, MLflow store).
        round: The round.
        executor: The campaign's executor (`loop.runtime.execution`), None to run in this process.
        should_stop: Whether a stop was requested (a stage that commits as it goes checks it between commits).
    """

    config: CampaignConfig
    store: CampaignStore
    workdir: Path
    round: int
    executor: Any = None
    should_stop: Callable[[], bool] = lambda: False

    def checkpoint(self, kind: str) -> Path | None:
        """The campaign's current checkpoint of `kind` ("emulator" or "generator"); None: the shipped one."""
        value = self.store.get_meta(f"{kind}_checkpoint")
        return None if value is None else self.workdir / value

    def checkpoint_dir(self) -> Path:
        """Where this round's retrained checkpoints go."""
        return checkpoint_dir(self.workdir, self.round)


def checkpoint_dir(workdir: Path, rnd: int) -> Path:
    """Where the checkpoints retrained in round `rnd` go."""
    return Path(workdir) / "checkpoints" / f"round_{rnd:03d}"


class Stage(Protocol[R]):
    """One stage of a round.

    `compute` reads its inputs from the store and does the work (it may take hours and must not mark anything
    done); `commit` writes the result and returns the stage's metrics (plain numbers and counts, JSON-ready). The
    campaign calls `commit` inside the transaction that marks the stage done.
    """

    name: str

    def compute(self, ctx: StageContext) -> R: ...

    def commit(self, ctx: StageContext, result: R) -> dict[str, Any]: ...


__all__ = ["Stage", "StageContext", "checkpoint_dir"]
