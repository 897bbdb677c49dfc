"""Write tests/durations.json from a pytest log run with `--durations=0` (setup, call and teardown summed per test).

    python scripts/test_durations.py LOG [--out tests/durations.json]

Units: seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*([0-9.]+)s\s+(setup|call|teardown)\s+(\S.*\S)\s*$")


def parse(text: str) -> dict[str, float]:
    """Seconds per test node id from pytest's durations report."""
    out: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out[m.group(3)] += float(m.group(1))
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", type=Path)
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "durations.json"
    )
    args = p.parse_args(argv)
    seconds = parse(args.log.read_text())
    if not seconds:
        raise SystemExit(f"test_durations: no durations in {args.log}; run pytest with --durations=0")
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "total_s": round(sum(seconds.values()), 1),
        "seconds": {k: round(v, 2) for k, v in sorted(seconds.items())},
    }
    args.out.write_text(json.dumps(data, indent=0) + "\n")
    print(f"{len(seconds)} tests, {data['total_s']} s in all -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
