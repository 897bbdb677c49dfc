"""Checkpoint files: `torch.load(weights_only=True)`-safe tensors, atomic writes, a manifest with hashes.

Layout of a checkpoint directory:
    trunk.pt        state dict of the shared CHGNet (embeddings, interaction blocks, AtomRef references)
    member_<k>.pt   state dict of member k's readout head
    manifest.json   K, chgnet version, model arguments, design, seeds, data hash, metrics, sha256 of every file

The manifest is written last, so a directory whose files do not match its manifest's hashes is a torn save and is
refused on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from emulator.base import EmulatorError

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state(path: Path, state: dict[str, torch.Tensor]) -> str:
    """Save a state dict atomically; returns its sha256."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({key: value.detach().cpu().clone() for key, value in state.items()}, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256(path)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise EmulatorError(
            f"no emulator checkpoint in {directory}: {MANIFEST} is missing (save an ensemble there first)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EmulatorError(f"corrupt emulator manifest {path}: {err.msg}; re-save the ensemble") from None


def load_state(directory: Path, name: str, expected_sha256: str) -> dict[str, torch.Tensor]:
    """Load one state dict with weights_only=True after checking its hash against the manifest."""
    path = directory / name
    if not path.is_file():
        raise EmulatorError(f"emulator checkpoint {directory} lacks {name}; re-save the ensemble")
    if sha256(path) != expected_sha256:
        raise EmulatorError(
            f"emulator checkpoint file {path} does not match its manifest (torn save?); re-save it"
        )
    return torch.load(path, map_location="cpu", weights_only=True)
