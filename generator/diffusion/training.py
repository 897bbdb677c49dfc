"""Training, resuming, fine-tuning and exporting the diffusion model.

Run in the background on mp_20, e.g.::

    python -m generator.diffusion.training --work-dir runs/diffusion --max-minutes 60 \
        --export generator/checkpoints/diffusion_mp20.pt

The work directory holds `state.pt` (model, EMA weights, optimizer, scheduler, step, RNG states) and
`train_log.jsonl` (one JSON line per logged step). Running the same command again resumes.

`--init-from CHECKPOINT` starts a new work directory from a sampling checkpoint (MatterGen-style fine-tuning):
its weights are copied, and embeddings of conditions the parent was not trained with are added with their
output layer and null vector at zero, so the fine-tuned model starts out exactly as the parent.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from pymatgen.core import Structure

from generator.diffusion.conditions import BASE_CONDITIONS, KNOWN, MAX_Z, checkpoint_conditions
from generator.diffusion.data import CrystalTensors, from_structures, load_mp20, mean_density, read_mp20_frame
from generator.diffusion.denoiser import Denoiser
from generator.diffusion.noise import make_noise_processes

CHECKPOINT_FORMAT = "matloop-diffusion/1"


class TrainConfig(BaseModel):
    """Training settings (bounded by `max_steps` and `max_minutes`, whichever comes first)."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = 128
    layers: int = 4
    n_freq: int = 8
    sigma_l: float = 0.3
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 200
    max_steps: int = 20000
    max_minutes: float = 60.0
    p_keep_condition: float = 0.35
    ema_decay: float = 0.999
    log_every: int = 50
    val_every: int = 500
    save_every: int = 200
    seed: int = 0
    train_limit: int | None = None
    # None = all known conditions; checkpoints written before this field existed used BASE_CONDITIONS
    conditions: list[str] | None = None


def num_atoms_histogram(data: CrystalTensors) -> list[float]:
    counts = torch.bincount(data.num_atoms, minlength=21).double()
    return (counts / counts.sum()).tolist()


def make_stats(data: CrystalTensors) -> dict[str, Any]:
    """Normalisation and sampling statistics stored with a checkpoint."""
    allowed = torch.unique(data.z).tolist()
    return {
        "density": mean_density(data),
        "num_atoms_hist": num_atoms_histogram(data),
        "allowed_z": [int(z) for z in allowed],
        "n_train": len(data),
    }


