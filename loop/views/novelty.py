"""Is a labelled structure a new crystal, or a known one found again? The novelty half of every verdict.

Each structure the campaign labelled in a round >= 1 is matched (the funnel's StructureMatcher, after the same
formula and fingerprint pre-filter) against every bundled crystal, withheld ones included, and every crystal the
OPTIMADE providers served (`loop.runtime.provider_crystals`, read from the workdir's cache, never queried here). Both the
labelled structure and the oracle's relaxed version of it are matched: a candidate that relaxed into a known
crystal is that crystal. The verdict reads "new", or "known: <provider> <id>", plus "(withheld)" when the campaign
had hidden that crystal from itself (rediscovery mode).

A hit that matches a known crystal is a rediscovery: it is never counted as a new discovery (`n_new` in the
update stage, the status, the export and the tracking).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pymatgen.core import Composition

from loop.store import CampaignStore

if TYPE_CHECKING:  # status and export read verdicts without importing the campaign's rooms
    from loop.config import CampaignConfig
    from loop.runtime.provider_crystals import ProviderCrystal

BUNDLED = "bundled"
"""The provider name of the bundled crystals (Materials Project's, in mp_20 and mpts_52)."""
MP_URL = "https://next-gen.materialsproject.org/materials/{id}"
META_KEY = "novelty"
"""The store's meta key of the recorded verdicts (hash -> `Novelty.as_dict()`)."""


@dataclass(frozen=True)
class Novelty:
    """The novelty of one labelled structure.

    Attributes:
        known: Whether it (or the oracle's relaxed version of it) is a known crystal.
        provider: Who knows it: "bundled" or an OPTIMADE provider's name in the config.
        id: That provider's id of the crystal.
        url: Where to read about it.
        withheld: Whether the campaign withheld that crystal (rediscovery mode).
    """

    known: bool
    provider: str | None = None
    id: str | None = None
    url: str | None = None
    withheld: bool = False

    @property
    def label(self) -> str:
        """ "new", or "known: <provider> <id>" with " (withheld)" for a withheld crystal."""
        if not self.known:
            return "new"
        return f"known: {self.provider} {self.id}" + (" (withheld)" if self.withheld else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Novelty:
        return cls(
            **{k: data.get(k) for k in ("known", "provider", "id", "url")},
            withheld=bool(data.get("withheld")),
        )


NEW = Novelty(known=False)


class NoveltyIndex:
    """Every known crystal a campaign's verdicts cite: bundled (lazily parsed, withheld ones included) and the
    providers' cached crystals."""

    def __init__(self, config: CampaignConfig, *, providers: Sequence[ProviderCrystal]) -> None:
        # The bundled index (pandas, the generator room) loads only when a verdict needs it.
        from generator.seeds import bundled_formulas, seed_loaders
        from loop.science.funnel import KnownIndex

        self._config = config
        self._index = KnownIndex(matcher=config.generator.funnel.matcher)
        self._formulas = bundled_formulas()
        for ident, formula, loader in seed_loaders():
            self._index.add_lazy(id=ident, formula=formula, loader=loader, origin="seed")
        self._providers = {c.key: c for c in providers}
        for key, crystal in self._providers.items():
            self._index.add(id=key, structure=crystal.structure, origin="seed")

    def judge(self, structures: Iterable[Any]) -> Novelty:
        """The novelty of a crystal given as one or more structures (the labelled one, the oracle's relaxed one):
        known when any of them matches a known crystal."""
        for structure in structures:
            found = self._index.find(structure)
            if found is not None:
                return self._cite(found[0])
        return NEW

    def _cite(self, key: str) -> Novelty:
        crystal = self._providers.get(key)
        if crystal is not None:
            return Novelty(
                known=True,
                provider=crystal.provider,
                id=crystal.id,
                url=crystal.url,
                withheld=crystal.withheld,
            )
        formula = self._formulas.get(key, "")
        elements = [el.symbol for el in Composition(formula).elements] if formula else []
        withheld = self._config.withholding.covers(
            material_id=key, reduced_formula=formula, elements=elements
        )
        return Novelty(known=True, provider=BUNDLED, id=key, url=MP_URL.format(id=key), withheld=withheld)


def judge_labels(
    config: CampaignConfig, *, store: CampaignStore, providers: Callable[[], Sequence[ProviderCrystal]]
) -> dict[str, Novelty]:
    """The novelty of every structure labelled in a round >= 1 that has no recorded verdict yet, against the
    bundled crystals and `providers()` (the OPTIMADE providers' cached crystals, withheld ones marked; asked for
    only when something is to be judged)."""
    recorded = stored_novelty(store)
    first = store.first_query_rounds()
    results = [
        r
        for r in store.oracle_results(settings_hash=config.oracle.settings_hash(), ok_only=True)
        if first.get(r.hash, 0) >= 1 and r.hash not in recorded
    ]
    if not results:
        return {}
    index = NoveltyIndex(config, providers=providers())
    structures = store.get_structures(sorted({h for r in results for h in (r.hash, r.structure_hash)}))
    return {
        r.hash: index.judge(
            structures[h] for h in dict.fromkeys((r.hash, r.structure_hash)) if h in structures
        )
        for r in results
    }


def stored_novelty(store: CampaignStore) -> dict[str, Novelty]:
    """The recorded novelty verdicts, by labelled hash (empty for a campaign from before they were recorded)."""
    return {h: Novelty.from_dict(d) for h, d in (store.get_meta(META_KEY) or {}).items()}


__all__ = [
    "BUNDLED",
    "META_KEY",
    "Novelty",
    "NoveltyIndex",
    "judge_labels",
    "stored_novelty",
]
