"""What a campaign logs to MLflow, from its store: round runs, parent curves, registered models, descriptions.

The campaign store is the source of truth and MLflow a view of it, so everything logged here can be logged again
from the store: a round whose track stage met an unavailable backend is marked pending and logged by a later track
stage, by the end of the campaign, or by `matloop sync-tracking`. Logging is idempotent (one metric point per key
and step, one round run per round, one model version per round run), so re-running any of these is harmless.

The figures are `loop.views.round_science`'s, the ones `matloop status` and the science report show. Per round, the parent
run gets only the curves a scientist follows, with step = round: discoveries and oracle calls (this round and so
far), discoveries per oracle call, oracle calls per discovery, the screening error (MAE, Spearman(σ, |error|), 1σ
coverage), the model error at the oracle's geometry, discoveries so far per generator (`by_source/`), plus
`discoveries_vs_oracle_calls` with one point per oracle call (step = the call's index). Round runs carry the same
names and every stage's own report grouped apart (`stage/<stage>.<key>`, `time/<stage>_s`); their start and end are
the round's stage times, the parent's the campaign's. Oracle calls count the discovery rounds (>= 1); round 0's
reference labels are logged apart as `reference_labels`.

Units: energies eV/atom.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from loop.config import CampaignConfig
from loop.report import plots
from loop.report.science import write_report
from loop.runtime.checkpoints import CHECKPOINT_KINDS, checkpoint_problem, copy_mismatch
from loop.runtime.control import workdir_lock
from loop.runtime.shortlist import ShortlistRow, rows_csv
from loop.store import CampaignStore
from loop.tracking.runs import (
    CHAMPION,
    Tracker,
    TrackingError,
    TrackingUnavailable,
    flatten,
    flatten_numeric,
    ui_url,
)
from loop.views.round_science import (
    RoundScience,
    calls_judged_at,
    campaign_science,
    prevalence,
    random_expectation,
    round_hull,
    round_roles,
    source_yield,
)

log = logging.getLogger("matloop")

PARENT_META = "mlflow_parent_run"
LOGGED_META = "mlflow_logged_rounds"
END_META = "mlflow_end"
EXPERIMENT_META = "mlflow_experiment_id"
REPORT_LINK_META = "mlflow_report_link"
REPORT_ARTIFACT = "report"
REPORT_FILE = "science_report.html"
CURVE_PLOT = "plots/discoveries_vs_oracle_calls.png"
DISCOVERY_CURVE = "discoveries_vs_oracle_calls"  # step = oracle call index (rounds >= 1)
_NOT_METRICS = ("_s", "minutes", "steps", "epochs")
_ROUND = re.compile(r"^round_\d{3,}$")


def _round_run_meta(rnd: int) -> str:
    return f"mlflow_round_run_{rnd}"


def model_names(campaign: str) -> dict[str, str]:
    """Registered model names of a campaign's emulator ensemble and diffusion generator."""
    return {"emulator": f"{campaign}-emulator", "generator": f"{campaign}-generator"}


# -- science per round ------------------------------------------------------------------------------------------------
def round_science(store: CampaignStore, rnd: int) -> RoundScience:
    """The figures of round `rnd`, from `loop.views.round_science` (what status and the science report read too).

    Raises:
        KeyError: The store holds nothing of round `rnd`.
    """
    for science in campaign_science(store):
        if science.round == rnd:
            return science
    raise KeyError(f"round {rnd} is not in the campaign store")


def round_metrics(store: CampaignStore, rnd: int) -> dict[str, float]:
    """What each stage of one round reported, grouped apart from the science: `stage/<stage>.<key>`, and the
    stage's wall time as `time/<stage>_s`."""
    metrics: dict[str, float] = {}
    for stage in store.stages():
        if stage.round != rnd or stage.stage == "track":
            continue
        result = dict(stage.result)
        metrics[f"time/{stage.stage}_s"] = float(result.pop("wall_time_s", 0.0))
        metrics.update(flatten_numeric(result, prefix=f"stage/{stage.stage}"))
    return metrics


