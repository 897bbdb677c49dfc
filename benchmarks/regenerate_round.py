"""Re-run one round's generate stage of a finished or stopped campaign with the code of this checkout.

The campaign's store is copied to a scratch folder first (the campaign itself is not touched), and the round's
candidates are generated from what the store held before that round: spent structure types, the candidate pool
and the campaign's discoveries, with the campaign's own config. The diffusion model samples from its shipped
checkpoint, not the campaign's fine-tuned one. Prints one JSON line: what each generator was asked and made,
what no generator made, and distinct formulas and prototypes, in all and per generator.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.regenerate_round --workdir runs/c8/Ti-O/decorations-200/s0 \
        --round 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from loop.config import validate_config
from loop.store import CampaignStore
from loop.work.generation import generate_candidates, round_breadth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the campaign's folder")
    parser.add_argument("--round", type=int, required=True, help="the round to generate again (>= 1)")
    args = parser.parse_args()
    name = CampaignStore.FILENAME
    if not (args.workdir / name).is_file() or args.round < 1:
        sys.exit(f"error: need a campaign folder holding {name} and a round >= 1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        # with its write-ahead log, which holds the last transactions of a store that was not closed
        for part in args.workdir.glob(f"{name}*"):
            shutil.copy2(part, Path(tmp) / part.name)
        store = CampaignStore.in_workdir(Path(tmp))
        config = validate_config(store.get_meta("config"))
        started = time.time()
        made = generate_candidates(config, store=store, round=args.round, generator_checkpoint=None)
        store.close()
    line = {
        "workdir": args.workdir.name,
        "round": args.round,
        "asked": made.asked,
        "made": made.per_source,
        "unmade": made.unmade,
        **round_breadth(made.candidates),
        "wall_s": round(time.time() - started, 1),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
