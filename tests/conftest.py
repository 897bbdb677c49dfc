"""Test tiers. `make test` runs everything; `make test-fast` runs what is not marked `slow`.

A test is slow when it is marked so, or when it took longer than `FAST_LIMIT_S` in the last full run recorded in
`tests/durations.json` (written by `make durations` from pytest's own `--durations=0` report, setup and teardown
included), so the fast tier follows the suite as it grows instead of a hand-kept list. Units: seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
FAST_LIMIT_S = 8.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not DURATIONS.exists():
        return
    seconds = json.loads(DURATIONS.read_text())["seconds"]
    for item in items:
        if seconds.get(item.nodeid, 0.0) > FAST_LIMIT_S:
            item.add_marker(pytest.mark.slow)
