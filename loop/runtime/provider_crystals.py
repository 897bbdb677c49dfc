"""Known crystals from the public databases: every structure of the target systems that OPTIMADE providers serve.

`references.source: optimade` asks each configured provider (Materials Project, Alexandria, OQMD, COD, ... by
their OPTIMADE base URLs) for every structure of the target systems and of each of their subsystems up to
`max_sites` atoms, through the `optimade` package's client. The answers are cached in the workdir
(`references/optimade.json`: provider, base URL, filter, date and each structure with its provider id), written
once and atomically, so a resumed campaign never queries again and runs offline. Only round 0's references stage
queries (`fetch_provider_crystals`); everything after it reads the cache (`cached_provider_crystals`).

The crystals feed the round-0 references, the funnel's novelty index, the substitution parents and the novelty
verdicts (`loop.views.novelty`). Withholding applies to them as to the bundled ones: a crystal whose id or formula is
withheld, or that is the same crystal (StructureMatcher) as a withheld bundled one, is left out of everything but
the novelty verdict, which says it was withheld.

Faults: a provider that cannot be reached, times out (also mid-page), answers with something that is not OPTIMADE
JSON, or answers nothing at all is retried `retries` times, then skipped with one warning line naming it; an entry
that is not a valid ordered 3D crystal is skipped with one line. When no provider answered and nothing is
cached, the campaign halts (`ProviderUnavailable`, exit code 3) and writes nothing; a malformed base URL is a config
error (exit code 2).

Lengths Å; dates UTC ISO 8601.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pymatgen.core import Element, Lattice, Structure

from generator.base import KnownStructure
from loop.errors import CampaignHalted

log = logging.getLogger("matloop")

CACHE_PATH = Path("references") / "optimade.json"
"""Where the answers are cached, relative to the workdir."""
CACHE_VERSION = 1
PROVIDER_PREFIX = "optimade:"
"""Id prefix of a provider crystal in the campaign ("optimade:mp:mp-149")."""
# The big public providers that serve OPTIMADE (base URLs, i.e. what precedes /v1/structures).
DEFAULT_PROVIDERS: dict[str, str] = {
    "mp": "https://optimade.materialsproject.org",
    "alexandria": "https://alexandria.icams.rub.de/pbe",
    "oqmd": "https://oqmd.org/optimade",
    "cod": "https://www.crystallography.net/cod/optimade",
}
_MIN_DISTANCE = 0.5  # Å: closer atoms mean a broken entry, not a crystal


class ProviderUnavailable(CampaignHalted):
    """No OPTIMADE provider answered and nothing is cached: the references cannot be built as configured."""


class OptimadeSettings(BaseModel):
    """Which OPTIMADE providers to ask, and how.

    Attributes:
        providers: Provider name -> OPTIMADE base URL (what precedes `/v1/structures`). The name is how verdicts
            cite a crystal ("known: mp mp-149"). Default: Materials Project, Alexandria (PBE), OQMD, COD.
        max_sites: Largest cell fetched, atoms (the funnel's novelty index wants at least its `max_atoms`).
        timeout_s: Timeout of each HTTP request, s.
        retries: Further attempts at a query that failed (unreachable, timed out, malformed answer).
        max_results: Most structures taken from one provider for one subsystem (a truncated answer is logged).
    """

    model_config = ConfigDict(extra="forbid")

    providers: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PROVIDERS), min_length=1)
    max_sites: int = Field(default=20, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    retries: int = Field(default=2, ge=0)
    max_results: int = Field(default=2000, ge=1)

    @field_validator("providers")
    @classmethod
    def _urls(cls, providers: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, url in providers.items():
            if not name or not all(c.isalnum() or c in "_-." for c in name):
                raise ValueError(f"provider name {name!r}: use letters, digits, '_', '-' or '.'")
            if name == "bundled":  # verdicts cite the bundled crystals as "known: bundled <id>"
                raise ValueError("provider name 'bundled' is taken by the bundled crystals; choose another")
            parsed = urlparse(str(url))
            if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
                raise ValueError(
                    f"provider {name}: {url!r} is not an OPTIMADE base URL; write it as "
                    "https://host/path (what precedes /v1/structures)"
                )
            out[name] = str(url).rstrip("/")
        return out


@dataclass(frozen=True)
class ProviderCrystal:
    """One structure a provider served.

    Attributes:
        provider: The provider's name in the config.
        id: The provider's entry id.
        structure: The crystal.
        url: Where the entry can be read (the provider's OPTIMADE entry endpoint).
        withheld: Whether the campaign withholds it (rediscovery mode).
    """

    provider: str
    id: str
    structure: Structure
    url: str
    withheld: bool = False

    @property
    def key(self) -> str:
        """Its id in the campaign: "optimade:<provider>:<id>"."""
        return f"{PROVIDER_PREFIX}{self.provider}:{self.id}"

    def as_known(self) -> KnownStructure:
        return KnownStructure(
            id=self.key,
            structure=self.structure,
            properties={
                "formula": self.structure.composition.reduced_formula,
                "provider": self.provider,
                "provider_id": self.id,
                "url": self.url,
                "source": "optimade",
            },
        )


def subsystem_filters(chemical_systems: Sequence[str], *, max_sites: int) -> list[str]:
    """One OPTIMADE filter per subsystem of the target systems (each element alone, each pair, ...).

    `elements HAS ALL ... AND nelements=n` is the form every provider supports (`HAS ONLY` is optional).
    """
    subsystems: set[tuple[str, ...]] = set()
    for system in chemical_systems:
        elements = sorted(system.split("-"))
        for n in range(1, len(elements) + 1):
            subsystems.update(itertools.combinations(elements, n))
    return [
        f"elements HAS ALL {','.join(json.dumps(e) for e in sub)} AND nelements={len(sub)} AND nsites<={max_sites}"
        for sub in sorted(subsystems, key=lambda s: (len(s), s))
    ]


def entry_structure(entry: dict[str, Any]) -> Structure:
    """The ordered 3D crystal of one OPTIMADE structures entry.

    Raises:
        ValueError: not a periodic ordered crystal (disorder, vacancies, fewer than 3 periodic directions), an
            unknown element, missing or non-finite numbers, a zero volume, or atoms closer than 0.5 Å.
    """
    attrs = entry.get("attributes") or {}
    dims = attrs.get("dimension_types")
    if attrs.get("nperiodic_dimensions", 3) != 3 or (dims is not None and list(dims) != [1, 1, 1]):
        raise ValueError("not periodic in 3 directions")
    if "disorder" in (attrs.get("structure_features") or []):
        raise ValueError("disordered")
    symbols = {}
    for sp in attrs.get("species") or []:
        elements = sp.get("chemical_symbols") or []
        conc = sp.get("concentration") or [1.0]
        if len(elements) != 1 or abs(float(conc[0]) - 1.0) > 1e-6 or not Element.is_valid_symbol(elements[0]):
            raise ValueError(f"species {sp.get('name')!r} is not one element at full occupancy")
        symbols[sp["name"]] = elements[0]
    names = attrs.get("species_at_sites") or []
    try:
        species = [symbols[n] for n in names]
    except KeyError as exc:
        raise ValueError(f"site species {exc.args[0]!r} is not declared") from None
    lattice = np.asarray(attrs.get("lattice_vectors"), dtype=float)
    coords = np.asarray(attrs.get("cartesian_site_positions"), dtype=float)
    if lattice.shape != (3, 3) or coords.shape != (len(species), 3) or not species:
        raise ValueError("missing or misshapen lattice or positions")
    if not (np.isfinite(lattice).all() and np.isfinite(coords).all()):
        raise ValueError("non-finite lattice or positions")
    if abs(np.linalg.det(lattice)) < 1e-3:
        raise ValueError("zero cell volume")
    structure = Structure(Lattice(lattice), species, coords, coords_are_cartesian=True)
    if len(structure) > 1:
        distances = structure.distance_matrix[np.triu_indices(len(structure), 1)]
        if distances.min() < _MIN_DISTANCE:
            raise ValueError(f"atoms {distances.min():.2f} Å apart")
    return structure


@dataclass(frozen=True)
class QueryAnswer:
    """One provider's answer to one filter (what the cache keeps of it)."""

    provider: str
    base_url: str
    filter: str
    fetched_at: str
    entries: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    truncated: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "base_url": self.base_url,
            "filter": self.filter,
            "fetched_at": self.fetched_at,
            "truncated": self.truncated,
            "entries": self.entries,
            "skipped": self.skipped,
        }


class QueryFailed(Exception):
    """One provider could not answer one filter after every attempt; the message says why."""


def _quiet_client(settings: OptimadeSettings, base_url: str) -> Any:
    from optimade.client import OptimadeClient  # its HTTP stack loads only when a provider is asked

    return OptimadeClient(
        base_urls=[base_url],
        max_results_per_provider=settings.max_results,
        http_timeout=settings.timeout_s,
        max_attempts=1,
        use_async=False,  # synchronous requests: works inside an event loop and a Dask worker alike
        silent=True,
    )


def query_provider(settings: OptimadeSettings, *, provider: str, filter: str) -> QueryAnswer:
    """Every structure `provider` serves for `filter`, through the `optimade` client, all pages or nothing.

    Raises:
        QueryFailed: unreachable, timed out (also mid-page), an HTTP error, or an answer that is not OPTIMADE JSON,
            on every one of the 1 + `retries` attempts.
    """
    base_url = settings.providers[provider]
    error = ""
    for attempt in range(settings.retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt, 10.0))
        client = _quiet_client(settings, base_url)
        sink = io.StringIO()
        # The client prints its errors on the console; the campaign reports them as one line instead.
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            answer = client.get_one("structures", filter, base_url)[base_url]
        if answer.errors or not isinstance(answer.data, list):
            error = _first_line(answer.errors[0] if answer.errors else "the answer holds no list of entries")
            continue
        entries, skipped = [], []
        for entry in answer.data:
            ident = str(entry.get("id", "?")) if isinstance(entry, dict) else "?"
            try:
                structure = entry_structure(entry)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                skipped.append({"id": ident, "reason": str(exc)})
                continue
            entries.append({"id": ident, "structure": structure.as_dict()})
        return QueryAnswer(
            provider=provider,
            base_url=base_url,
            filter=filter,
            fetched_at=datetime.now(UTC).isoformat(timespec="seconds"),
            entries=entries,
            skipped=skipped,
            truncated=len(answer.data) >= settings.max_results,
        )
    raise QueryFailed(error)


