"""Errors that the CLI reports as one line on stderr with exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: a missing or malformed file, an invalid config, an unknown name. The message says the fix."""
