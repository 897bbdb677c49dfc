"""Typed errors the CLI reports as one line on stderr: bad input (exit code 2) and a halted campaign (exit code 3)."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: a missing or malformed file, an invalid config, an unknown name. The message says the fix."""


class CampaignHalted(Exception):
    """The campaign stopped cleanly because it cannot go on until the named fix is made; rerun to resume.

    Everything committed before it stopped is kept; the stage in progress is not recorded and is redone.
    """


class DiskFull(CampaignHalted):
    """A write failed for lack of space (or over a file-size quota); the file being replaced was kept."""


class CheckpointCorrupt(CampaignHalted):
    """A checkpoint does not match the hashes recorded when it was saved, and no earlier good one can stand in."""
