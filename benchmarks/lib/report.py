"""How a benchmark hands over its report: JSON on stdout, and in a file when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_json(report: Any, *, out: str | None) -> None:
    """Print `report` as indented JSON and, when `out` is given, write the same text there."""
    text = json.dumps(report, indent=1)
    if out:
        Path(out).write_text(text)
    print(text)
