"""References from the public databases, against a REAL OPTIMADE server (the `optimade` package's reference
implementation) started here on 127.0.0.1 and asked through the package's own HTTP client: the references and the
novelty verdicts come from it, the cache answers every later question, and a dead server gives the documented
error (nothing cached) or the cached answer."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient
from pymatgen.core import Lattice, Structure

from generator.seeds import load_seeds
from loop.campaign import Campaign, run_stage
from loop.config import validate_config
from loop.errors import InputError
from loop.report.science import collect, render_html
from loop.report.status import campaign_status, export_discoveries
from loop.runtime.labelling import label_hashes
from loop.runtime.provider_crystals import (
    CACHE_PATH,
    ProviderUnavailable,
    entry_structure,
    fetch_provider_crystals,
    subsystem_filters,
)
from loop.stages import references, update
from loop.stages.base import StageContext
from loop.store import CampaignStore, Query
from loop.tracking.campaign import track_round
from loop.views.known_index import known_index
from loop.views.novelty import stored_novelty
from loop.views.withholding import provider_crystals
from tests.loop.cli_process import matloop
from tests.loop.optimade_server import write_jsonl
from tests.loop.quick_campaign import quick_config

SERVER = Path(__file__).parents[1] / "optimade_server.py"


def b32_lial() -> Structure:
    """B32 (NaTl-type) LiAl, the PBE ground state of LiAl, which no bundled row holds."""
    conventional = Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(6.37), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return conventional.get_primitive_structure()


def l12_lial3() -> Structure:
    """L1_2 LiAl3 (δ′-Al3Li), the demo's 'discovery'."""
    return Structure(
        Lattice.cubic(4.03),
        ["Li", "Al", "Al", "Al"],
        [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
    )


def overlapping() -> dict:
    """A broken entry: two atoms 0.1 Å apart."""
    from optimade.adapters.structures.pymatgen import from_pymatgen

    s = Structure(Lattice.cubic(4.0), ["Li", "Al"], [[0, 0, 0], [0.025, 0, 0]])
    return {
        **from_pymatgen(s).model_dump(mode="json", exclude_none=True),
        "last_modified": "2026-01-01T00:00:00Z",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The reference OPTIMADE server in a child process; its request log counts what the client asked."""

    def __init__(self, tmp: Path, structures: dict[str, Structure] | None = None) -> None:
        data = tmp / "structures.jsonl"
        if structures is None:
            fcc_al = load_seeds(ids=["mp-134"])[0].structure
            structures = {"srv-b32": b32_lial(), "srv-l12": l12_lial3(), "mp-134": fcc_al}
        write_jsonl(data, structures, raw={"srv-broken": overlapping()})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        env = {**os.environ, "OPTIMADE_CONFIG_FILE": str(tmp / "none.json")}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(SERVER), str(data), str(self.port)], stdout=log, stderr=log, env=env
            )
        for _ in range(600):
            try:
                if requests.get(f"{self.url}/v1/info", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-2000:])
            time.sleep(0.1)
        raise RuntimeError("the OPTIMADE server did not start")

    def structure_requests(self) -> int:
        return sum("GET /v1/structures" in line for line in self.log.read_text().splitlines())

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    yield srv
    srv.kill()


def config(url: str, max_compounds: int = 10, **kw):
    data = {
        "name": "t",
        "chemical_systems": ["Li-Al"],
        "oracle": {"kind": "emt"},
        "references": {
            "source": "optimade",
            "optimade": {"providers": {"srv": url}, "retries": 0, "timeout_s": 10},
            "max_compounds": max_compounds,
            "max_element_atoms": 2,
        },
        **kw,
    }
    return validate_config(data)


def test_references_come_from_a_real_optimade_server_then_from_the_cache_only(server, tmp_path):
    cfg = config(server.url, withhold=["LiAl3"])
    workdir = tmp_path / "campaign"
    store = CampaignStore.in_workdir(workdir)
    report = run_stage(references.STAGE, StageContext(config=cfg, store=store, workdir=workdir, round=0))

    cache = json.loads((workdir / CACHE_PATH).read_text())
    answers = cache["answers"]
    assert {a["filter"] for a in answers} == set(subsystem_filters(["Li-Al"], max_sites=20))
    assert all(a["provider"] == "srv" and a["base_url"] == server.url and a["fetched_at"] for a in answers)
    ids = sorted(e["id"] for a in answers for e in a["entries"])
    assert ids == ["mp-134", "srv-b32", "srv-l12"]  # every page followed (the server pages by 2)
    assert [s["id"] for a in answers for s in a["skipped"]] == ["srv-broken"]

    # The withheld formula covers the server's L1_2 LiAl3 too; the rest feed the references.
    crystals = {c.id: c for c in provider_crystals(cfg, workdir=workdir)}
    assert crystals["srv-l12"].withheld and not crystals["srv-b32"].withheld
    assert report["providers"] == {"srv": {"n": 3, "n_withheld": 1}}
    parents = {r.hash: r for r in store.structure_rows()}
    queried = [parents[q.hash] for q in store.round_queries(0)]
    picked = {r.parent for r in queried}
    # The emulator puts the server's B32 below every bundled LiAl polymorph: it is the LiAl reference.
    lial = [r.parent for r in queried if store.get_structure(r.hash).composition.reduced_formula == "LiAl"]
    assert lial == ["optimade:srv:srv-b32"]
    assert report["n_provider_references"] == 1
    assert "optimade:srv:srv-l12" not in picked  # withheld
    assert "optimade:srv:mp-134" not in picked and "mp-134" in picked  # the same fcc Al as the bundled one
    b32_row = next(r for r in queried if r.parent == "optimade:srv:srv-b32")
    assert b32_row.provenance["url"] == f"{server.url}/v1/structures/srv-b32"

    # A resumed round 0 asks the cache, not the server.
    asked = server.structure_requests()
    assert asked >= 3
    fetch_provider_crystals(cfg.references.optimade, chemical_systems=cfg.chemical_systems, workdir=workdir)
    assert server.structure_requests() == asked

    # The server dies: everything after round 0 reads the cache, offline.
    server.kill()
    fetch_provider_crystals(cfg.references.optimade, chemical_systems=cfg.chemical_systems, workdir=workdir)
    assert {c.id for c in provider_crystals(cfg, workdir=workdir)} == {"mp-134", "srv-b32", "srv-l12"}
    store.close()


def test_a_dead_provider_with_nothing_cached_halts_in_one_line_and_writes_nothing(server, tmp_path):
    url = server.url
    server.kill()
    cfg = config(url)
    workdir = tmp_path / "campaign"
    with pytest.raises(ProviderUnavailable) as info:
        fetch_provider_crystals(
            cfg.references.optimade, chemical_systems=cfg.chemical_systems, workdir=workdir
        )
    message = str(info.value)
    assert "\n" not in message and "srv:" in message and "references.source: bundled" in message
    assert not (workdir / CACHE_PATH).exists() and not (workdir / CACHE_PATH).parent.exists()


def test_a_bad_provider_url_is_a_config_error():
    for bad in ("optimade.materialsproject.org", "ftp://host/optimade", "https://host/x?filter=1"):
        with pytest.raises(InputError, match=r"references\.optimade\.providers.*srv.*https://host/path"):
            config(bad)


def test_entries_that_are_not_ordered_3d_crystals_are_refused():
    good = {
        "attributes": {
            "lattice_vectors": np.eye(3).tolist(),
            "cartesian_site_positions": [[0, 0, 0]],
            "species_at_sites": ["Li"],
            "species": [{"name": "Li", "chemical_symbols": ["Li"], "concentration": [1.0]}],
        }
    }
    assert entry_structure(good).composition.reduced_formula == "Li"
    attrs = good["attributes"]
    broken = [
        {**attrs, "species": [{"name": "Li", "chemical_symbols": ["Li", "Na"], "concentration": [0.5, 0.5]}]},
        {**attrs, "nperiodic_dimensions": 2},
        {**attrs, "structure_features": ["disorder"]},
        {**attrs, "lattice_vectors": [[1, 0, 0], [0, 1, 0], [0, 0, None]]},
        {**attrs, "species_at_sites": ["X"]},
        {**attrs, "cartesian_site_positions": []},
    ]
    for attributes in broken:
        with pytest.raises(ValueError):
            entry_structure({"attributes": attributes})


def b2_cuau() -> Structure:
    return Structure(Lattice.cubic(3.15), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def l12_cu3au() -> Structure:
    return Structure(
        Lattice.cubic(3.75),
        ["Au", "Cu", "Cu", "Cu"],
        [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
    )


def stacked_cuau2() -> Structure:
    """A CuAu2 stacking no database holds."""
    return Structure(
        Lattice.tetragonal(2.9, 8.4), ["Cu", "Au", "Au"], [[0, 0, 0], [0, 0, 1 / 3], [0, 0, 2 / 3]]
    )


def test_every_discovery_is_new_or_a_known_crystal_cited_from_the_server_or_the_bundle(tmp_path):
    """EMT on Cu-Au: the server serves B2 CuAu (no bundled row has it); L1_2 Cu3Au is bundled and withheld. The
    server dies after round 0, and round 1's verdicts still cite it, from the cache."""
    server = Server(tmp_path, {"srv-b2": b2_cuau()})
    workdir = tmp_path / "campaign"
    cfg = config(server.url, max_compounds=0, chemical_systems=["Cu-Au"], withhold=["Cu3Au"], near_stable=2.0)
    store = CampaignStore.in_workdir(workdir)
    store.set_meta("identity", Campaign.identity(cfg))
    store.set_meta("config", cfg.model_dump(mode="json"))
    try:
        run_stage(references.STAGE, StageContext(config=cfg, store=store, workdir=workdir, round=0))
    finally:
        server.kill()
    refs = [q.hash for q in store.round_queries(0)]
    label_hashes(store, refs, settings=cfg.oracle, workdir=workdir, round=0)
    run_stage(update.STAGE, StageContext(config=cfg, store=store, workdir=workdir, round=0))
    assert stored_novelty(store) == {}  # references are no discoveries

    # The funnel's novelty index knows the server's crystal (the campaign would not propose it as new) ...
    index = known_index(cfg, store=store, before_round=1)
    assert index.find(b2_cuau()) == ("optimade:srv:srv-b2", "seed")
    # ... but round 1 labels it anyway (as a candidate that relaxed into it would be), beside the withheld L1_2
    # Cu3Au and a new stacking.
    made = {"b2": b2_cuau(), "l12": l12_cu3au(), "new": stacked_cuau2()}
    hashes = {k: store.add_structure(s, source="random_search", round=1) for k, s in made.items()}
    store.add_queries(
        1, [Query(hash=h, strategy="p_stable", rank=i, score=None) for i, h in enumerate(hashes.values())]
    )
    label_hashes(store, list(hashes.values()), settings=cfg.oracle, workdir=workdir, round=1)
    report = run_stage(update.STAGE, StageContext(config=cfg, store=store, workdir=workdir, round=1))

    novelty = stored_novelty(store)
    assert novelty[hashes["b2"]].label == "known: srv srv-b2"
    assert novelty[hashes["b2"]].url == f"{server.url}/v1/structures/srv-b2"
    assert novelty[hashes["l12"]].label == "known: bundled mp-2258 (withheld)"
    assert novelty[hashes["new"]].label == "new"
    assert report["n_hits_new"] == 3  # all within 2 eV/atom of the hull
    assert report["n_new_discoveries"] == 1 and report["n_rediscoveries_new"] == 2
    assert report["cumulative_new_discoveries"] == 1 and report["cumulative_rediscoveries"] == 2

    status = campaign_status(workdir, store=store)
    labels = {d["hash"]: d["novelty"] for d in status["discoveries"]}
    assert labels == {h: novelty[h].label for h in hashes.values()}
    assert status["n_new_discoveries"] == 1 and status["n_rediscoveries"] == 2
    store.close()
    export_discoveries(workdir, out=tmp_path / "out", hits_only=True)
    with open(tmp_path / "out" / "summary.csv") as fh:
        rows = {r["hash"]: r for r in csv.DictReader(fh)}
    assert {h: rows[h]["novelty"] for h in hashes.values()} == labels
    assert rows[hashes["l12"]]["known_url"].endswith("/materials/mp-2258")

    # MLflow: the round run and the campaign's parent run count new discoveries apart from rediscoveries.
    store = CampaignStore.in_workdir(workdir)
    logged = track_round(cfg, store=store, round=1, workdir=workdir)
    store.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    round_run = client.get_run(logged["round_run"]).data.metrics
    assert (
        round_run["stage/update.n_new_discoveries"] == 1
        and round_run["stage/update.n_rediscoveries_new"] == 2
    )
    parent = client.get_run(logged["parent_run"]).data.metrics
    assert parent["new_discoveries_cumulative"] == 1 and parent["rediscoveries_cumulative"] == 2

    # The science report links each known crystal to its provider's entry.
    data = collect(workdir)
    cited = {d.call.hash: d.novelty.label for d in data.discoveries}
    assert cited == labels
    page = render_html(data)
    assert f'href="{server.url}/v1/structures/srv-b2">known: srv srv-b2</a>' in page
    assert "Discoveries (3, of which 2 known crystals)" in page


def simple_cubic_au() -> Structure:
    return Structure(Lattice.cubic(2.72), ["Au"], [[0, 0, 0]])


@pytest.mark.slow
def test_a_campaign_takes_references_from_the_server_and_goes_on_from_the_cache_once_it_is_dead(tmp_path):
    """`matloop run` on Cu-Au (EMT): round 0 fetches from the real server and labels its simple-cubic Au; the
    server is killed; round 1 runs from the cache and records a novelty verdict for every label."""
    server = Server(tmp_path, {"srv-sc-au": simple_cubic_au(), "srv-b2": b2_cuau()})
    root = Path(__file__).resolve().parents[3]
    data = quick_config(name="optimade-cu-au", rounds=1, tracking={"enabled": False})
    data["references"] = {
        "source": "optimade",
        "optimade": {"providers": {"srv": server.url}, "retries": 0, "timeout_s": 10},
        "max_compounds": 2,
        "max_atoms": 8,
        "max_element_atoms": 1,
    }
    cfg_path = tmp_path / "campaign.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    workdir = tmp_path / "w"

    def run(rounds: int) -> subprocess.CompletedProcess:
        return matloop("run", cfg_path, "--workdir", workdir, "--rounds", rounds, cwd=root)

    try:
        first = run(0)
        assert first.returncode == 0, first.stderr[-3000:]
        asked = server.structure_requests()
    finally:
        server.kill()
    assert asked >= 3 and (workdir / CACHE_PATH).is_file()
    store = CampaignStore.in_workdir(workdir)
    parents = {r.hash: r.parent for r in store.structure_rows()}
    ok = {r.hash for r in store.oracle_results() if r.ok}
    labelled = {parents[q.hash] for q in store.round_queries(0) if q.hash in ok}
    assert "optimade:srv:srv-sc-au" in labelled  # a provider polymorph, labelled by the oracle
    store.close()

    second = run(1)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "did not answer" not in second.stderr  # nothing was asked: the cache answered
    store = CampaignStore.in_workdir(workdir)
    first_round = store.first_query_rounds()
    round1 = {r.hash for r in store.oracle_results() if r.ok and first_round.get(r.hash) == 1}
    novelty = stored_novelty(store)
    store.close()
    assert round1 and round1 <= set(novelty)
    assert all(n.label == "new" or n.label.startswith("known: ") for n in novelty.values())