# -- descriptions -----------------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def round_description(config: CampaignConfig, store: CampaignStore, rnd: int) -> str:
    """Markdown summary of a round for its run's description."""
    science = round_science(store, rnd)
    rule = config.stability_rule
    e_hull = {v.hash: v.e_hull for v in store.stability(rnd)}
    formulas = {r.hash: r.reduced_formula for r in store.structure_rows(where="round = ?", params=(rnd,))}
    queried = [q.hash for q in store.round_queries(rnd)]
    if rnd == 0:
        names = sorted(formulas.get(h, h[:8]) for h in queried)
        return (
            f"**Round 0** of campaign `{config.name}`: the references, labelled by the oracle to build the hull.\n\n"
            f"- references labelled: {len(queried)} ({', '.join(names)})\n"
            f"- hull entries: {(store.stage_result(0, 'update') or {}).get('hull_entries', 'n/a')}\n"
        )
    generate = store.stage_result(rnd, "generate") or {}
    funnel = store.stage_result(rnd, "funnel") or {}
    per_source = ", ".join(f"{k} {v}" for k, v in (generate.get("per_source") or {}).items())
    sources = {c.hash: c.source for c in science.calls}
    placed = sorted((e_hull[h], h) for h in queried if h in e_hull and math.isfinite(e_hull[h]))
    if placed:
        e, h = placed[0]
        verdict = rule.classify(e).value.replace("_", "-")
        best = (
            f"{formulas.get(h, h[:8])}, E_hull {e:.3f} eV/atom ({verdict}, from {sources.get(h, 'unknown')})"
        )
        if not rule.is_hit(e):
            best = f"none this round; lowest: {best}"
    else:
        best = "none this round (no query placed on the hull)"
    return (
        f"**Round {rnd}** of campaign `{config.name}`\n\n"
        f"- generated: {generate.get('n_generated', 0)} ({per_source or 'none'})\n"
        f"- through the funnel: {funnel.get('n_passed', 0)}\n"
        f"- oracle calls: {science.oracle_calls} ({science.oracle_calls_cumulative} so far)\n"
        f"- discoveries (E_hull <= {config.near_stable:g} eV/atom on this round's hull): {science.discoveries}, "
        f"of which {science.on_hull} on the hull; {science.discoveries_cumulative} so far\n"
        f"- screening error (emulator at its relaxed geometry vs oracle, before retraining): MAE "
        f"{_fmt(science.screening_mae)} eV/atom, Spearman(σ, |error|) {_fmt(science.screening_spearman, '.2f')}"
        f" over {len(science.screening_pairs)} labels\n"
        f"- model error at the oracle's geometry (retrain check, raw single points): MAE "
        f"{_fmt(science.retrain_mae)} eV/atom\n"
        f"- best discovery: {best}\n"
    )


def _stop_rule_text(config: CampaignConfig) -> str:
    rule = config.stop
    parts = [f"{rule.max_rounds} rounds"]
    if rule.max_oracle_calls is not None:
        parts.append(f"{rule.max_oracle_calls} oracle calls")
    if rule.max_hours is not None:
        parts.append(f"{rule.max_hours:g} h")
    if rule.patience is not None:
        parts.append(f"{rule.patience} rounds without a new hit")
    return "stop at the first of: " + ", ".join(parts)


