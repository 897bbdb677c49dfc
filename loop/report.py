"""What a campaign has done so far: status, summaries and export of discoveries (works during or after a run)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loop.stages import stages_of
from loop.store import CampaignStore
from loop.verdicts import StabilityRule


def stability_rule(store: CampaignStore) -> StabilityRule:
    """The stability rule of the campaign in `store` (its `near_stable`, from the stored config)."""
    config = store.get_meta("config") or {}
    if "near_stable" not in config:
        raise ValueError(f"{store.path}: no campaign config stored; is this a matloop workdir?")
    return StabilityRule(near_stable=float(config["near_stable"]))


def _is_discovery(rule: StabilityRule, verdict: dict[str, Any] | None, first_round: int | None) -> bool:
    # a discovery is a hit the campaign itself queried (round >= 1), never a round-0 reference
    return verdict is not None and rule.is_hit(verdict["e_hull"]) and (first_round or 0) >= 1


def _next_stage(store: CampaignStore) -> tuple[int, str | None]:
    rounds = store.rounds()
    rnd = rounds[-1]["round"] if rounds else 0
    for stage in stages_of(rnd):
        if not store.stage_done(rnd, stage):
            return rnd, stage
    return rnd, None


def campaign_status(workdir: Path, *, store: CampaignStore | None = None) -> dict[str, Any]:
    """Round, stage, counts, hit rate per round and best discoveries, as plain data.

    Energies above hull in eV/atom. Opens the store read-mostly; safe while a campaign runs (WAL).
    """
    own = store is None
    store = store or CampaignStore.in_workdir(workdir)
    try:
        identity = store.get_meta("identity") or {}
        config = store.get_meta("config") or {}
        rule = stability_rule(store)
        rnd, stage = _next_stage(store)
        per_round = []
        for r in store.rounds():
            summary = r.get("summary") or {}
            generate = store.stage_result(r["round"], "generate") or {}
            funnel = store.stage_result(r["round"], "funnel") or {}
            update = store.stage_result(r["round"], "update") or {}
            per_round.append(
                {
                    "round": r["round"],
                    "status": r["status"],
                    "generated": generate.get("n_generated", 0),
                    "passed_funnel": funnel.get("n_passed", 0),
                    "queried": summary.get("queried", len(store.queries(r["round"]))),
                    "labelled": summary.get("labelled"),
                    "failed": summary.get("failed"),
                    "stable": summary.get("stable"),
                    "near_stable": summary.get("near_stable"),
                    "hits": summary.get("hits"),
                    "hit_rate": summary.get("hit_rate", update.get("hit_rate")),
                    "emulator_mae": update.get("emulator_mae"),
                    "wall_time_s": None
                    if r.get("finished_at") is None
                    else round(r["finished_at"] - r["started_at"], 1),
                }
            )
        query_round = store.first_query_rounds()
        rows = {r["hash"]: r for r in store.structure_rows()}
        discoveries = []
        for s in store.stability():
            if not _is_discovery(rule, s, query_round.get(s["hash"])):
                continue
            row = rows.get(s["hash"], {})
            parent = rows.get(row.get("parent") or "", {})
            discoveries.append(
                {
                    "hash": s["hash"],
                    "formula": row.get("reduced_formula"),
                    "e_hull": s["e_hull"],
                    "verdict": rule.classify(s["e_hull"]).value,
                    "stable": rule.is_stable(s["e_hull"]),
                    "round": query_round[s["hash"]],
                    "source": parent.get("source", row.get("source")),
                }
            )
        discoveries.sort(key=lambda d: d["e_hull"])
        tracking = config.get("tracking") or {}
        return {
            "workdir": str(workdir),
            "campaign": identity.get("name"),
            "chemical_systems": identity.get("chemical_systems"),
            "near_stable": rule.near_stable,
            "round": rnd,
            "stage": stage or "done",
            "stopped_because": store.get_meta("stopped_because"),
            "counts": store.counts(),
            "rounds": per_round,
            "discoveries": discoveries[:20],
            "n_discoveries": len(discoveries),
            "mlflow": tracking.get("tracking_uri")
            or f"sqlite:///{Path(workdir).resolve() / 'mlflow' / 'mlflow.db'}",
        }
    finally:
        if own:
            store.close()


def render_status(info: dict[str, Any]) -> None:
    console = Console()
    console.print(
        f"[bold]{info['campaign']}[/bold] ({', '.join(info['chemical_systems'] or [])}) in {info['workdir']}: "
        f"round {info['round']}, next stage: {info['stage']}"
    )
    counts = info["counts"]
    console.print(", ".join(f"{k} {v}" for k, v in counts.items()))
    table = Table(title="rounds (E in eV/atom)")
    cols = ("round", "generated", "passed_funnel", "queried", "labelled", "failed", "stable", "near_stable")
    cols += ("hits", "hit_rate", "emulator_mae", "wall_time_s")
    heads = (
        "round",
        "gen",
        "funnel",
        "query",
        "ok",
        "fail",
        "stable",
        "near",
        "hits",
        "hit rate",
        "MAE",
        "time s",
    )
    for h in heads:
        table.add_column(h, no_wrap=True)
    for r in info["rounds"]:
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    console.print(table)
    if info["discoveries"]:
        disc = Table(
            title=f"best discoveries ({info['n_discoveries']} hits: E_hull <= {info['near_stable']} eV/atom)"
        )
        for c in ("formula", "e_hull", "stable", "round", "source", "hash"):
            disc.add_column(c)
        for d in info["discoveries"][:10]:
            disc.add_row(
                *(_fmt(d.get(c)) for c in ("formula", "e_hull", "stable", "round", "source", "hash"))
            )
        console.print(disc)
    if info.get("stopped_because"):
        console.print(f"stopped: {info['stopped_because']}")


def render_summary(info: dict[str, Any]) -> None:
    render_status(info)
    Console().print(
        f"dashboard: matloop ui --workdir {info['workdir']}   (MLflow store {info['mlflow']})\n"
        f"export:    matloop export --workdir {info['workdir']} --stable --out discoveries/"
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def export_discoveries(workdir: Path, *, out: Path, hits_only: bool) -> dict[str, Any]:
    """Write labelled structures (or only the campaign's discoveries, i.e. its hits) as CIFs plus `summary.csv`.

    Columns: hash, formula, natoms, round, source, energy_per_atom (eV/atom), e_hull (eV/atom), verdict
    (stable / near_stable / unstable / unplaced, `loop.verdicts`), stable (0/1), hit (0/1).
    """
    store = CampaignStore.in_workdir(workdir)
    try:
        rule = stability_rule(store)
        verdicts = {s["hash"]: s for s in store.stability()}
        query_round = store.first_query_rounds()
        rows = {r["hash"]: r for r in store.structure_rows()}
        results = [r for r in store.oracle_results(ok_only=True)]
        chosen = []
        for res in results:
            v = verdicts.get(res.hash)
            if hits_only and not _is_discovery(rule, v, query_round.get(res.hash)):
                continue
            chosen.append((res, v))
        out.mkdir(parents=True, exist_ok=True)
        structures = store.get_structures([res.hash for res, _ in chosen])
        csv_path = out / "summary.csv"
        with csv_path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                [
                    "hash",
                    "formula",
                    "natoms",
                    "round",
                    "source",
                    "energy_per_atom",
                    "e_hull",
                    "verdict",
                    "stable",
                    "hit",
                ]
            )
            for res, v in chosen:
                s = structures[res.hash]
                row = rows.get(res.hash, {})
                parent = rows.get(row.get("parent") or "", {})
                name = f"{s.composition.reduced_formula}_{res.hash}"
                s.to(filename=str(out / f"{name}.cif"))
                writer.writerow(
                    [
                        res.hash,
                        s.composition.reduced_formula,
                        len(s),
                        query_round.get(res.hash, ""),
                        parent.get("source", row.get("source", "")),
                        f"{res.energy_per_atom:.6f}",
                        "" if v is None else f"{v['e_hull']:.6f}",
                        rule.classify(None if v is None else v["e_hull"]).value,
                        "" if v is None else int(rule.is_stable(v["e_hull"])),
                        "" if v is None else int(rule.is_hit(v["e_hull"])),
                    ]
                )
        return {"n": len(chosen), "csv": str(csv_path), "out": str(out)}
    finally:
        store.close()
