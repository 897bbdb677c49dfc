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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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


def copy_mismatch(original: Path, copy: Path) -> str | None:
    """Why `copy`, a folder fetched back from where a checkpoint is kept, is not a byte-for-byte copy of it.

    Args:
        original: The checkpoint in the workdir: a folder (emulator) or a file (generator).
        copy: The folder that holds the copy: the folder's files, or the file under its own name.

    Returns:
        None when every file of `original` is in `copy` with the same sha256, else the first difference.
    """
    original, copy = Path(original), Path(copy)
    if original.is_file():
        base, files = original.parent, [original]
    else:
        base, files = original, sorted(p for p in original.rglob("*") if p.is_file())
    if not files:
        return f"{original.name} holds no files"
    for path in files:
        name = path.relative_to(base)
        other = copy / name
        if not other.is_file():
            return f"{name} is missing from the copy"
        if sha256(other) != sha256(path):
            return f"{name} differs from the copy"
    return None


@dataclass(frozen=True)
class Pruned:
    """What `prune_checkpoints` did.

    Attributes:
        deleted: Rounds whose checkpoint folders were deleted.
        kept: Rounds old enough to go that stayed, with why (no verified copy elsewhere, or the deletion failed).
    """

    deleted: list[int] = field(default_factory=list)
    kept: dict[int, str] = field(default_factory=dict)


def prune_checkpoints(
    *,
    root: Path,
    keep_rounds: int,
    in_use: Iterable[str | Path | None],
    copy_problem: Callable[[int], str | None],
) -> Pruned:
    """Delete the checkpoint folders `root/round_NNN` of all but the newest `keep_rounds` rounds.

    A folder is deleted only if it holds none of the checkpoints `in_use` (paths relative to `root`'s parent, the
    workdir, or absolute) and `copy_problem(round)` returns None: the caller has read the round's checkpoints back
    from where they are kept (MLflow) and found them identical. Any other answer is the reason the folder stays.
    `copy_problem` is asked only about rounds that would otherwise go, oldest first. A folder is renamed before it
    is removed, so a kill mid-way leaves either the whole folder or a `.deleting-` one, which the next call
    removes; a failing deletion is logged, never raised.
    """
    root = Path(root)
    pruned = Pruned()
    if not root.is_dir():
        return pruned
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
    for rnd in rounds[:-keep_rounds]:
        if rnd in protected:
            continue
        problem = copy_problem(rnd)
        if problem is not None:
            pruned.kept[rnd] = problem
            continue
        folder = root / f"round_{rnd:03d}"
        trash = root / f"{_DELETING}{folder.name}"
        try:
            os.replace(folder, trash)
            shutil.rmtree(trash)
        except OSError as exc:
            log.warning("could not delete the old checkpoints %s (%s); they stay on disk", folder, exc)
            pruned.kept[rnd] = f"the deletion failed ({exc})"
            continue
        pruned.deleted.append(rnd)
    return pruned


__all__ = [
    "CHECKPOINT_KINDS",
    "Pruned",
    "checkpoint_problem",
    "checkpoint_sha256",
    "copy_mismatch",
    "prune_checkpoints",
]