def campaign_description(
    config: CampaignConfig,
    store: CampaignStore,
    *,
    report_link: str | None,
    registered: Mapping[str, tuple[int, str | None]],
    ended: tuple[str, str] | None = None,
) -> str:
    """Markdown description of the parent run: what the campaign is, where it stands, the science report.

    Args:
        registered: The campaign's models the registry holds: name -> (versions, the `champion` version or None).
    """
    done = [r.round for r in store.rounds() if r.status == "done" and r.round > 0]
    last = round_science(store, max(done)) if done else None
    oracle = config.oracle.model_dump(mode="json")
    settings = ", ".join(
        f"{k} {v}"
        for k, v in oracle.items()
        if k != "kind" and v is not None and not isinstance(v, dict | list)
    )
    lines = [
        f"**Campaign `{config.name}`**: active-learning search for stable crystals in "
        f"{', '.join(config.chemical_systems)}.",
        "",
        f"- oracle: `{oracle.get('kind')}`" + (f" ({settings})" if settings else ""),
        f"- budget: {config.acquisition.budget} oracle calls per round, strategy `{config.acquisition.strategy}`",
        f"- screening: `{config.emulator.kind}`"
        + "".join(f" + `{member.kind}` (committee)" for member in config.committee),
        f"- stop rule: {_stop_rule_text(config)}",
        f"- a hit: E_hull <= {config.near_stable:g} eV/atom above the oracle hull",
        f"- progress: {len(done)} discovery rounds, "
        f"{last.oracle_calls_cumulative if last else 0} oracle calls "
        f"(+ {len(store.round_queries(0))} reference labels), "
        f"{last.discoveries_cumulative if last else 0} discoveries",
    ]
    if ended is not None:
        lines.append(f"- ended: {ended[0]} ({ended[1]})")
    if report_link:
        lines.append(f"- science report: [{REPORT_ARTIFACT}/{REPORT_FILE}]({report_link})")
    held = [
        f"`{name}` ({n} version{'s' if n != 1 else ''}"
        + (f", `{CHAMPION}` = version {champion}, the one in use)" if champion else ")")
        for name, (n, champion) in registered.items()
        if n
    ]
    lines.append(f"- registered models: {', '.join(held) if held else 'none yet'}")
    return "\n".join(lines) + "\n"


def _registered(tracker: Tracker, config: CampaignConfig) -> dict[str, tuple[int, str | None]]:
    """What the registry holds of the campaign's models, read back from it: name -> (versions, champion)."""
    return {
        name: (len(tracker.model_versions(name)), tracker.alias_version(name))
        for name in model_names(config.name).values()
    }


# -- the tracker of a campaign ----------------------------------------------------------------------------------------
def campaign_tracker(config: CampaignConfig, store: CampaignStore, workdir: Path) -> Tracker:
    return Tracker(
        config=config.tracking,
        workdir=workdir,
        campaign_name=config.name,
        campaign_id=f"{config.name}:{store.get_meta('started_at')}",
    )


def _open_parent(tracker: Tracker, config: CampaignConfig, store: CampaignStore) -> str:
    """Start or resume the parent run. A stored id unknown to the backend means the store was replaced or reset:
    the stored run ids are forgotten and every round is logged again."""
    stored = store.get_meta(PARENT_META)
    started = store.get_meta("started_at")
    try:
        parent = tracker.start_campaign(run_id=stored, start_time=started)
    except TrackingError:
        if stored is None:
            raise
        log.warning(
            "the MLflow store no longer holds run %s (replaced or reset): logging every round again", stored
        )
        for r in store.rounds():
            store.set_meta(_round_run_meta(r.round), None)
        store.set_meta(LOGGED_META, [])
        parent = tracker.start_campaign(run_id=None, start_time=started)
    assert parent is not None
    if parent != stored:
        store.set_meta(PARENT_META, parent)
    store.set_meta(EXPERIMENT_META, tracker.experiment_id)
    tracker.log_params(flatten(config.model_dump(mode="json")))
    tracker.log_params(_versions())
    return parent


def pending_rounds(store: CampaignStore) -> list[int]:
    """Rounds whose track stage ran but whose logging did not reach MLflow."""
    return sorted({s.round for s in store.stages() if s.stage == "track"} - set(logged_rounds(store)))


def logged_rounds(store: CampaignStore) -> list[int]:
    """Rounds whose metrics, artifacts and checkpoints reached MLflow."""
    return sorted(store.get_meta(LOGGED_META) or [])


