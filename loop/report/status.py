"""What a campaign has done so far: status, summaries and export of discoveries (works during or after a run)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loop.design.requirements import REQUIREMENTS
from loop.runtime.shortlist import ShortlistRow, rows_csv
from loop.science.hull import HullEntry, OracleHull
from loop.science.structures import space_group
from loop.science.verdicts import StabilityRule
from loop.stages import stages_of
from loop.store import CampaignStore, StoredResult, StructureRow
from loop.views.novelty import stored_novelty
from loop.views.oracle_calls import oracle_calls, reference_labels
from loop.views.round_science import campaign_science, origin


def stability_rule(store: CampaignStore) -> StabilityRule:
    """The stability rule of the campaign in `store` (its `near_stable`, from the stored config)."""
    config = store.get_meta("config") or {}
    if "near_stable" not in config:
        raise ValueError(f"{store.path}: no campaign config stored; is this a matloop workdir?")
    return StabilityRule(near_stable=float(config["near_stable"]))


def _origin_source(rows: Mapping[str, StructureRow], h: str) -> str | None:
    row = origin(rows, h)
    return None if row is None else row.source


def known_hull_distance(
    hashes: Sequence[str],
    *,
    results: Mapping[str, StoredResult],
    rows: Mapping[str, StructureRow],
    first: Mapping[str, int],
) -> dict[str, float]:
    """Energy of each labelled structure in `hashes` above the hull of the round-0 references alone (the known
    crystals at the oracle's level of theory), eV/atom; negative means below every known phase. Structures that
    cannot be placed on it (no label, a missing element) are left out.

    Args:
        results: The campaign's successful labels by hash; rows: stored structures by hash; first: the round each
            hash was first queried in (`CampaignStore.first_query_rounds`).
    """
    known = OracleHull.from_entries(
        HullEntry(entry_id=h, composition=rows[h].formula, energy_per_atom=r.energy_per_atom)
        for h, r in results.items()
        if first.get(h) == 0 and h in rows and r.energy_per_atom is not None
    )
    placed = [h for h in hashes if h in results and h in rows and results[h].energy_per_atom is not None]
    ev = known.evaluate([rows[h].formula for h in placed], [results[h].energy_per_atom for h in placed])
    return {h: float(e) for h, e in zip(placed, ev.e_above_hull, strict=True) if math.isfinite(e)}


def next_stage(store: CampaignStore) -> tuple[int, str | None]:
    """The round in progress and its first stage not done (None: the round is complete)."""
    rounds = store.rounds()
    rnd = rounds[-1].round if rounds else 0
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
        rnd, stage = next_stage(store)
        per_round = []
        # The figures MLflow logs and the science report tables: one computation (`loop.views.round_science`).
        science = {s.round: s for s in campaign_science(store)}
        for r in store.rounds():
            summary = r.summary or {}
            sci = science[r.round]
            generate = store.stage_result(r.round, "generate") or {}
            funnel = store.stage_result(r.round, "funnel") or {}
            screened = store.stage_result(r.round, "screen") or {}
            per_round.append(
                {
                    "round": r.round,
                    "status": r.status,
                    "generated": generate.get("n_generated", 0),
                    # the mix's candidates that no generator made (one's shortfall passes to the next in the mix)
                    "unmade": generate.get("unmade"),
                    # how varied the round's candidates were (the generate stage's distinct formulas, prototypes)
                    "formulas": generate.get("distinct_formulas"),
                    "prototypes": generate.get("distinct_prototypes"),
                    # substitution's structure-type search: decorations proposed
                    "decorations": generate.get("n_decorations"),
                    "passed_funnel": funnel.get("n_passed", 0),
                    # the persistent pool: candidates on offer (new and carried), carried ones, their oldest
                    "on_offer": screened.get("n_offered", screened.get("n_screened")),
                    "carried": screened.get("n_pool_carried"),
                    # of them, left at an earlier round's cheap tier: estimated again, and relaxed now
                    "carried_cheap": screened.get("n_pool_cheap_carried"),
                    "carried_cheap_relaxed": screened.get("n_pool_cheap_relaxed"),
                    # screening in tiers: new candidates relaxed, and those left at the cheap estimate
                    "relaxed": screened.get("n_relaxed", screened.get("n_screened")),
                    "cheap_only": screened.get("n_cheap_only", 0),
                    "pool_age_max": screened.get("pool_age_max"),
                    "rescore_time_s": screened.get("rescore_time_s"),
                    "queried": summary.get("queried", len(store.round_queries(r.round))),
                    "labelled": summary.get("labelled"),
                    "failed": summary.get("failed"),
                    "stable": sci.on_hull if sci.judged and r.round > 0 else None,
                    "near_stable": sci.discoveries - sci.on_hull if sci.judged and r.round > 0 else None,
                    "hits": sci.discoveries if sci.judged and r.round > 0 else None,
                    "hits_cumulative": sci.discoveries_cumulative if sci.judged else None,
                    "hit_rate": sci.discoveries_per_oracle_call,
                    "emulator_mae": sci.screening_mae,
                    "wall_time_s": sci.wall_time_s,
                }
            )
        query_round = store.first_query_rounds()
        rows = {r.hash: r for r in store.structure_rows()}
        discoveries = []
        for v in store.stability():
            if not rule.is_discovery(v.e_hull, first_round=query_round.get(v.hash)):
                continue
            row = rows.get(v.hash)
            discoveries.append(
                {
                    "hash": v.hash,
                    "formula": None if row is None else row.reduced_formula,
                    "e_hull": v.e_hull,
                    "verdict": rule.classify(v.e_hull).value,
                    "stable": rule.is_stable(v.e_hull),
                    "round": query_round[v.hash],
                    "source": _origin_source(rows, v.hash),
                }
            )
        settings_hash = identity.get("oracle")
        results = {r.hash: r for r in store.oracle_results(settings_hash=settings_hash, ok_only=True)}
        vs_known = known_hull_distance(
            [d["hash"] for d in discoveries], results=results, rows=rows, first=query_round
        )
        novelty = stored_novelty(store)
        for d in discoveries:
            d["vs_known"] = vs_known.get(d["hash"])
            # "new" or "known: <provider> <id>" (`loop.views.novelty`); a known one is a rediscovery, not new
            found = novelty.get(d["hash"])
            d["novelty"] = None if found is None else found.label
            d["known_url"] = None if found is None else found.url
        discoveries.sort(
            key=lambda d: (d["e_hull"], d["vs_known"] if d["vs_known"] is not None else math.inf)
        )
        best = discoveries[:20]
        # The symmetry of what the oracle relaxed each one to.
        finals = {d["hash"]: results[d["hash"]].structure_hash for d in best if d["hash"] in results}
        structures = store.get_structures(sorted(set(finals.values())))
        for d in best:
            d["space_group"] = space_group(structures.get(finals.get(d["hash"], d["hash"])))
        tracking = config.get("tracking") or {}
        shortlist = store.shortlist()
        return {
            "workdir": str(workdir),
            "campaign": identity.get("name"),
            "chemical_systems": identity.get("chemical_systems"),
            "near_stable": rule.near_stable,
            "round": rnd,
            "stage": stage or "done",
            "stopped_because": store.get_meta("stopped_because"),
            # `loop.views.oracle_calls`: the stop rule's count; round 0's reference labels apart
            "oracle_calls": oracle_calls(store),
            "reference_labels": reference_labels(store),
            "max_oracle_calls": (config.get("stop") or {}).get("max_oracle_calls"),
            "counts": store.counts(),
            "rounds": per_round,
            "discoveries": best,
            "n_discoveries": len(discoveries),
            "n_new_discoveries": sum(1 for d in discoveries if not (d["novelty"] or "").startswith("known")),
            "n_rediscoveries": sum(1 for d in discoveries if (d["novelty"] or "").startswith("known")),
            # every hit judged against the design requirements (`loop.runtime.shortlist`), passing first
            "shortlist": shortlist,
            "n_shortlisted": sum(1 for r in shortlist if r["status"] == "pass"),
            "mlflow": tracking.get("tracking_uri")
            or f"sqlite:///{Path(workdir).resolve() / 'mlflow' / 'mlflow.db'}",
        }
    finally:
        if own:
            store.close()


def make_console() -> Console:
    """Rich output to stdout; a log file or pipe gets 132 columns (rich's 80 cut the round table's headers)."""
    out = Console()
    return out if out.is_terminal else Console(width=132)


def render_status(info: dict[str, Any]) -> None:
    console = make_console()
    console.print(
        f"[bold]{info['campaign']}[/bold] ({', '.join(info['chemical_systems'] or [])}) in {info['workdir']}: "
        f"round {info['round']}, next stage: {info['stage']}"
    )
    counts = info["counts"]
    console.print(", ".join(f"{k} {v}" for k, v in counts.items()))
    limit = info.get("max_oracle_calls")
    console.print(
        f"oracle calls {info['oracle_calls']}{'' if limit is None else f' of {limit}'} "
        f"(rounds >= 1), reference labels {info['reference_labels']} (round 0)"
    )
    table = Table(title="rounds (E in eV/atom)")
    cols = (
        "round",
        "generated",
        "formulas",
        "prototypes",
        "passed_funnel",
        "on_offer",
        "carried",
        "queried",
        "labelled",
        "failed",
    )
    cols += ("stable", "near_stable", "hits", "hit_rate", "emulator_mae", "wall_time_s")
    heads = (
        "round",
        "gen",
        "forms",
        "types",
        "funnel",
        "offer",
        "carried",
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
    tiered = [r for r in info["rounds"] if r.get("cheap_only")]
    if tiered:
        console.print(
            "screened in tiers (not offered: left at the cheap estimate, estimated again next round): "
            + ", ".join(
                f"round {r['round']} {r['cheap_only']} of {r['passed_funnel']}"
                + (f" new and {r['carried_cheap']} carried" if r.get("carried_cheap") else "")
                for r in tiered
            )
        )
    if info["discoveries"]:
        disc = Table(
            title=f"best discoveries ({info['n_discoveries']} hits, {info.get('n_rediscoveries', 0)} of them known "
            f"crystals: E_hull <= {info['near_stable']} eV/atom; "
            "vs known: E above the hull of the round-0 references, < 0 is below every known phase)"
        )
        cols = ("formula", "space_group", "e_hull", "vs_known", "stable", "round", "source", "novelty")
        cols += ("hash",)
        for c in cols:
            disc.add_column(c.replace("_", " "))
        for d in info["discoveries"][:10]:
            disc.add_row(*(_fmt(d.get(c)) for c in cols))
        console.print(disc)
    if info.get("shortlist"):
        title = (
            f"shortlist: {info['n_shortlisted']} of {len(info['shortlist'])} hits pass every design requirement "
            "(+ pass, x fail, ? unknown)"
        )
        if not any(row.get("asked") for row in info["shortlist"]):
            # "3 of 3 pass" would read as a verdict; with nothing asked it is only the list of hits.
            title = (
                f"shortlist: {len(info['shortlist'])} hits; the config sets no design requirement (design:), "
                "so none is judged (? not asked)"
            )
        console.print(shortlist_table(info["shortlist"][:20], title=title))
    if info.get("stopped_because"):
        console.print(f"stopped: {info['stopped_because']}")


_MARK = {"pass": "+", "fail": "x", "unknown": "?"}
_SHORT = {
    "elements": "elements",
    "cost": "HHI",
    "density": "g/cm3",
    "band_gap": "gap eV",
    "electrochemical_window": "window V",
    "conductivity": "mS/cm 300K",
    "phonons": "phonon THz",
    "thermal": "thermal",
}


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    value = result.get("value")
    if isinstance(value, float):
        value = f"{value:.3g}"
    return f"{_MARK.get(result['status'], '?')} {'' if value is None else value}".strip()


def shortlist_table(rows: list[dict[str, Any]], *, title: str) -> Table:
    """Shortlist rows (`ShortlistRow.to_dict()`) as a table: per requirement its mark and value; a requirement
    the design does not ask is shown in brackets."""
    table = Table(title=title)
    for head in ("formula", "E_hull", "status", *(_SHORT[r] for r in REQUIREMENTS), "hash"):
        table.add_column(head)
    for row in rows:
        asked = set(row.get("asked") or [])
        cells = []
        for name in REQUIREMENTS:
            text = _cell(row["requirements"].get(name))
            cells.append(text if name in asked or text == "-" else f"({text})")
        table.add_row(row["formula"], _fmt(row.get("e_hull")), row["status"], *cells, row["hash"])
    return table


def render_summary(info: dict[str, Any]) -> None:
    render_status(info)
    make_console().print(
        f"dashboard: matloop ui --workdir {info['workdir']}   (MLflow store {info['mlflow']})\n"
        f"export:    matloop export --workdir {info['workdir']} --hits --out discoveries/"
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
    (stable / near_stable / unstable / unplaced, `loop.science.verdicts`), stable (0/1), hit (0/1), novelty ("new" or
    "known: <provider> <id>", `loop.views.novelty`; empty for references), known_url. When the campaign has a shortlist,
    `shortlist.csv` beside it holds every hit's row against the design requirements (`loop.runtime.shortlist.rows_csv`).
    """
    store = CampaignStore.in_workdir(workdir)
    try:
        rule = stability_rule(store)
        verdicts = {v.hash: v for v in store.stability()}
        query_round = store.first_query_rounds()
        rows = {r.hash: r for r in store.structure_rows()}
        results = [r for r in store.oracle_results(ok_only=True)]
        novelty = stored_novelty(store)
        chosen = []
        for res in results:
            v = verdicts.get(res.hash)
            e_hull = None if v is None else v.e_hull
            if hits_only and not rule.is_discovery(e_hull, first_round=query_round.get(res.hash)):
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
                    "novelty",
                    "known_url",
                ]
            )
            for res, v in chosen:
                s = structures[res.hash]
                e_hull = None if v is None else v.e_hull
                name = f"{s.composition.reduced_formula}_{res.hash}"
                s.to(filename=str(out / f"{name}.cif"))
                writer.writerow(
                    [
                        res.hash,
                        s.composition.reduced_formula,
                        len(s),
                        query_round.get(res.hash, ""),
                        _origin_source(rows, res.hash) or "",
                        f"{res.energy_per_atom:.6f}",
                        "" if e_hull is None else f"{e_hull:.6f}",
                        rule.classify(e_hull).value,
                        "" if e_hull is None else int(rule.is_stable(e_hull)),
                        "" if e_hull is None else int(rule.is_hit(e_hull)),
                        novelty[res.hash].label if res.hash in novelty else "",
                        (novelty[res.hash].url or "") if res.hash in novelty else "",
                    ]
                )
        shortlist = store.shortlist()
        if shortlist:
            # every hit against the design requirements, passing first (`loop.runtime.shortlist`)
            (out / "shortlist.csv").write_text(rows_csv([ShortlistRow.from_dict(r) for r in shortlist]))
        return {"n": len(chosen), "csv": str(csv_path), "out": str(out), "n_shortlist_rows": len(shortlist)}
    finally:
        store.close()