def _first_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


def cache_file(workdir: Path) -> Path:
    return Path(workdir) / CACHE_PATH


def read_cache(workdir: Path) -> list[dict[str, Any]]:
    """The cached answers (empty when nothing was fetched)."""
    path = cache_file(workdir)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or "answers" not in data:
        raise CampaignHalted(
            f"{path}: not a cache this matloop wrote (edited by hand?); delete it to fetch again"
        )
    return list(data["answers"])


def _write_cache(workdir: Path, answers: Iterable[dict[str, Any]]) -> None:
    path = cache_file(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": CACHE_VERSION, "answers": list(answers)}))
    os.replace(tmp, path)  # all or nothing: a killed process leaves the previous cache (or none)


def fetch_provider_crystals(
    settings: OptimadeSettings, *, chemical_systems: Sequence[str], workdir: Path
) -> None:
    """Ask every provider every subsystem filter that the cache does not answer yet, and cache the answers.

    Raises:
        ProviderUnavailable: no provider answered anything and nothing is cached (nothing is written).
    """
    filters = subsystem_filters(chemical_systems, max_sites=settings.max_sites)
    cached = read_cache(workdir)
    have = {(a["provider"], a["base_url"], a["filter"]) for a in cached}
    todo = [(p, f) for p in settings.providers for f in filters if (p, settings.providers[p], f) not in have]
    if not todo:
        return
    answers: list[QueryAnswer] = []
    failed: dict[str, str] = {}
    for provider, filter in todo:
        if provider in failed:
            continue  # one failure per provider is enough: it is down or not an OPTIMADE server
        try:
            answers.append(query_provider(settings, provider=provider, filter=filter))
        except QueryFailed as exc:
            failed[provider] = str(exc)
    for provider, why in failed.items():
        log.warning(
            "references: provider %s (%s) did not answer: %s; its crystals are left out (check the URL or the "
            "network, or drop it from references.optimade.providers)",
            provider,
            settings.providers[provider],
            why,
        )
    answers = [a for a in answers if a.provider not in failed]  # a provider counts whole or not at all
    for provider in {a.provider for a in answers}:
        mine = [a for a in answers if a.provider == provider]
        skipped = [s for a in mine for s in a.skipped]
        if skipped:
            log.warning(
                "references: provider %s served %d invalid structure(s), skipped (first: %s: %s)",
                provider,
                len(skipped),
                skipped[0]["id"],
                skipped[0]["reason"],
            )
        if any(a.truncated for a in mine):
            log.warning(
                "references: provider %s has more than %d structures for a subsystem; raise "
                "references.optimade.max_results for a complete novelty index",
                provider,
                settings.max_results,
            )
        if not any(a.entries for a in mine):
            log.warning(
                "references: provider %s (%s) has no structure of %s up to %d atoms; check that the URL is the "
                "provider's OPTIMADE base URL",
                provider,
                settings.providers[provider],
                ", ".join(chemical_systems),
                settings.max_sites,
            )
    if not answers and not cached:
        reasons = "; ".join(f"{p}: {why}" for p, why in failed.items())
        raise ProviderUnavailable(
            f"references: no OPTIMADE provider answered ({reasons}); check the network or the URLs in "
            "references.optimade.providers, or set references.source: bundled"
        )
    if answers:
        _write_cache(workdir, [*cached, *(a.as_dict() for a in answers)])


def cached_provider_crystals(
    settings: OptimadeSettings, *, chemical_systems: Sequence[str], workdir: Path
) -> list[ProviderCrystal]:
    """The cached crystals of the configured providers inside the target systems, in provider order, each entry
    once (withholding is not applied here; see `loop.views.withholding.provider_crystals`). Never queries."""
    systems = [frozenset(s.split("-")) for s in chemical_systems]
    by_provider: dict[str, list[ProviderCrystal]] = {p: [] for p in settings.providers}
    seen: set[tuple[str, str]] = set()
    for answer in read_cache(workdir):
        provider = answer["provider"]
        if settings.providers.get(provider) != answer["base_url"]:
            continue
        for e in answer["entries"]:
            if (provider, e["id"]) in seen:
                continue
            structure = Structure.from_dict(e["structure"])
            elements = {el.symbol for el in structure.composition.elements}
            if len(structure) > settings.max_sites or not any(elements <= s for s in systems):
                continue
            seen.add((provider, e["id"]))
            by_provider[provider].append(
                ProviderCrystal(
                    provider=provider,
                    id=e["id"],
                    structure=structure,
                    url=f"{answer['base_url']}/v1/structures/{e['id']}",
                )
            )
    return [c for p in settings.providers for c in by_provider[p]]


__all__ = [
    "CACHE_PATH",
    "DEFAULT_PROVIDERS",
    "OptimadeSettings",
    "ProviderCrystal",
    "ProviderUnavailable",
    "cached_provider_crystals",
    "entry_structure",
    "fetch_provider_crystals",
    "query_provider",
    "subsystem_filters",
]