def _log_round(
    tracker: Tracker, config: CampaignConfig, store: CampaignStore, rnd: int, workdir: Path
) -> str:
    key = _round_run_meta(rnd)
    science = round_science(store, rnd)
    run_id = tracker.start_round(round_index=rnd, run_id=store.get_meta(key), start_time=science.started_at)
    assert run_id is not None
    store.set_meta(key, run_id)

    # The round run holds the science under the same names as the parent, and every stage's own report grouped
    # apart (`stage/...`, `time/...`); the parent holds only the curated science curves.
    tracker.log_metrics({**round_metrics(store, rnd), **science.metrics()}, step=rnd, run_id=run_id)
    tracker.log_metrics(science.metrics(), step=rnd)
    # One point per oracle call: discoveries so far (on this round's hull) against the calls made so far.
    earlier = science.discoveries_cumulative - science.discoveries
    for call in science.calls:
        earlier += call.hit
        tracker.log_metric(DISCOVERY_CURVE, earlier, step=call.index)

    queried = store.get_structures([q.hash for q in store.round_queries(rnd)])
    if rnd == 0:
        tracker.log_structures(queried, artifact_path="references", run_id=run_id)
    else:
        tracker.log_structures(queried, artifact_path="queried", run_id=run_id)
        hits = {c.hash for c in science.calls if c.hit}
        tracker.log_structures(
            {h: queried[h] for h in sorted(hits)}, artifact_path="discovered", run_id=run_id
        )
    _log_shortlist(tracker, store, rnd, run_id)
    _log_plots(config, store=store, round=rnd, tracker=tracker, run_id=run_id)
    _log_models(tracker, config, store, rnd, run_id, workdir)
    tracker.set_description(round_description(config, store, rnd), run_id=run_id)
    tracker.end_run(run_id=run_id, end_time=science.finished_at)
    store.set_meta(LOGGED_META, sorted({*logged_rounds(store), rnd}))
    return run_id


def _log_shortlist(tracker: Tracker, store: CampaignStore, rnd: int, run_id: str) -> None:
    """The round's shortlist (`loop.runtime.shortlist`): every hit's row as `shortlist/shortlist.csv` and the cells of the
    hits that pass every design requirement as CIFs beside it; its counts are the assess stage's metrics."""
    rows = store.shortlist(rnd) if store.stage_done(rnd, "assess") else []
    if not rows:
        return
    with tempfile.TemporaryDirectory(prefix="matloop-shortlist-") as tmp:
        path = Path(tmp) / "shortlist.csv"
        path.write_text(rows_csv([ShortlistRow.from_dict(r) for r in rows]))
        tracker.log_artifact(path, artifact_path="shortlist", run_id=run_id)
    passing = [r for r in rows if r["status"] == "pass"]
    cells = store.get_structures(sorted({r["structure_hash"] for r in passing}))
    tracker.log_structures(
        {r["hash"]: cells[r["structure_hash"]] for r in passing if r["structure_hash"] in cells},
        artifact_path="shortlist",
        run_id=run_id,
    )


def _log_plots(
    config: CampaignConfig, *, store: CampaignStore, round: int, tracker: Tracker, run_id: str
) -> None:
    sciences = [s for s in campaign_science(store) if s.round <= round]
    science = sciences[-1]
    hull = round_hull(store, round)
    roles = round_roles(store, sciences, round)
    for system in config.chemical_systems:
        try:
            if hull is None:
                raise plots.PlotError("no oracle label yet")
            fig = plots.plot_hull_roles(
                hull,
                chemsys=system.split("-"),
                roles=roles,
                near_stable=config.near_stable,
                title=f"{system}: oracle hull after round {round}",
            )
        except plots.PlotError as exc:
            log.info("no hull plot of %s this round: %s", system, exc)
            continue
        tracker.log_figure(fig, artifact_file=f"plots/hull_{system}_round_{round:03d}.png", run_id=run_id)
    if round == 0:
        return
    if science.screening_pairs:
        pred, std, true = zip(*science.screening_pairs, strict=True)
        fig = plots.plot_parity(predicted=pred, oracle=true, predicted_std=std)
        fig.axes[0].set_title(f"screening error, round {round}: {fig.axes[0].get_title()}", fontsize=9)
        tracker.log_figure(fig, artifact_file=f"plots/parity_round_{round:03d}.png", run_id=run_id)
    per_source = source_yield(sciences, rounds=[round])
    if per_source:
        fig = plots.plot_source_yield(per_source)
        tracker.log_figure(fig, artifact_file=f"plots/yield_round_{round:03d}.png", run_id=run_id)
    calls = calls_judged_at(store, sciences, upto=round)
    if calls:
        rates = prevalence(store, near_stable=config.near_stable)
        fig = plots.plot_discovery_curve(
            hits=[c.hit for _, c in calls],
            rounds=[rnd for rnd, _ in calls],
            expected=random_expectation(calls, rates),
            expected_label=_random_label(rates),
            title=f"{config.name}: discoveries (E_hull <= {config.near_stable:g} eV/atom on the hull after round "
            f"{round}) vs oracle calls",
        )
        tracker.log_figure(fig, artifact_file=CURVE_PLOT)