def chemsys_multi_hot(z: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
    batch = torch.repeat_interleave(torch.arange(num_atoms.shape[0]), num_atoms)
    out = torch.zeros(num_atoms.shape[0], MAX_Z + 1)
    out[batch, z] = 1.0
    return out


def training_conditions(
    batch: CrystalTensors, *, p_keep: float, generator: torch.Generator
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Labels of a batch, each kept with probability `p_keep` where it exists (otherwise the null token)."""
    b = len(batch)

    def keep(avail: torch.Tensor) -> torch.Tensor:
        return avail & (torch.rand(b, generator=generator) < p_keep)

    return {
        "chemical_system": (
            chemsys_multi_hot(batch.z, batch.num_atoms),
            keep(torch.ones(b, dtype=torch.bool)),
        ),
        "space_group": (batch.spacegroup, keep(batch.spacegroup > 0)),
        "band_gap": (batch.band_gap, keep(~batch.band_gap.isnan())),
        "e_above_hull": (batch.e_above_hull, keep(~batch.e_above_hull.isnan())),
        "hhi": (batch.hhi, keep(~batch.hhi.isnan())),
        "magnetic_density": (batch.magnetic_density, keep(~batch.magnetic_density.isnan())),
        "bulk_modulus": (batch.bulk_modulus, keep(~batch.bulk_modulus.isnan())),
    }


def diffusion_loss(
    model: Denoiser,
    noise: dict[str, Any],
    batch: CrystalTensors,
    *,
    generator: torch.Generator,
    p_keep: float,
    t: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-field denoising losses for a batch (types: cross-entropy; coordinates, lattice: MSE)."""
    b = len(batch)
    n = batch.num_atoms
    if t is None:
        t = torch.rand(b, generator=generator) * (1 - 1e-3) + 1e-3
    t_atom = torch.repeat_interleave(t, n)
    # random translations: the crystal does not depend on the origin
    shift = torch.repeat_interleave(torch.rand(b, 3, generator=generator), n, dim=0)
    x0 = torch.remainder(batch.frac + shift, 1.0)
    zt, mask = noise["types"].forward(batch.z, t_atom, generator=generator)
    sigma_atom = noise["coords"].sigma(t_atom, torch.repeat_interleave(n, n))[:, None]
    xt, coord_target = noise["coords"].forward(x0, sigma_atom, generator=generator)
    lat = noise["lattice"]
    y0 = lat.encode(batch.lattice, n)
    yt, eps = lat.forward(y0, t, generator=generator)
    logits, coord_out, eps_hat = model(
        tokens=zt,
        frac=xt,
        lattice_y=yt,
        lattice=lat.decode(yt, n),
        num_atoms=n,
        t=t,
        conditions=_model_conditions(model, training_conditions(batch, p_keep=p_keep, generator=generator)),
    )
    type_loss = F.cross_entropy(logits[mask], batch.z[mask]) if mask.any() else logits.sum() * 0.0
    coord_loss = F.mse_loss(coord_out, coord_target)
    lat_loss = F.mse_loss(eps_hat, eps)
    return {
        "types": type_loss,
        "coords": coord_loss,
        "lattice": lat_loss,
        "total": type_loss + coord_loss + lat_loss,
    }


def _model_conditions(
    model: Denoiser, conditions: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    # the random draws above happen for every property, so the RNG stream does not depend on the model's list
    return {k: v for k, v in conditions.items() if k in model.conditions}


def build_model(config: TrainConfig) -> Denoiser:
    return Denoiser(
        hidden=config.hidden, layers=config.layers, n_freq=config.n_freq, conditions=config.conditions
    )


def init_from_parent(model: Denoiser, parent: Denoiser) -> list[str]:
    """Copy a parent's weights into `model`, which may have conditions the parent lacks.

    New conditions get a zero null vector and a zero output layer in their embedding, so a present label
    initially contributes exactly what an absent one does and the model starts as the parent.

    Returns:
        The names of the added conditions.
    """
    if model.hparams != parent.hparams:
        raise ValueError(f"architecture mismatch: {model.hparams} vs parent {parent.hparams}")
    lost = [c for c in parent.conditions if c not in model.conditions]
    if lost:
        raise ValueError(f"the parent is conditioned on {lost}, which the new model drops")
    added = [c for c in model.conditions if c not in parent.conditions]
    result = model.load_state_dict(parent.state_dict(), strict=False)
    allowed = {f"cond.scalars.{c}." for c in added} | {f"cond.null.{c}" for c in added}
    stray = [k for k in result.missing_keys if not any(k == a or k.startswith(a) for a in allowed)]
    if stray or result.unexpected_keys:
        raise ValueError(f"parent weights do not fit: missing {stray}, unexpected {result.unexpected_keys}")
    with torch.no_grad():
        for c in added:
            model.cond.null[c].zero_()
            if c in model.cond.scalars:
                last = model.cond.scalars[c][-1]
                last.weight.zero_()
                last.bias.zero_()
    return added


def export_checkpoint(
    path: Path, *, model: Denoiser, config: TrainConfig, stats: dict[str, Any], metrics: dict[str, float]
) -> None:
    """Write a sampling checkpoint (weights + config + stats) loadable with `torch.load(weights_only=True)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": dict(model.hparams),
        "conditions": list(model.conditions),
        "train_config": config.model_dump(),
        "stats": stats,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str) -> tuple[Denoiser, dict[str, Any]]:
    """Load a sampling checkpoint; returns (model in eval mode, payload without weights).

    Checkpoints without a `conditions` entry predate it and hold the `BASE_CONDITIONS` embeddings only; the
    model then rejects the other conditions (see `conditions.check_supported`).
    """
    payload = torch.load(Path(path), weights_only=True, map_location="cpu")
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a matloop diffusion checkpoint")
    model = Denoiser(**payload["model"], conditions=checkpoint_conditions(payload))
    model.load_state_dict(payload.pop("state_dict"))
    model.eval()
    return model, payload


@torch.no_grad()
def evaluate(
    model: Denoiser, noise: dict[str, Any], data: CrystalTensors, *, p_keep: float = 0.0
) -> dict[str, float]:
    """Mean losses over `data` at fixed times and seed (comparable across calls)."""
    gen = torch.Generator().manual_seed(1234)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    nb = 0
    for start in range(0, len(data), 128):
        idx = torch.arange(start, min(start + 128, len(data)))
        batch = data.subset(idx)
        t = torch.linspace(0.02, 0.98, len(idx))
        losses = diffusion_loss(model, noise, batch, generator=gen, p_keep=p_keep, t=t)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        nb += 1
    model.train(was_training)
    return {k: v / nb for k, v in sums.items()}


def _state_conditions(state: dict[str, Any]) -> list[str]:
    if "conditions" not in state["config"]:
        return list(BASE_CONDITIONS)  # saved before the field existed
    saved = state["config"]["conditions"]
    return list(KNOWN if saved is None else saved)


def _lr_lambda(config: TrainConfig):
    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        frac = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    return f


def train(
    *,
    config: TrainConfig,
    work_dir: Path,
    data: CrystalTensors | None = None,
    val_data: CrystalTensors | None = None,
    init_from: Path | None = None,
    stats: dict[str, Any] | None = None,
    export: Path | None = None,
    log: bool = True,
) -> dict[str, float]:
    """Train (or resume training) a denoiser; returns the final metrics.

    Args:
        config: Training settings.
        work_dir: Holds `state.pt` and `train_log.jsonl`; an existing state is resumed.
        data: Training crystals (default: bundled mp_20 train split).
        val_data: Validation crystals (default: 512 crystals of the mp_20 val split).
        init_from: Sampling checkpoint to start from (fine-tuning) when no state exists yet.
        stats: Statistics to keep (default: computed from `data`; fine-tuning keeps the parent's).
        export: Where to write the sampling checkpoint (EMA weights) at the end.
        log: Print log lines as well as writing them.
    """
    torch.set_num_threads(1)
    work_dir.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = load_mp20("train", limit=config.train_limit)
    if val_data is None:
        val_data = load_mp20("val", limit=512)
    if stats is None:
        stats = make_stats(data)
    noise = make_noise_processes(density=stats["density"], sigma_l=config.sigma_l)
    state_path = work_dir / "state.pt"
    state = torch.load(state_path, weights_only=True) if state_path.exists() else None
    if state is not None:
        # a resumed run keeps the conditions it was started with (states from before the list: the base set)
        config = config.model_copy(update={"conditions": _state_conditions(state)})
    model = build_model(config)
    if init_from is not None and not state_path.exists():
        parent, _ = load_checkpoint(init_from)
        added = init_from_parent(model, parent)
        if log and added:
            print(json.dumps({"init_from": str(init_from), "added_conditions": added}), flush=True)
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config))
    gen = torch.Generator().manual_seed(config.seed)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        stats = state["stats"]
    log_path = work_dir / "train_log.jsonl"

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "stats": stats,
                "config": config.model_dump(),
            },
            tmp,
        )
        tmp.replace(state_path)

    def write_log(entry: dict[str, Any]) -> None:
        with log_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        if log:
            print(json.dumps(entry), flush=True)

    model.train()
    t0 = time.monotonic()
    running: dict[str, float] = {}
    n_run = 0
    metrics: dict[str, float] = {}
    while step < config.max_steps and (time.monotonic() - t0) < config.max_minutes * 60:
        idx = torch.randint(len(data), (config.batch_size,), generator=gen)
        losses = diffusion_loss(model, noise, data.subset(idx), generator=gen, p_keep=config.p_keep_condition)
        opt.zero_grad()
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        # EMA warm-up: early on the average would otherwise stay near the random initialisation
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        n_run += 1
        if step % config.log_every == 0:
            metrics = {f"train_{k}": v / n_run for k, v in running.items()}
            write_log(
                {
                    "step": step,
                    "lr": sched.get_last_lr()[0],
                    "elapsed_s": round(time.monotonic() - t0, 1),
                    **metrics,
                }
            )
            running, n_run = {}, 0
        if step % config.val_every == 0:
            val = {f"val_{k}": v for k, v in evaluate(ema, noise, val_data).items()}
            write_log({"step": step, **val})
            metrics.update(val)
        if step % config.save_every == 0:
            save()
    save()
    if n_run:
        metrics.update({f"train_{k}": v / n_run for k, v in running.items()})
    val = {f"val_{k}": v for k, v in evaluate(ema, noise, val_data).items()}
    metrics.update(val)
    metrics["steps"] = float(step)
    write_log({"step": step, "final": True, **metrics})
    if export is not None:
        export_checkpoint(export, model=ema, config=config, stats=stats, metrics=metrics)
    return metrics


def evaluate_checkpoint(path: Path) -> dict[str, float]:
    """Validation losses of a sampling checkpoint: the routine of `train` (512 mp_20 val crystals, fixed times/seed)."""
    torch.set_num_threads(1)
    model, payload = load_checkpoint(path)
    noise = make_noise_processes(
        density=payload["stats"]["density"], sigma_l=payload["train_config"]["sigma_l"]
    )
    return {f"val_{k}": v for k, v in evaluate(model, noise, load_mp20("val", limit=512)).items()}


def export_from_state(work_dir: Path, path: Path, *, validate: bool = False) -> dict[str, float]:
    """Export the EMA weights of a (possibly still running) training state as a sampling checkpoint.

    With `validate`, the losses on 512 mp_20 validation crystals are computed and stored as the metrics.
    """
    state = torch.load(work_dir / "state.pt", weights_only=True)
    config = TrainConfig(**{**state["config"], "conditions": _state_conditions(state)})
    model = build_model(config)
    model.load_state_dict(state["ema"])
    metrics = {"steps": float(state["step"])}
    if validate:
        noise = make_noise_processes(density=state["stats"]["density"], sigma_l=config.sigma_l)
        metrics.update(
            {f"val_{k}": v for k, v in evaluate(model, noise, load_mp20("val", limit=512)).items()}
        )
    export_checkpoint(path, model=model, config=config, stats=state["stats"], metrics=metrics)
    return metrics


def fine_tune_checkpoint(
    *,
    checkpoint: Path,
    structures: Sequence[Structure],
    out: Path,
    work_dir: Path,
    steps: int = 200,
    max_minutes: float = 10.0,
    mix_original: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-4,
    seed: int = 0,
    exclude_ids: Collection[str] = (),
) -> dict[str, float]:
    """Continue training a sampling checkpoint on `structures` mixed with original mp_20 crystals.

    Args:
        checkpoint: Parent sampling checkpoint.
        structures: New crystals (e.g. the campaign's discoveries); labels: structure-derived only.
        out: Where to write the fine-tuned sampling checkpoint.
        work_dir: Scratch/resume directory for this fine-tuning run.
        steps: Maximum optimizer steps.
        max_minutes: Wall-clock bound.
        mix_original: Number of original mp_20 crystals mixed in (guards against forgetting).
        batch_size: Crystals per step.
        lr: Learning rate.
        seed: Random seed.
        exclude_ids: Material ids of original crystals never mixed in (e.g. a campaign's withheld crystals).

    Returns:
        Final metrics (losses on the mixed data and on mp_20 validation crystals, steps).
    """
    _, payload = load_checkpoint(checkpoint)
    base = TrainConfig(**payload["train_config"])
    config = base.model_copy(
        update={
            "max_steps": steps,
            "max_minutes": max_minutes,
            "batch_size": batch_size,
            "lr": lr,
            "warmup_steps": 1,
            "seed": seed,
            "log_every": max(1, min(50, steps)),
            "val_every": 10**9,
            "save_every": max(1, min(200, steps)),
            "ema_decay": 0.99,
            # discoveries carry structure-derived labels only: keep exactly the parent's conditions
            "conditions": list(checkpoint_conditions(payload)),
        }
    )
    parts = []
    if structures:
        parts.append(from_structures(list(structures)))
    if mix_original > 0:
        n_train = int(payload["stats"].get("n_train", 0)) or len(read_mp20_frame("train"))
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n_train, generator=gen).tolist()
        if exclude_ids:
            banned = set(exclude_ids)
            ids = read_mp20_frame("train")["material_id"].tolist()
            order = [i for i in order if i < len(ids) and ids[i] not in banned]
        parts.append(load_mp20("train", rows=order[:mix_original]))
    if not parts:
        raise ValueError("nothing to fine-tune on: no structures and mix_original=0")
    data = CrystalTensors.concat(parts)
    metrics = train(
        config=config,
        work_dir=work_dir,
        data=data,
        val_data=load_mp20("val", limit=256),
        init_from=checkpoint,
        stats=payload["stats"],
        export=out,
        log=False,
    )
    metrics["n_new_structures"] = float(len(structures))
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train the matloop diffusion generator on mp_20 (resumable)."
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="required unless --evaluate")
    parser.add_argument("--export", type=Path, default=None)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start a new work directory from this sampling checkpoint (fine-tuning; ignored when resuming)",
    )
    parser.add_argument(
        "--evaluate",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="print the validation losses of a sampling checkpoint and exit (same routine as training)",
    )
    parser.add_argument(
        "--stats-from-parent",
        action="store_true",
        help="with --init-from: keep the parent's sampling statistics (density, atom counts, elements)",
    )
    for name, field in TrainConfig.model_fields.items():
        if name == "train_limit":
            parser.add_argument("--train-limit", type=int, default=None)
            continue
        if name == "conditions":
            parser.add_argument("--conditions", nargs="+", choices=KNOWN, default=None)
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="export the saved state (EMA weights, val losses) without training",
    )
    args = vars(parser.parse_args(argv))
    work_dir, export, export_only = args.pop("work_dir"), args.pop("export"), args.pop("export_only")
    init_from, stats_from_parent = args.pop("init_from"), args.pop("stats_from_parent")
    evaluate_path = args.pop("evaluate")
    if evaluate_path is not None:
        print(json.dumps(evaluate_checkpoint(evaluate_path)))
        return
    if work_dir is None:
        parser.error("--work-dir is required")
    if export_only:
        if export is None:
            parser.error("--export-only needs --export PATH")
        print(json.dumps(export_from_state(work_dir, export, validate=True)))
        return
    config = TrainConfig(**args)
    stats = load_checkpoint(init_from)[1]["stats"] if init_from is not None and stats_from_parent else None
    train(config=config, work_dir=work_dir, export=export, init_from=init_from, stats=stats)


if __name__ == "__main__":
    main()
