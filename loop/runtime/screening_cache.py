"""What a round's screening tiers have computed so far, kept on disk so that a stop or kill mid-tier redoes at most
one block.

A screening stage is committed to the store in one transaction when it ends (`loop.campaign.run_stage`); at 10⁴
candidates it runs for an hour or more. While it runs, each finished block of a tier is appended to
`<workdir>/screening/round_NNN/<tier>.jsonl`, one JSON line per candidate, tagged with the emulator and settings
that computed it. A resumed stage takes the lines whose tag matches and computes the rest. A line torn by a kill
is skipped. The folder is removed once the stage is committed: the store then holds every result.

Units: as the tier's results (eV/atom, eV/Å).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BLOCK = 256  # candidates per appended block: at most this many are computed again after a kill


def cache_dir(workdir: Path, rnd: int) -> Path:
    """Where round `rnd` keeps its tiers' partial results."""
    return Path(workdir) / "screening" / f"round_{rnd:03d}"


def tag(*parts: Any) -> str:
    """A short digest of what computed a result (emulator checkpoint and settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TierCache:
    """One tier's partial results of one round (`None` folder: no cache, everything computed in one go)."""

    def __init__(self, folder: Path | None, *, tier: str, key: str) -> None:
        self.path = None if folder is None else Path(folder) / f"{tier}.jsonl"
        self.key = key

    def load(self) -> dict[str, dict[str, Any]]:
        """Results stored under this cache's key, by candidate hash."""
        if self.path is None or not self.path.is_file():
            return {}
        out = {}
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a kill tore
            if isinstance(row, dict) and row.get("key") == self.key and "hash" in row:
                out[row["hash"]] = row["result"]
        return out

    def add(self, results: dict[str, dict[str, Any]]) -> None:
        """Append results (by candidate hash), flushed to disk."""
        if self.path is None or not results:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            json.dumps({"key": self.key, "hash": h, "result": r}, default=float) + "\n"
            for h, r in results.items()
        )
        with self.path.open("a") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())


def in_blocks(
    hashes: Sequence[str],
    compute: Callable[[list[str]], list[dict[str, Any]]],
    *,
    cache: TierCache,
    should_stop: Callable[[], bool],
    progress: Callable[[int], None],
    stop: Callable[[], Exception],
    block: int = BLOCK,
) -> dict[str, dict[str, Any]]:
    """Results of every hash: the cached ones, then `compute` block by block (each block appended to the cache).

    Raises:
        The exception `stop()` makes, between blocks, once `should_stop()` says so.
    """
    done = cache.load()
    done = {h: done[h] for h in hashes if h in done}
    progress(len(done))
    todo = [h for h in hashes if h not in done]
    for start in range(0, len(todo), block):
        if should_stop():
            raise stop()
        part = todo[start : start + block]
        rows = dict(zip(part, compute(part), strict=True))
        cache.add(rows)
        done.update(rows)
    return {h: done[h] for h in hashes}


def clear(folder: Path) -> None:
    """Remove a round's partial results (its stage is committed)."""
    shutil.rmtree(folder, ignore_errors=True)
    parent = Path(folder).parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


__all__ = ["BLOCK", "TierCache", "cache_dir", "clear", "in_blocks", "tag"]