def _random_label(rates: Mapping[int, tuple[float, int]]) -> str:
    """The legend of the random baseline: its estimated hits per call."""
    if not rates:
        return "uniform random (no estimate)"
    text = ", ".join(f"r{k} {100 * p:.0f}%" for k, (p, _) in sorted(rates.items()))
    return f"uniform random, expected (hits/call est. {text})"


def _sha256_of(items: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()


def _version_tags(
    config: CampaignConfig, store: CampaignStore, rnd: int, kind: str, path: Path, checkpoint: str
) -> dict[str, Any]:
    """Validation metrics and data hash of a checkpoint (its files at `path`, its place in the workdir
    `checkpoint`), as model-version tags."""
    result = store.stage_result(rnd, "retrain") or {}
    tags: dict[str, Any] = {
        "round_index": rnd,
        "campaign": config.name,
        "checkpoint": checkpoint,
    }
    prefix = f"{kind}_"
    for k, v in flatten_numeric(result).items():
        name = k[len(prefix) :]
        # Counts and timings describe the run, not the model's quality.
        if k.startswith(prefix) and not (name.startswith("n_") or name.endswith(_NOT_METRICS)):
            tags[f"val.{name}"] = v
    if kind == "emulator":
        manifest = path / "manifest.json"
        if manifest.is_file():
            data = json.loads(manifest.read_text())
            tags["data_hash"] = data.get("data_hash")
            tags["data_n_labels"] = data.get("n_labels")
            for k, v in flatten_numeric(data.get("metrics") or {}).items():
                tags.setdefault(f"val.{k}", v)
        if tags.get("data_hash") is None:
            labels = store.oracle_results(settings_hash=config.oracle.settings_hash(), ok_only=True)
            tags["data_hash"] = _sha256_of([r.hash for r in labels if (r.round or 0) <= rnd])
    else:
        rule = config.stability_rule
        first = store.first_query_rounds()
        hits = [
            v.hash for v in store.stability(rnd) if rule.is_discovery(v.e_hull, first_round=first.get(v.hash))
        ]
        tags["data_hash"] = _sha256_of(hits)
        tags["data_n_discoveries"] = len(hits)
    return {k: v for k, v in tags.items() if v is not None}


def _in_workdir(raw: str | None, workdir: Path) -> Path | None:
    """A checkpoint path recorded by the retrain stage, found in `workdir` even if the campaign was moved since.

    Paths are recorded relative to the workdir; older campaigns recorded them absolute or relative to the
    directory the campaign was started from, so their `checkpoints/round_NNN/...` tail is looked up too.
    """
    if not raw:
        return None
    path = Path(raw)
    if not path.is_absolute() and (workdir / path).exists():
        return workdir / path
    tails = [
        i
        for i, part in enumerate(path.parts[:-1])
        if part == "checkpoints" and _ROUND.match(path.parts[i + 1])
    ]
    if tails:
        here = workdir.joinpath(*path.parts[tails[-1] :])
        if here.exists():
            return here
    return path if path.is_absolute() else workdir / path


def _kept_copy(kind: str, name: str, sha256: str | None, workdir: Path, *, skip_run: str) -> Path | None:
    """A checkpoint pruned from the workdir, found among the campaign-local MLflow store's artifacts by the hash
    recorded when it was saved: what a rebuilt store (after `matloop sync-tracking` moved a corrupt one aside)
    registers again, as no database references those files any more."""
    if sha256 is None:
        return None
    for folder in sorted((Path(workdir) / "mlflow" / "artifacts").glob(f"*/artifacts/checkpoints/{kind}")):
        if folder.parents[2].name == skip_run:
            continue
        path = folder if kind == "emulator" else folder / name
        if path.exists() and checkpoint_problem(kind, path, sha256) is None:
            return path
    return None


def _relative(path: Path, workdir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(workdir).resolve()))
    except ValueError:
        return str(path)


