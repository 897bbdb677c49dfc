"""Integrity of the checkpoints a campaign saves (emulator directory, generator file), checked before they are used.

The retrain stage records a sha256 of what it saved in the campaign store: the emulator's `manifest.json` (which
itself holds the sha256 of every weight file) and the generator's checkpoint file. A checkpoint whose bytes no longer
match is torn or corrupted; the campaign then falls back to an earlier good one instead of failing mid-round.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from emulator.checkpoint import MANIFEST, sha256

CHECKPOINT_KINDS = ("emulator", "generator")
_ROUND_DIR = re.compile(r"^round_(\d{3,})$")
_DELETING = ".deleting-"

log = logging.getLogger("matloop")


def checkpoint_sha256(kind: str, path: Path) -> str:
    """The hash recorded for a checkpoint when it is saved: of the emulator's manifest, or of the generator file."""
    return sha256(Path(path) / MANIFEST if kind == "emulator" else Path(path))


def checkpoint_problem(kind: str, path: Path, expected_sha256: str | None) -> str | None:
    """Why the checkpoint at `path` cannot be trusted, in a few words; None when it verifies.

    Args:
        kind: "emulator" (a directory with a manifest) or "generator" (one file).
        expected_sha256: The hash recorded when it was saved (None for checkpoints saved before hashes were kept:
            then only the emulator's files are checked against its manifest).
    """
    path = Path(path)
    if kind == "generator":
        if not path.is_file():
            return "the file is missing"
        if expected_sha256 is not None and sha256(path) != expected_sha256:
            return "its bytes do not match the hash recorded when it was saved"
        return None
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return f"{MANIFEST} is missing"
    if expected_sha256 is not None and sha256(manifest_path) != expected_sha256:
        return f"{MANIFEST} does not match the hash recorded when it was saved"
    try:
        files = json.loads(manifest_path.read_text()).get("files")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return f"{MANIFEST} is not a valid manifest"
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no weight files"
    for name, digest in sorted(files.items()):
        if not (path / name).is_file():
            return f"{name} is missing"
        if sha256(path / name) != digest:
            return f"{name} does not match the hash in {MANIFEST}"
    return None


def prune_checkpoints(
    *, root: Path, keep_rounds: int, in_use: Iterable[str | Path | None], safe_to_delete: Iterable[int]
) -> list[int]:
    """Delete the checkpoint folders `root/round_NNN` of all but the newest `keep_rounds` rounds.

    A folder is deleted only if its round is in `safe_to_delete` (its checkpoints are copied elsewhere, e.g.
    logged to MLflow) and it holds none of the checkpoints `in_use` (paths relative to `root`'s parent, the
    workdir, or absolute). A folder is renamed before it is removed, so a kill mid-way leaves either the whole
    folder or a `.deleting-` one, which the next call removes; a failing deletion is logged, never raised.

    Returns:
        The rounds whose folders were deleted.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    for leftover in root.glob(f"{_DELETING}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    rounds = sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _ROUND_DIR.match(p.name)))
    workdir = root.parent
    protected = set()
    for path in in_use:
        if path is None:
            continue
        full = Path(path) if Path(path).is_absolute() else workdir / path
        try:
            first = full.resolve().relative_to(root.resolve()).parts[0]
        except (ValueError, IndexError):
            continue
        if m := _ROUND_DIR.match(first):
            protected.add(int(m.group(1)))
    safe = set(safe_to_delete)
    deleted = []
    for rnd in rounds[:-keep_rounds]:
        if rnd in protected or rnd not in safe:
            continue
        folder = root / f"round_{rnd:03d}"
        trash = root / f"{_DELETING}{folder.name}"
        try:
            os.replace(folder, trash)
            shutil.rmtree(trash)
        except OSError as exc:
            log.warning("could not delete the old checkpoints %s (%s); they stay on disk", folder, exc)
            continue
        deleted.append(rnd)
    return deleted


__all__ = ["CHECKPOINT_KINDS", "checkpoint_problem", "checkpoint_sha256", "prune_checkpoints"]
