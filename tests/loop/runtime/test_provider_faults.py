"""Provider faults through the real `optimade` client and the real CLI: a dead provider with nothing cached (exit
3), a bad URL (exit 2), and, on small stand-in HTTP servers beside the real-server tests, a provider that times out
mid-page, one that answers something that is not OPTIMADE, and one that answers nothing: one line naming the
provider and the fix, and nothing half-written."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from loop.config import validate_config
from loop.errors import CampaignHalted, InputError
from loop.runtime.provider_crystals import (
    CACHE_PATH,
    ProviderUnavailable,
    fetch_provider_crystals,
    read_cache,
)
from tests.loop import cli_process


def li_entry(ident: str) -> dict:
    return {
        "id": ident,
        "type": "structures",
        "attributes": {
            "lattice_vectors": [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]],
            "cartesian_site_positions": [[0, 0, 0]],
            "species_at_sites": ["Li"],
            "species": [{"name": "Li", "chemical_symbols": ["Li"], "concentration": [1.0]}],
            "nsites": 1,
        },
    }


class Handler(BaseHTTPRequestHandler):
    """/good answers one page; /slow answers page 1 then hangs on page 2; /html answers a web page; /empty
    answers no structure at all."""

    def log_message(self, *args) -> None:
        pass

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.api+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        host = f"http://{self.headers['Host']}"
        if self.path.startswith("/good/v1/structures"):
            self._json({"data": [li_entry("good-1")], "meta": {"data_returned": 1}, "links": {"next": None}})
        elif self.path.startswith("/slow/v1/structures"):
            if "page2" in self.path:
                time.sleep(5)  # longer than the client's timeout
                self._json({"data": [], "meta": {}, "links": {"next": None}})
            else:
                nxt = f"{host}/slow/v1/structures?page2=1"
                self._json(
                    {"data": [li_entry("slow-1")], "meta": {"data_returned": 2}, "links": {"next": nxt}}
                )
        elif self.path.startswith("/html/v1/structures"):
            data = b"<html><body>maintenance</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path.startswith("/empty/v1/structures"):
            self._json({"data": [], "meta": {"data_returned": 0}, "links": {"next": None}})
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def settings(providers: dict[str, str]):
    return validate_config(
        {
            "name": "t",
            "chemical_systems": ["Li"],
            "oracle": {"kind": "emt"},
            "references": {
                "source": "optimade",
                "optimade": {"providers": providers, "retries": 1, "timeout_s": 1.5},
            },
        }
    ).references.optimade


def test_faulty_providers_are_skipped_by_name_and_the_good_one_is_cached(stand_in, tmp_path, caplog):
    providers = {
        "good": f"{stand_in}/good",
        "slow": f"{stand_in}/slow",
        "html": f"{stand_in}/html",
        "empty": f"{stand_in}/empty",
    }
    with caplog.at_level(logging.WARNING, logger="matloop"):
        fetch_provider_crystals(settings(providers), chemical_systems=["Li"], workdir=tmp_path)
    answers = read_cache(tmp_path)
    # all pages or nothing: the slow provider's first page is not kept
    assert {a["provider"]: [e["id"] for e in a["entries"]] for a in answers} == {
        "good": ["good-1"],
        "empty": [],
    }
    lines = [r.getMessage() for r in caplog.records]
    for name in ("slow", "html"):
        (line,) = [m for m in lines if f"provider {name} " in m]
        assert "did not answer" in line and "check the URL" in line and "\n" not in line
    (empty,) = [m for m in lines if "provider empty " in m]
    assert "no structure of Li" in empty and "OPTIMADE base URL" in empty


def test_nothing_answered_and_nothing_cached_halts_and_writes_nothing(stand_in, tmp_path):
    with pytest.raises(
        ProviderUnavailable, match=r"^references: no OPTIMADE provider answered \(slow: .*\); check"
    ):
        fetch_provider_crystals(
            settings({"slow": f"{stand_in}/slow"}), chemical_systems=["Li"], workdir=tmp_path
        )
    assert not (tmp_path / CACHE_PATH).parent.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


matloop = partial(cli_process.matloop, timeout=900)


def campaign_yaml(path: Path, url: str) -> Path:
    data = {
        "name": "refs",
        "chemical_systems": ["Cu-Au"],
        "oracle": {"kind": "emt"},
        "references": {
            "source": "optimade",
            "optimade": {"providers": {"srv": url}, "retries": 0, "timeout_s": 2},
        },
        "tracking": {"enabled": False},
        "execution": {"kind": "local", "n_workers": 1},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_dead_provider_exits_3_and_bad_url_exits_2_in_one_line(tmp_path):
    root = Path(__file__).resolve().parents[3]
    dead = campaign_yaml(tmp_path / "dead.yaml", f"http://127.0.0.1:{free_port()}")
    proc = matloop("run", dead, "--workdir", tmp_path / "w", "--rounds", "0", cwd=root)
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("[matloop]")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("matloop: stopped: references: no OPTIMADE provider answered (srv: ")
    assert "references.source: bundled" in errors[0]
    assert not (tmp_path / "w" / CACHE_PATH).parent.exists()

    bad = campaign_yaml(tmp_path / "bad.yaml", "optimade.example.org")
    proc = matloop("run", bad, "--workdir", tmp_path / "w2", cwd=root)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "references.optimade.providers" in line and "provider srv" in line and "https://host/path" in line
    assert not (tmp_path / "w2").exists()


def test_a_cache_edited_by_hand_halts_with_the_fix_and_bundled_is_no_provider_name(tmp_path):
    path = tmp_path / CACHE_PATH
    path.parent.mkdir(parents=True)
    path.write_text('{"version": 1, "answers": [')  # cut short
    with pytest.raises(CampaignHalted, match=r"optimade\.json: not a cache .*; delete it to fetch again$"):
        read_cache(tmp_path)
    with pytest.raises(InputError, match="'bundled' is taken"):
        settings({"bundled": "https://example.org/optimade"})