def _log_models(
    tracker: Tracker, config: CampaignConfig, store: CampaignStore, rnd: int, run_id: str, workdir: Path
) -> None:
    """Log this round's new checkpoints, register each as a model version, point `champion` at the one in use."""
    result = store.stage_result(rnd, "retrain") or {}
    names = model_names(config.name)
    for kind in ("emulator", "generator"):
        path = _in_workdir(result.get(f"{kind}_checkpoint"), workdir)
        rel = None if path is None else _relative(path, workdir)
        registered = {t.get("checkpoint") for t in tracker.model_versions(names[kind]).values()}
        if (
            path is not None
            and not path.exists()
            and rel not in registered
            and config.tracking.tracking_uri is None
        ):
            sha = (result.get("checkpoint_sha256") or {}).get(kind)
            path = _kept_copy(kind, path.name, sha, workdir, skip_run=run_id)
            if path is not None:
                log.info("round %d: %s is logged again from the copy MLflow kept (%s)", rnd, rel, path)
        if path is not None and path.exists():
            # A version is a folder (the emulator's checkpoint dir, or the folder holding generator.pt), so
            # `models:/` URIs download the same way for both.
            artifact_path = f"checkpoints/{kind}"
            if path.is_dir():
                tracker.log_artifacts(path, artifact_path=artifact_path, run_id=run_id)
            else:
                tracker.log_artifact(path, artifact_path=artifact_path, run_id=run_id)
            if rel not in registered:
                tracker.register_version(
                    model_name=names[kind],
                    run_id=run_id,
                    artifact_path=artifact_path,
                    tags=_version_tags(config, store, rnd, kind, path, rel),
                    description=f"{kind} checkpoint of round {rnd} of campaign {config.name}",
                )
        in_use = store.get_meta(f"{kind}_checkpoint")
        if in_use is None:
            continue
        in_use = _relative(workdir / in_use, workdir)
        for version, tags in tracker.model_versions(names[kind]).items():
            if tags.get("checkpoint") == in_use:
                tracker.set_alias(model_name=names[kind], version=version)
                break


def mlflow_copy_checker(
    config: CampaignConfig, *, store: CampaignStore, workdir: Path
) -> Callable[[int], str | None]:
    """`copy_problem(round)` for `loop.runtime.checkpoints.prune_checkpoints`: why the checkpoints retrained in a round
    may not leave the workdir yet, or None when MLflow holds them.

    MLflow holds a checkpoint when its registry has a version tagged with the checkpoint's path and the files of
    that version, downloaded through the registry, hash-match the workdir's. The campaign store's record that a
    round was logged is not enough: a corrupt or replaced MLflow store would then cost the only copy.
    """
    names = model_names(config.name)
    tracker: Tracker | None = None

    def copy_problem(rnd: int) -> str | None:
        nonlocal tracker
        if not config.tracking.enabled:
            return "tracking is disabled, so MLflow keeps no copy"
        result = store.stage_result(rnd, "retrain")
        if result is None:
            return "its retrain stage is not recorded"
        tracker = tracker or campaign_tracker(config, store, workdir)
        checked = 0
        for kind in CHECKPOINT_KINDS:
            path = _in_workdir(result.get(f"{kind}_checkpoint"), workdir)
            if path is None or not path.exists():
                continue
            rel = _relative(path, workdir)
            with tempfile.TemporaryDirectory(prefix="matloop-readback-") as tmp:
                try:
                    copy = tracker.fetch_version(
                        model_name=names[kind], tag="checkpoint", value=rel, dst=Path(tmp)
                    )
                except (TrackingUnavailable, TrackingError) as exc:
                    return f"MLflow could not be read back ({exc})"
                if copy is None:
                    return f"MLflow's registry holds no version of {rel}"
                if (mismatch := copy_mismatch(path, copy)) is not None:
                    return f"the MLflow copy of {rel} does not match it ({mismatch})"
            checked += 1
        return None if checked else "no checkpoint of this round is recorded"

    return copy_problem


