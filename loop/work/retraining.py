"""Retrain: fine-tune the emulator on all oracle labels and the generator on the campaign's discoveries.

Units: energies eV, forces eV/Å, stress GPa, times s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from emulator.graphs import graph_problem
from generator.base import get_generator_class
from generator.seeds import seed_table
from loop.config import CampaignConfig
from loop.runtime.progress import seconds
from loop.runtime.tasks import fine_tune_emulator, fine_tune_generator
from loop.store import CampaignStore
from loop.views.oracle_hull import discoveries
from loop.work.generation import sample_breadth

log = logging.getLogger("matloop")


def training_labels(config: CampaignConfig, store: CampaignStore, *, frames: int = 0) -> list[dict[str, Any]]:
    """The emulator's training data: every successful oracle label of this campaign's oracle settings.

    Each label pairs the oracle's energy, forces and stress with the structure they belong to: the oracle's final
    (relaxed) structure, never the queried input. Labels whose final structure duplicates an earlier one's are
    kept (a second, independent sample of the same minimum costs nothing and weighs it as observed). A label or
    frame whose structure the emulator cannot graph (`emulator.graphs`) is left out, with a line in the log.

    Args:
        config: The campaign config (its oracle settings select the labels).
        store: The campaign store.
        frames: Also add up to this many intermediate relaxation frames per label (evenly spaced, the input
            geometry first, the final frame excluded as it is the label itself); 0 = final structures only.

    Returns:
        Dicts with `structure` (pymatgen), `energy` eV, `forces` eV/Å, `stress` GPa, `hash` (the labelled
        structure, so callers can select e.g. this round's labels) and `kind` ("final" or "frame"), in the
        store's canonical order (round, hash), frames after their label.
    """
    settings_hash = config.oracle.settings_hash()
    results = store.oracle_results(settings_hash=settings_hash, ok_only=True)
    structures = store.get_structures([r.structure_hash for r in results])
    data: list[dict[str, Any]] = []
    for r in results:
        # Labels stored before the label stage refused such results (or by another oracle path) may still hold
        # a structure the emulator cannot graph: training on them would fail, so they are left out and said so.
        if (problem := graph_problem(structures[r.structure_hash])) is not None:
            log.warning("label %s is left out of the emulator's training: %s", r.hash, problem)
            continue
        data.append(
            {
                "structure": structures[r.structure_hash],
                "energy": r.energy,
                "forces": r.forces,
                "stress": r.stress,
                "hash": r.hash,
                "kind": "final",
            }
        )
        if frames <= 0:
            continue
        steps = store.oracle_frames(r.hash, settings_hash)[:-1]
        if not steps:
            continue
        picks = sorted({round(i) for i in np.linspace(0, len(steps) - 1, min(frames, len(steps)))})
        data.extend(
            {
                "structure": steps[i].structure,
                "energy": steps[i].energy,
                "forces": steps[i].forces,
                "stress": steps[i].stress,
                "hash": r.hash,
                "kind": "frame",
            }
            for i in picks
            if graph_problem(steps[i].structure) is None
        )
    return data


def withheld_training_ids(config: CampaignConfig) -> list[str]:
    """Material ids of the generator's original training crystals (mp_20 train) that the campaign withholds."""
    if not config.withholding:
        return []
    table = seed_table(splits=["mp_20/train"])
    return sorted(table["material_id"][config.withholding.mask(table)])


def retrain_generator(
    config: CampaignConfig, *, store: CampaignStore, round: int, generator_in: Path | None, out_dir: Path
) -> dict[str, Any]:
    """Fine-tune the generator of the mix that `supports_fine_tune` on the campaign's discoveries (never the
    references), mixed with original training crystals minus the withheld ones. Nothing happens before round 1,
    without discoveries, or when no generator of the mix learns.

    A fine-tune that narrows the generator's proposals (`generator_breadth_check`) is not deployed: its file is
    deleted and the report says why.

    Returns:
        Metrics, the breadth check, and `generator_checkpoint` when a new checkpoint was written and deployed.
    """
    gen_cfg = config.generator
    found = discoveries(config, store) if round > 0 else []
    learners = [
        name for name, n in gen_cfg.mix.items() if n > 0 and get_generator_class(name).supports_fine_tune
    ]
    if not (learners and gen_cfg.fine_tune_weight > 0 and found):
        return {"generator_n_discoveries": len(found)}
    started = time.time()
    gen_path, gen_metrics = fine_tune_generator(
        [k.structure for k in found],
        settings=gen_cfg.settings_for(learners[0]),
        checkpoint_in=generator_in,
        out_path=out_dir / "generator.pt",
        weight=gen_cfg.fine_tune_weight,
        steps=gen_cfg.fine_tune_steps,
        max_minutes=gen_cfg.fine_tune_max_minutes,
        seed=config.seed + round,
        exclude_ids=withheld_training_ids(config),
    )
    report: dict[str, Any] = {
        "generator_checkpoint": str(gen_path),
        "generator_fine_tune_s": seconds(time.time() - started),
        "generator_n_discoveries": len(found),
    }
    report.update({f"generator_{k}": v for k, v in gen_metrics.items() if isinstance(v, int | float)})
    if gen_cfg.fine_tune_check_samples > 0:
        report.update(
            generator_breadth_check(config, store=store, round=round, before=generator_in, after=gen_path)
        )
    else:
        report.update(generator_deployed=True, generator_reason="not checked (fine_tune_check_samples: 0)")
    if not report["generator_deployed"]:
        del report["generator_checkpoint"]  # the campaign keeps sampling from the checkpoint it had
        gen_path.unlink(missing_ok=True)
    return report


def generator_breadth_check(
    config: CampaignConfig, *, store: CampaignStore, round: int, before: Path | None, after: Path
) -> dict[str, Any]:
    """Whether a generator fine-tune may be deployed: not when it narrows what the generator proposes.

    Both checkpoints answer the next round's requests (`loop.work.generation.sample_breadth`: its compositions,
    and the target systems alone; same conditions and seed); the fine-tune is deployed unless it gives fewer
    distinct formulas or fewer distinct prototypes on either. Returns the counts (`generator_<request>_<what>_
    <before|after>`), `generator_deployed` and `generator_reason`.
    """
    name = next(
        n for n, k in config.generator.mix.items() if k > 0 and get_generator_class(n).supports_fine_tune
    )
    old = sample_breadth(config, store=store, round=round + 1, name=name, checkpoint=before)
    new = sample_breadth(config, store=store, round=round + 1, name=name, checkpoint=after)
    narrower = [kind for kind in old if new[kind].narrower_than(old[kind])]
    report: dict[str, Any] = {}
    for kind in old:
        for label, b in (("before", old[kind]), ("after", new[kind])):
            report[f"generator_{kind}_formulas_{label}"] = b.formulas
            report[f"generator_{kind}_prototypes_{label}"] = b.prototypes
    report["generator_deployed"] = not narrower
    report["generator_reason"] = "; ".join(
        f"{kind}: {new[kind].formulas} formulas and {new[kind].prototypes} prototypes after fine-tuning, "
        f"{old[kind].formulas} and {old[kind].prototypes} before"
        + (" (narrower)" if kind in narrower else "")
        for kind in old
    )
    return report


def retrain(
    config: CampaignConfig,
    *,
    store: CampaignStore,
    round: int,
    emulator_in: Path | None,
    generator_in: Path | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Fine-tune the emulator on all oracle data and the generator on the stable and near-stable discoveries.

    Returns:
        Metrics and the new checkpoint paths (`emulator_checkpoint`, `generator_checkpoint`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = training_labels(config, store)
    train = config.emulator_training
    report: dict[str, Any] = {"n_training_labels": len(data)}
    started = time.time()
    # Held-out validation needs no list of "new" labels: the previous checkpoint knows what it trained on.
    emu_path, emu_metrics = fine_tune_emulator(
        data,
        settings=config.emulator,
        checkpoint_in=emulator_in,
        out_dir=out_dir / "emulator",
        epochs=train.fine_tune_epochs,
        max_minutes=train.fine_tune_max_minutes,
        round=round,
    )
    report["emulator_checkpoint"] = str(emu_path)
    report["emulator_fine_tune_s"] = seconds(time.time() - started)
    report["emulator_deployed"] = emu_metrics.pop("deployed")
    report["emulator_reason"] = emu_metrics.pop("reason")
    report.update({f"emulator_{k}": v for k, v in emu_metrics.items() if isinstance(v, int | float)})
    report.update(
        retrain_generator(config, store=store, round=round, generator_in=generator_in, out_dir=out_dir)
    )
    return report
