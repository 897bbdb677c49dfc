"""The `matloop` command line.

Every command has `--help`; machine-readable output with `--json`. Bad input prints one line on stderr and exits
with code 2, and nothing is written to the workdir.
"""

from __future__ import annotations

import os

# Thread oversubscription made CHGNet relaxations 10x slower on small machines: pin BLAS/torch threads before any
# numerical library is imported. Users who know better can override these in their environment.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402

from loop.errors import CampaignHalted, InputError  # noqa: E402

app = typer.Typer(
    name="matloop",
    help="Active-learning discovery of stable inorganic crystals (generate → screen → acquire → label → retrain).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: typer's rich formatting imports rich's markdown renderer, half a second of start-up.
    rich_markup_mode=None,
)

WorkdirOpt = Annotated[Path, typer.Option("--workdir", "-w", help="Campaign directory (holds matloop.db).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _fail(message: str) -> None:
    typer.echo(f"matloop: error: {message}", err=True)
    raise typer.Exit(code=2)


def _emit_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def _folder_path(path: Path, option: str) -> Path:
    """`path` as a folder a command may create or use: exit 2 when it, or a folder above it, is a file.

    Checked before any work, so a run or a sampling never ends on a path that could not have been written.
    """
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"is inside {part}, which is a file"
                _fail(f"{option} {path}: {where}; give a folder (new or existing)")
            break
    return path


_EXTXYZ = (".extxyz", ".xyz")


def _structures_out(out: Path) -> Path:
    """`generate --out`: an .extxyz file that does not exist yet, or a folder for CIFs."""
    if out.suffix.lower() in _EXTXYZ:
        _folder_path(out.parent, "--out's folder")
        if out.exists():
            _fail(f"{out}: already exists; choose a new --out (nothing is overwritten)")
        return out
    if out.suffix:
        _fail(
            f"--out {out}: give an .extxyz file or a folder name for CIFs (without a suffix such as {out.suffix})"
        )
    return _folder_path(out, "--out")


def _not_running(workdir: Path) -> Path:
    """Refuse a campaign another process is running, before the rooms load (the lock itself is taken later)."""
    from loop.runtime.control import LOCK_FILE, campaign_running  # light: fcntl only

    if campaign_running(workdir):
        _fail(f"{workdir}: another matloop process is running this campaign (see {workdir / LOCK_FILE})")
    return workdir


def _existing_workdir(workdir: Path) -> Path:
    from loop.store import CampaignStore  # pymatgen: only commands that open a campaign

    if not CampaignStore.exists_in(workdir):
        _fail(
            f"{workdir}: no campaign here (no matloop.db); start one with `matloop run CONFIG --workdir {workdir}`"
        )
    return workdir


# ---------------------------------------------------------------------------------------------------------------------
@app.command()
def label(
    files: Annotated[
        list[Path], typer.Argument(help="Structure files (CIF, POSCAR, extxyz, pymatgen JSON).")
    ],
    oracle: Annotated[
        str, typer.Option("--oracle", help="Oracle name (gpaw, emt, cp2k, espresso, vasp).")
    ] = "gpaw",
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Campaign YAML whose `oracle:` section gives the settings."),
    ] = None,
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help="Where results are kept.")] = Path(
        "matloop-workdir"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Run the oracle on structures; a structure already labelled with the same settings is not recomputed."""
    _folder_path(workdir, "--workdir")
    from loop.runtime.labelling import label_files  # the oracle room (ASE, pymatgen)

    rows = label_files(files, oracle_name=oracle, config_path=config, workdir=workdir)
    if as_json:
        _emit_json(rows)
        return
    from rich.table import Table  # the table only for human output

    from loop.report.status import make_console

    table = Table(title=f"oracle labels ({workdir})")
    for col in (
        "structure",
        "formula",
        "status",
        "E (eV/atom)",
        "max |F| (eV/Å)",
        "P (GPa)",
        "time (s)",
        "cached",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["structure"],
            r["formula"],
            r["status"] if r["status"] == "ok" else f"failed: {r['reason']}",
            "-" if r["energy_per_atom"] is None else f"{r['energy_per_atom']:.4f}",
            "-" if r["max_force"] is None else f"{r['max_force']:.3f}",
            "-" if r["pressure"] is None else f"{r['pressure']:.2f}",
            f"{r['wall_time']:.1f}",
            "yes" if r["cached"] else "no",
        )
    make_console().print(table)


@app.command()
def assess(
    files: Annotated[
        list[Path], typer.Argument(help="Structure files (CIF, POSCAR, extxyz, pymatgen JSON).")
    ],
    design: Annotated[
        Path,
        typer.Option(
            "--design", help="A campaign YAML (its design: and oracle: sections) or a design section."
        ),
    ],
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir", "-w", help="A campaign whose labels and hull the structures are matched against."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Emulator checkpoint directory of the MLFF checks (default: shipped CHGNet)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the rows to a new .csv or .json file.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="Dask worker processes for the MD and phonons.")
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Judge structures against design requirements (band gap, window, conductivity, phonons, thermal, ...)."""
    from loop.cli.assess import assess_files  # the design checks (pymatgen, the MLFF)

    rows = assess_files(
        files, design_path=design, workdir=workdir, checkpoint=checkpoint, out=out, workers=workers
    )
    if as_json:
        _emit_json(rows)
        return
    from loop.report.status import make_console, shortlist_table  # rich tables: human output only

    make_console().print(shortlist_table(rows, title="design assessment"))
    if out is not None:
        typer.echo(f"wrote {out}")


@app.command()
def status(workdir: WorkdirOpt, as_json: JsonOpt = False) -> None:
    """Round, stage, counts, hit rate per round and best discoveries of a campaign (during or after a run)."""
    from loop.report.status import campaign_status, render_status  # the store and hull (pymatgen)

    info = campaign_status(_existing_workdir(workdir))
    if as_json:
        _emit_json(info)
    else:
        render_status(info)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Campaign YAML (see configs/).")],
    workdir: WorkdirOpt,
    rounds: Annotated[
        int | None, typer.Option("--rounds", help="Rounds after round 0 (overrides the config).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start or resume a campaign in the foreground."""
    _not_running(_folder_path(workdir, "--workdir"))
    from loop.campaign import Campaign  # every room: torch, chgnet, mlflow, dask

    campaign = Campaign.open(config_path=config, workdir=workdir, max_rounds=rounds)
    summary = campaign.run()
    if as_json:
        _emit_json(summary)
    else:
        from loop.report.status import render_summary  # rich tables, only for human output

        render_summary(summary)


@app.command()
def daemon(config: Annotated[Path, typer.Argument(help="Campaign YAML.")], workdir: WorkdirOpt) -> None:
    """Keep running rounds until the config's stop rule; SIGTERM/SIGINT or `matloop stop` end it cleanly (the
    calculation under way finishes and is stored first)."""
    _not_running(_folder_path(workdir, "--workdir"))
    from loop.campaign import Campaign  # every room: torch, chgnet, mlflow, dask

    campaign = Campaign.open(config_path=config, workdir=workdir, max_rounds=None)
    campaign.run(daemon=True)


@app.command()
def stop(workdir: WorkdirOpt) -> None:
    """Ask a running daemon to stop once the calculation (or stage) under way is stored."""
    from loop.runtime.control import request_stop  # light: no room is imported to ask a campaign to stop

    typer.echo(request_stop(_existing_workdir(workdir)))


@app.command()
def export(
    workdir: WorkdirOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder (CIFs + summary.csv).")],
    hits_only: Annotated[
        bool,
        typer.Option("--hits", help="Only hits: stable and near-stable discoveries (loop.science.verdicts)."),
    ] = False,
    stable_alias: Annotated[
        bool,
        typer.Option(
            "--stable", hidden=True, help="Old name of --hits (it always exported near-stable too)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the campaign's labelled structures (or only its hits) as CIFs plus a CSV summary."""
    from loop.report.status import export_discoveries  # the store and hull (pymatgen)

    _existing_workdir(workdir)
    if out.exists() and not out.is_dir():
        _fail(
            f"{out}: exists and is not a folder; give a new or existing folder for the CIFs and summary.csv"
        )
    _folder_path(out, "--out")
    info = export_discoveries(workdir, out=out, hits_only=hits_only or stable_alias)
    if as_json:
        _emit_json(info)
    else:
        shortlist = (
            f" and the shortlist ({info['n_shortlist_rows']} rows)" if info.get("n_shortlist_rows") else ""
        )
        typer.echo(f"wrote {info['n']} structures and {info['csv']}{shortlist}")


@app.command()
def report(
    workdir: WorkdirOpt,
    out: Annotated[
        Path, typer.Option("--out", help="The HTML file to write (self-contained, readable offline).")
    ],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
) -> None:
    """Write the campaign's science report: hull, hit rates, emulator error, calibration, yield, discoveries."""
    from loop.report.science import write_report  # matplotlib and the hull

    _folder_path(out.parent, "--out's folder")
    path = write_report(workdir=workdir, out=out, overwrite=force)
    typer.echo(f"wrote {path}")


@app.command()
def predict(
    files: Annotated[
        list[Path], typer.Argument(help="Structure files (CIF, POSCAR, extxyz, pymatgen JSON).")
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Emulator checkpoint dir (default: pretrained ensemble)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ensemble mean ± std of energy per atom (eV/atom), forces (eV/Å) and stress (GPa)."""
    from loop.science.structures import read_structures  # pymatgen and ASE readers

    named = read_structures(files)
    from emulator.tasks import predict_table  # torch and chgnet

    if checkpoint is not None and not checkpoint.is_dir():
        _fail(
            f"{checkpoint}: no such emulator checkpoint directory (e.g. <workdir>/checkpoints/round_001/emulator)"
        )
    rows = predict_table([s for _, s in named], checkpoint_dir=checkpoint)
    for (name, _), row in zip(named, rows, strict=True):
        row["structure"] = name
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        typer.echo(
            f"{r['structure']}: E = {r['energy_per_atom']:.4f} ± {r['energy_per_atom_std']:.4f} eV/atom, "
            f"max|F| = {r['max_force']:.3f} ± {r['max_force_std']:.3f} eV/Å, "
            f"P = {r['pressure']:.2f} GPa (max stress std {max(r['stress_std']):.2f} GPa)"
        )


@app.command()
def screen(
    out: Annotated[Path, typer.Option("--out", help="The table to write: .csv or .json (must not exist).")],
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Structure files or folders of them (CIF, POSCAR, extxyz, pymatgen JSON)."),
    ] = None,
    generate: Annotated[
        int | None,
        typer.Option(
            "--generate", min=1, help="Sample N crystals of the chemical systems instead of reading files."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Campaign YAML: its chemistry, funnel and tiers; the emulator's own hull."
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", "-w", help="A campaign: its config, current emulator and oracle hull."),
    ] = None,
    relax_all: Annotated[
        bool, typer.Option("--relax-all", help="Relax every funnel survivor (no cut after the cheap tier).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (with --generate).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Screen structures in tiers (funnel, cheap batched estimate, relaxation of the promising share) against a
    campaign's hull (--workdir) or the known crystals of a config's chemistry (--config); one table row each."""
    from loop.cli.screen import run_screen  # pymatgen, and torch once screening starts

    info = run_screen(
        files=files or [],
        generate=generate,
        config_path=config,
        workdir=workdir,
        out=out,
        relax_all=relax_all,
        seed=seed,
    )
    if as_json:
        _emit_json(info)
    else:
        typer.echo(
            f"wrote {info['n_in']} rows to {info['out']} in {info['seconds']:.1f} s: {info['n_funnel_rejected']} "
            f"stopped by the funnel, {info['n_cheap_only']} at the cheap tier, {info['n_relaxed']} relaxed "
            f"(against the {info['hull']})"
        )


@app.command()
def generate(
    n: Annotated[int, typer.Option("--n", min=1, help="Number of crystals.")],
    out: Annotated[Path, typer.Option("--out", help="An .extxyz file or a folder for CIFs.")],
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition", "-c", help="KEY=VALUE or KEY=LO:HI, e.g. chemical_system=Li-Fe-O, band_gap=1:3."
        ),
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Diffusion checkpoint.")] = None,
    num_atoms: Annotated[
        int | None, typer.Option("--num-atoms", min=1, max=20, help="Atoms per cell.")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Sampler steps.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance",
            min=0.0,
            max=20.0,
            help="Classifier-free guidance scale for the conditions (default 4; 1 = none extra).",
        ),
    ] = None,
    charge_balance: Annotated[
        bool,
        typer.Option(
            "--charge-balance/--no-charge-balance",
            help="Constrained type decoding that keeps compositions charge-balanced (off: raw model types).",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Sample crystals from the diffusion model (written batch by batch, so a kill loses at most one batch)."""
    _structures_out(out)
    from loop.cli.generate import generate_to_file  # the diffusion model (torch)

    info = generate_to_file(
        n=n,
        out=out,
        conditions=condition or [],
        checkpoint=checkpoint,
        num_atoms=num_atoms,
        steps=steps,
        seed=seed,
        guidance_scale=guidance,
        charge_balance=charge_balance,
    )
    if as_json:
        _emit_json(info)
    else:
        typer.echo(f"wrote {info['n_written']} structures to {out} in {info['seconds']:.1f} s")
        from generator.diffusion.adherence import describe_summary  # torch, already loaded by the sampler

        for line in describe_summary(info["adherence"]):
            typer.echo(f"  {line}")


@app.command()
def ui(
    workdir: WorkdirOpt,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open the MLflow dashboard of a campaign on 127.0.0.1."""
    from loop.campaign import tracking_ui_command  # the campaign module imports every room

    cmd = tracking_ui_command(_existing_workdir(workdir), port=port)
    if isinstance(cmd, str):
        typer.echo(f"this campaign reports to the MLflow server at {cmd}: open that address")
        return
    from loop.tracking.campaign import ui_address  # mlflow

    typer.echo(f"MLflow UI on {ui_address(workdir, port=port)} (Ctrl-C to stop)")
    os.execvp(cmd[0], cmd)


@app.command("sync-tracking")
def sync_tracking(workdir: WorkdirOpt, as_json: JsonOpt = False) -> None:
    """Log to MLflow what a campaign could not log while its tracking backend was down (never loses a round)."""
    _not_running(_existing_workdir(workdir))
    from loop.tracking.campaign import sync_tracking_in  # mlflow
    from loop.tracking.runs import TrackingUnavailable  # pydantic (0.13 s); already loaded by the line above

    try:
        info = sync_tracking_in(workdir)
    except TrackingUnavailable as exc:
        typer.echo(f"matloop: error: {exc}; nothing was lost, run this again once it is back", err=True)
        raise typer.Exit(code=1) from None
    if as_json:
        _emit_json(info)
    else:
        rounds = ", ".join(map(str, info["rounds"])) or "none"
        typer.echo(f"logged rounds: {rounds}; campaign run {info['parent_status']}")


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's usage-error classes: typer 0.29 raises its vendored copy (`typer._click`), older typers plain click's."""
    found: list[type[BaseException]] = []
    try:
        # Optional: only typer >= 0.29 vendors click.
        from typer._click.exceptions import ClickException as VendoredClickException

        found.append(VendoredClickException)
    except ImportError:  # pragma: no cover - typer without a vendored click
        pass
    try:
        from click import ClickException  # optional: typers that still use plain click

        found.append(ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(found)


def _usage_line(exc: BaseException) -> str:
    """One line for a command-line usage error: what is wrong and where to read the usage."""
    message = " ".join(str(getattr(exc, "format_message", lambda: str(exc))()).split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "matloop"
    return f"{message}; see `{command} --help`"


# The rooms' bad-input errors, by module. An error class can only be raised once its module is imported, so the
# handler looks them up in `sys.modules` instead of importing the rooms (torch, chgnet) at start-up.
_INPUT_ERRORS = (
    ("emulator.base", "EmulatorError"),
    ("generator.base", "GeneratorError"),
    ("oracle.base", "UnsupportedStructure"),
)


def _input_error_types() -> tuple[type[BaseException], ...]:
    """`InputError` plus the bad-input errors of every room that the command imported."""
    found: list[type[BaseException]] = [InputError]
    for module_name, class_name in _INPUT_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None:
            found.append(getattr(module, class_name))
    return tuple(found)


def main() -> None:
    """Console entry point: bad input and usage errors become one line on stderr and exit code 2; a campaign that
    halted on a fault it cannot get past (disk full, corrupt checkpoint) one line and exit code 3."""
    # Library warnings (torch, CHGNet, pymatgen internals) are noise on a command line; results are unaffected.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # A log line that cannot be written (disk full) must not print a traceback in the middle of a clean stop.
    logging.raiseExceptions = False
    usage_errors = _usage_error_types()
    try:
        # Without standalone mode click returns (rather than raises) the code of a typer.Exit.
        code = app(standalone_mode=False, prog_name="matloop")
        if isinstance(code, int) and code:
            sys.exit(code)
    except _input_error_types() as exc:
        typer.echo(f"matloop: error: {exc}", err=True)
        sys.exit(2)
    except CampaignHalted as exc:
        typer.echo(f"matloop: stopped: {exc}", err=True)
        sys.exit(3)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("matloop: interrupted", err=True)
        sys.exit(130)
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
            typer.echo(exc.ctx.get_help())  # type: ignore[attr-defined]
        else:
            typer.echo(f"matloop: error: {_usage_line(exc)}", err=True)
        sys.exit(2)