def _log_science_report(tracker: Tracker, workdir: Path) -> str | None:
    """Write the science report and log it to the parent run.

    Returns:
        A link to the report for the parent's description, or None when no report was written.
    """
    out = workdir / "logs" / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_report(workdir=workdir, out=out)
    except Exception as exc:  # a report that cannot be drawn must not stop discovery or its tracking either
        log.warning("science report not written: %s: %s", type(exc).__name__, exc)
        return None
    if not out.is_file():
        return None
    tracker.log_artifact(out, artifact_path=REPORT_ARTIFACT)
    parent = tracker.parent_run_id
    return f"#/experiments/{tracker.experiment_id}/runs/{parent}/artifactPath/{REPORT_ARTIFACT}/{REPORT_FILE}"


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("matloop", "chgnet", "torch", "pymatgen", "ase", "gpaw", "modAL-python", "mlflow"):
        try:
            out[f"version.{pkg}"] = package_version(pkg)
        except PackageNotFoundError:
            out[f"version.{pkg}"] = "absent"
    return out


# -- entry points -----------------------------------------------------------------------------------------------------
def track_round(config: CampaignConfig, *, store: CampaignStore, round: int, workdir: Path) -> dict[str, Any]:
    """The track stage: log this round (and any round still pending) to MLflow; never raises for a tracking fault.

    Returns:
        What the stage commits: the run ids, or `tracking: pending` with the reason when the backend failed.
    """
    if not config.tracking.enabled:
        return {"tracking": "disabled"}
    tracker = campaign_tracker(config, store, workdir)
    try:
        tracker.check_available()
        parent = _open_parent(tracker, config, store)
        store.set_meta(END_META, None)  # the campaign runs again: an earlier end no longer applies
        todo = sorted(set(pending_rounds(store)) | {round})
        run_ids = {rnd: _log_round(tracker, config, store, rnd, workdir) for rnd in todo}
        tracker.set_description(
            campaign_description(
                config,
                store,
                report_link=store.get_meta(REPORT_LINK_META),
                registered=_registered(tracker, config),
            )
        )
    except (TrackingUnavailable, TrackingError) as exc:
        log.warning(
            "round %d: tracking unavailable (%s); discovery continues, and the round is logged when the backend "
            "returns or by `matloop sync-tracking --workdir %s`",
            round,
            exc,
            workdir,
        )
        return {"tracking": "pending", "reason": str(exc)}
    return {
        "tracking": "logged",
        "parent_run": parent,
        "round_run": run_ids[round],
        "synced_rounds": [r for r in todo if r != round],
    }


def end_campaign(
    config: CampaignConfig, *, store: CampaignStore, workdir: Path, status: str, reason: str
) -> bool:
    """Close the parent run FINISHED, KILLED or FAILED with `reason`, after logging pending rounds and the report.

    Never raises for a tracking fault: the end is then kept in the store and applied by `matloop sync-tracking`.

    Returns:
        True when the run was closed.
    """
    if not config.tracking.enabled:
        return True
    store.set_meta(END_META, {"status": status, "reason": reason, "closed": False})
    tracker = campaign_tracker(config, store, workdir)
    try:
        tracker.check_available()
        _close_parent(tracker, config, store, workdir, status=status, reason=reason)
    except (TrackingUnavailable, TrackingError) as exc:
        log.warning(
            "the campaign's MLflow run could not be closed (%s); run `matloop sync-tracking --workdir %s` later",
            exc,
            workdir,
        )
        return False
    return True


def _close_parent(
    tracker: Tracker, config: CampaignConfig, store: CampaignStore, workdir: Path, *, status: str, reason: str
) -> None:
    _open_parent(tracker, config, store)
    for rnd in pending_rounds(store):
        _log_round(tracker, config, store, rnd, workdir)
    link = _log_science_report(tracker, workdir) or store.get_meta(REPORT_LINK_META)
    store.set_meta(REPORT_LINK_META, link)
    tracker.set_description(
        campaign_description(
            config, store, report_link=link, registered=_registered(tracker, config), ended=(status, reason)
        )
    )
    # The campaign's work ended with its last stage; logging the report afterwards is not part of it.
    tracker.end_run(
        status=status, reason=reason, end_time=max((s.finished_at for s in store.stages()), default=None)
    )
    store.set_meta(END_META, {"status": status, "reason": reason, "closed": True})


@dataclass(frozen=True)
class SyncResult:
    """What `sync_tracking` did.

    Attributes:
        rounds: Rounds logged now.
        parent_status: The parent run's status afterwards.
        moved_aside: Where a corrupt local store was moved (None if it was fine).
    """

    rounds: list[int]
    parent_status: str | None
    moved_aside: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "parent_status": self.parent_status, "moved_aside": self.moved_aside}


def _move_aside_if_corrupt(workdir: Path, config: CampaignConfig) -> str | None:
    """A campaign-local MLflow database that is not SQLite any more is renamed, never deleted, so a fresh store
    can be rebuilt from the campaign store."""
    if config.tracking.tracking_uri is not None:
        return None
    db = Path(workdir) / "mlflow" / "mlflow.db"
    if not db.is_file() or db.stat().st_size == 0:
        return None
    with db.open("rb") as handle:
        header = handle.read(16)
    if header == b"SQLite format 3\x00":
        return None
    target = db.with_name(f"mlflow.db.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    db.rename(target)
    for suffix in ("-wal", "-shm", "-journal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    log.warning("%s is not an SQLite database; moved it to %s and rebuilding the store", db, target.name)
    return str(target)


def sync_tracking(config: CampaignConfig, *, store: CampaignStore, workdir: Path) -> SyncResult:
    """Log every pending round and a pending end of the campaign to MLflow (`matloop sync-tracking`).

    A corrupt local store is moved aside and rebuilt from the campaign store. When the campaign is not running
    (the caller holds the workdir lock) and its parent run is still RUNNING, the run is closed: with the recorded
    end if there is one, else KILLED (the process died without closing it).

    Raises:
        TrackingUnavailable: The backend is still unavailable; nothing is lost, run the command again later.
        TrackingError: Tracking is disabled in the campaign's config.
    """
    if not config.tracking.enabled:
        raise TrackingError("tracking is disabled in this campaign's config (tracking.enabled: false)")
    moved = _move_aside_if_corrupt(workdir, config)
    tracker = campaign_tracker(config, store, workdir)
    tracker.check_available()
    _open_parent(tracker, config, store)
    todo = pending_rounds(store)  # every round again if the store was replaced
    for rnd in todo:
        _log_round(tracker, config, store, rnd, workdir)
    end: Mapping[str, Any] | None = store.get_meta(END_META)
    if tracker.run_status() == "RUNNING" or (end is not None and not end["closed"]):
        # Nothing runs this campaign now (the caller holds its lock), so its run must not stay RUNNING: close it
        # as the campaign ended, or as KILLED when the process died without recording an end (kill -9).
        if end is None:
            end = {
                "status": "KILLED",
                "reason": "the campaign process ended without closing its run (killed); resume with `matloop run`",
            }
        _close_parent(tracker, config, store, workdir, status=end["status"], reason=end["reason"])
    else:
        tracker.set_description(
            campaign_description(
                config,
                store,
                report_link=store.get_meta(REPORT_LINK_META),
                registered=_registered(tracker, config),
            )
        )
    return SyncResult(rounds=todo, parent_status=tracker.run_status(), moved_aside=moved)


def sync_tracking_in(workdir: Path) -> dict[str, Any]:
    """`matloop sync-tracking`: sync a campaign's workdir while holding its lock (refused while it runs).

    Raises:
        InputError: Another matloop process runs this campaign, or tracking is disabled.
        TrackingUnavailable: The backend is still down.
    """
    workdir = Path(workdir)
    with workdir_lock(workdir):
        store = CampaignStore.in_workdir(workdir)
        try:
            config = CampaignConfig.model_validate(store.get_meta("config"))
            return sync_tracking(config, store=store, workdir=workdir).as_dict()
        finally:
            store.close()


def ui_address(workdir: Path, *, port: int) -> str:
    """The address `matloop ui` prints: the campaign's runs view when its experiment is known, else the list."""
    store = CampaignStore.in_workdir(workdir)
    try:
        experiment = store.get_meta(EXPERIMENT_META)
    finally:
        store.close()
    return ui_url(port=port, experiment_id=experiment)
