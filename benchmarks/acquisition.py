"""Acquisition benchmark: replay campaigns on a labelled pool and measure discoveries per oracle call.

    OMP_NUM_THREADS=1 python benchmarks/acquisition.py --pool benchmarks/pools/li-al_mlff.json.gz \
        --rounds 5 --budget 8 --seeds 5 --out /tmp/acq_li-al.json

The oracle is a lookup into the pool's labels (`benchmarks/build_pool.py`), so every replay uses real oracle data
computed once. A replay starts like a campaign after round 0: the references are labelled, the emulator has been
retrained on them. Each round it

1. predicts every unlabelled candidate at its emulator-relaxed geometry (ensemble mean and spread, eV/atom);
2. places the predictions on the hull of everything labelled so far (`loop.science.hull.OracleHull`), giving E_hull ± σ;
3. picks `--budget` queries with the project's acquisition call (`loop.science.acquisition.select_structures`, the
   strategy's modAL query with the campaign's batch-diversity rules; the p_stable threshold is the hit threshold
   of `loop.science.verdicts.StabilityRule`);
4. looks the picks up in the pool: hits are the pool's ground-truth verdicts (E_hull against the hull of all
   references and candidates); the emulator's MAE and Spearman(σ, |error|) on the picks, before retraining, come
   from `loop.science.emulator_errors.emulator_metrics`;
5. retrains the emulator on all labels so far, in one of two modes (reported with every table):

   * ``retrain``: exactly the campaign's stage, `loop.stages.retrain.retrain`, on a campaign store holding the replay's
     labels (reference refit, σ calibration on the round's new labels, fine-tuning of the ensemble), then
     `loop.runtime.tasks.load_emulator(...).predict` on the candidates. Tens of seconds per round on one core, so it is
     run with few seeds and strategies.
   * ``refit`` (cheap): the reference-energy refit of the emulator alone (`emulator.training.refit_reference_shift`
     on all labels, from the pretrained ensemble each round, on the emulator's design `emulator.training.refit_design`:
     element fractions and, unless `--per-element-refit`, the convention features), applied to the pretrained per-member energies stored
     in the pool, with the campaign's σ calibration (bias and spread scale fitted on the refit's leave-one-out
     pairs, as the retrain stage does while no member has been trained). No weights change, so hundreds of
     replays take minutes.

Each seed offers a random `--subset` fraction of the pool's candidates (a different "generation batch"), and seeds
the random baseline. Reported per strategy: hits per oracle call, DAF = hit rate / prevalence (its ceiling is
1/prevalence), the ratio of mean DAF to random's and greedy's with the spread over seeds, and per round the
emulator MAE and Spearman(σ, |error|) on the queries. Units: eV/atom.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_pool import read_pool, structure_from_compact

UNIFORM_RANDOM = "uniform_random"  # random picks without the diversity penalty and formula cap
STRATEGIES = ("p_stable", "expected_improvement", "ucb", "max_std", "greedy", "random", UNIFORM_RANDOM)
log = logging.getLogger("acquisition")


@dataclass
class Pool:
    """A pool's data as arrays: references first (indices < n_ref), then candidates."""

    system: str
    near_stable: float
    oracle: dict[str, Any]
    emulator_settings: dict[str, Any]
    structures: list[Structure]
    oracle_structures: list[Structure]
    role: np.ndarray
    oracle_energy: np.ndarray  # eV/atom, NaN when the label failed
    hit: np.ndarray
    members: np.ndarray  # (K, n) pretrained emulator at the labelled geometry, eV/atom
    members_oracle_geometry: np.ndarray  # (K, n) at the oracle's (relaxed) geometry, eV/atom
    entries: list[dict[str, Any]] = field(repr=False)

    @property
    def refs(self) -> np.ndarray:
        return np.flatnonzero(self.role == "reference")

    @property
    def cands(self) -> np.ndarray:
        return np.flatnonzero(self.role == "candidate")


def rescreened(entry: dict[str, Any]) -> bool:
    """Whether the entry carries a usable continued screening relaxation (`rescreen_pool.py`)."""
    r = entry.get("rescreen")
    return bool(r) and not r["collapsed"] and "member_energy_per_atom_rescreened" in entry["emulator"]


def load_pool(path: Path, *, near_stable: float | None = None, screening: str = "as_built") -> Pool:
    """Read a pool.

    Args:
        path: Pool file of `build_pool.py`.
        near_stable: Re-judge its hits with another threshold than the one it was built with (eV/atom).
        screening: ``as_built``: candidates at the geometry the build's screening reached within its step budget;
            ``rescreened``: where `rescreen_pool.py` continued an unconverged one, at that new geometry and energy.
    """
    from loop.science.verdicts import StabilityRule

    data = read_pool(path)
    entries = data["entries"]
    if screening == "rescreened":
        if not any(rescreened(e) for e in entries):
            raise ValueError(f"{path}: no rescreened candidates; run benchmarks/rescreen_pool.py on it first")
        entries = [
            {
                **e,
                "structure": e["rescreen"]["structure"],
                "emulator": {
                    **e["emulator"],
                    "member_energy_per_atom": e["emulator"]["member_energy_per_atom_rescreened"],
                },
            }
            if rescreened(e)
            else e
            for e in entries
        ]
    rule = StabilityRule(near_stable=data["summary"]["near_stable"] if near_stable is None else near_stable)
    k = len(entries[0]["emulator"]["member_energy_per_atom"])
    nan = [math.nan] * k
    structures = [structure_from_compact(e["structure"]) for e in entries]
    return Pool(
        system=data["system"],
        near_stable=rule.near_stable,
        oracle=data["oracle"],
        emulator_settings=data["emulator"]["settings"],
        structures=structures,
        oracle_structures=[
            structure_from_compact(e["oracle_relaxed_structure"]) if "oracle_relaxed_structure" in e else s
            for e, s in zip(entries, structures, strict=True)
        ],
        role=np.array([e["role"] for e in entries]),
        oracle_energy=np.array([e["oracle"].get("energy_per_atom", math.nan) for e in entries], dtype=float),
        hit=np.array([rule.is_hit(e["e_hull"]) for e in entries]),
        members=np.array([e["emulator"]["member_energy_per_atom"] for e in entries], dtype=float).T,
        members_oracle_geometry=np.array(
            [e["emulator"].get("member_energy_per_atom_at_oracle_geometry", nan) for e in entries],
            dtype=float,
        ).T,
        entries=entries,
    )


def oracle_crystals(pool: Pool, idx: Sequence[int]) -> dict[int, int]:
    """The oracle crystal of each entry of `idx`: the first entry (in `idx` order) whose oracle-relaxed structure is
    the same crystal by the campaign's rule (`loop.science.funnel.KnownIndex`, as `one_per_crystal` judges it)."""
    from loop.science.funnel import KnownIndex

    index = KnownIndex()
    out: dict[int, int] = {}
    for i in idx:
        match = index.find(pool.oracle_structures[i], seed=False)
        if match is None:
            index.add(id=str(i), structure=pool.oracle_structures[i])
            out[i] = i
        else:
            out[i] = int(match[0])
    return out


def distinct_candidates(pool: Pool) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """One candidate per emulator-relaxed crystal, which of them are known crystals, and their oracle crystals.

    What a campaign can see decides what it offers: candidates whose emulator-relaxed structures are one crystal are
    one candidate (`loop.stages.acquire.one_per_crystal` on the screened geometry, as the campaign's acquire stage
    offers them), each crystal keeping its first candidate in generation order. What the oracle says decides what
    counts: a kept candidate whose oracle minimum is a reference's crystal is a known crystal, not a discovery, and
    candidates that the oracle relaxes onto one crystal (17 diffusion samples of the Li-Co-O pool end as one LiCoO2)
    share that crystal, which the replay counts as a hit once (`replay`). Failed labels stay, each on its own: they
    cost their call.

    Returns:
        The kept candidates' indices (sorted); for the pool's entries, whether each is a known crystal; and the
        oracle crystal (an entry index) of each kept candidate with a label.
    """
    from loop.science.funnel import KnownIndex
    from loop.stages.acquire import one_per_crystal

    ok = [int(i) for i in pool.cands if np.isfinite(pool.oracle_energy[i])]
    failed = [int(i) for i in pool.cands if not np.isfinite(pool.oracle_energy[i])]
    kept = [ok[k] for k in one_per_crystal([pool.structures[i] for i in ok], labelled=[])]

    references = KnownIndex()
    for i in pool.refs:
        if np.isfinite(pool.oracle_energy[i]):
            references.add(id=str(i), structure=pool.oracle_structures[int(i)])
    known = np.zeros(len(pool.entries), dtype=bool)
    known[[i for i in kept if references.find(pool.oracle_structures[i], seed=False) is not None]] = True
    return np.array(sorted(kept + failed), dtype=int), known, oracle_crystals(pool, kept)


def campaign_references(pool: Pool, *, max_compounds: int, max_atoms: int = 12) -> list[int]:
    """The pool's references that a campaign's round 0 labels: every elemental one, and the `max_compounds` compounds
    of at most `max_atoms` atoms that the pretrained emulator places lowest on the hull of the elements, one per
    composition (`references.max_compounds`, as `loop.stages.references` chooses them), instead of every bundled
    crystal of the system (53 for Li-Co-O, where a campaign labels 4)."""
    from loop.science.hull import HullEntry, OracleHull

    refs = [int(i) for i in pool.refs]
    energy = pool.members.mean(axis=0)
    elements = [i for i in refs if len(pool.structures[i].composition) == 1]
    hull = OracleHull.from_entries(
        HullEntry(
            entry_id=str(i), composition=pool.structures[i].composition, energy_per_atom=float(energy[i])
        )
        for i in elements
    )
    compounds = [
        i for i in refs if len(pool.structures[i].composition) > 1 and len(pool.structures[i]) <= max_atoms
    ]
    e_hull = hull.evaluate(
        [pool.structures[i].composition for i in compounds],
        [float(energy[i]) for i in compounds],
        [0.0] * len(compounds),
    ).e_above_hull
    chosen: dict[str, int] = {}
    for _, i in sorted(zip(e_hull, compounds, strict=True)):
        formula = pool.structures[i].composition.reduced_formula
        if formula not in chosen and len(chosen) < max_compounds:
            chosen[formula] = i
    return sorted(elements + list(chosen.values()))


def load_committee(pool: Pool, paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Energies (eV/atom) of the pool's entries at other levels of theory, for a committee across model families.

    Each path is a pool file of the same candidates labelled by another oracle (e.g. the `mlff` pool a GPAW pool was
    drawn from): its label of an entry is what that model family gives at the end of its own relaxation from the
    same starting geometry, as a campaign's committee member (`loop.stages.screen.committee_e_hull`) does.

    Returns:
        Family name (the other pool's oracle kind) -> energies aligned with `pool.entries`, NaN where that pool has
        no successful label of the entry.
    """
    out: dict[str, np.ndarray] = {}
    for path in paths:
        data = read_pool(path)
        energy = {
            e["hash"]: e["oracle"]["energy_per_atom"]
            for e in data["entries"]
            if e["oracle"]["status"] == "ok"
        }
        out[data["oracle"]["kind"]] = np.array([energy.get(e["hash"], math.nan) for e in pool.entries], float)
    return out


def committee_e_hull(
    pool: Pool,
    committee: dict[str, np.ndarray],
    *,
    hull: Any,
    avail: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The emulator's E_hull (mean, std) combined with each family's, as a campaign's screening stage combines them.

    A family places a candidate against its own energies of the phases on the current oracle hull, so its offsets
    from the oracle's level of theory cancel (`loop.stages.screen.family_e_hull`); the combination is the
    campaign's own rule (`loop.stages.screen.combine_committee`). Units: eV/atom.
    """
    from loop.science.hull import HullEntry
    from loop.stages.screen import combine_committee, family_e_hull

    phases = [int(i) for i in hull.stable_ids()]
    comps = [pool.structures[i].composition for i in avail]
    families = [
        family_e_hull(
            (
                HullEntry(
                    entry_id=str(i), composition=pool.structures[i].composition, energy_per_atom=energies[i]
                )
                for i in phases
            ),
            compositions=comps,
            energies=energies[avail],
        )
        for energies in committee.values()
    ]
    pairs = [
        combine_committee(float(m), float(s), [float(f[r]) for f in families])
        for r, (m, s) in enumerate(zip(mean, std, strict=True))
    ]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


# -- emulators of a replay ----------------------------------------------------------------------------------------------
class RefitEmulator:
    """The pretrained ensemble with its reference energies refitted on all labels so far (no weight updates), and
    its σ calibrated as a campaign's retrain stage does before any member is trained: a bias and a spread scale
    fitted on the leave-one-out pairs of the refit (`ChgnetEnsemble.loo_pairs`), shrunk toward the previous fit."""

    mode = "refit"

    def __init__(
        self, pool: Pool, *, per_element_only: bool = False, calibration_rule: str | None = None
    ) -> None:
        from emulator.calibration import Calibration
        from emulator.chgnet_ensemble import ChgnetEnsembleSettings
        from emulator.training import refit_design

        self.pool = pool
        self.settings = ChgnetEnsembleSettings.model_validate(pool.emulator_settings)
        if calibration_rule is not None:  # a what-if against the emulator's own rule
            self.settings = self.settings.model_copy(update={"calibration_rule": calibration_rule})
        # The emulator's own refit design (its `convention_features` setting), unless asked for the bare one.
        convention = self.settings.convention_features and not per_element_only
        # Labels are fitted at the oracle's geometry and candidates predicted at the emulator's, as in a campaign
        # (an oxide type depends on the O-O distances).
        self.fit_design = refit_design(pool.oracle_structures, convention=convention)
        self.predict_design = refit_design(pool.structures, convention=convention)
        self.shift = np.zeros(self.fit_design.shape[1])
        self.calibration = Calibration()

    def retrain(self, labelled: Sequence[int], new: Sequence[int], *, round: int) -> None:
        from emulator.calibration import Calibration, HeldOutPairs, fit_calibration
        from emulator.training import leave_one_out_refit, refit_reference_shift

        if round == 0:  # a new replay: one instance serves them all, and no fit may carry over
            self.calibration = Calibration()

        idx = np.array([i for i in labelled if np.isfinite(self.pool.oracle_energy[i])], dtype=int)
        # The oracle energy belongs to the oracle's geometry, so the residual is taken there.
        at_geometry = self.pool.members_oracle_geometry[:, idx]
        members = np.where(np.isfinite(at_geometry), at_geometry, self.pool.members[:, idx])
        pred = members.mean(axis=0)
        target = self.pool.oracle_energy[idx]
        residual = target - pred
        alpha = self.settings.ridge_alpha
        self.shift = refit_reference_shift(fractions=self.fit_design[idx], residuals=residual, alpha=alpha)
        loo = leave_one_out_refit(
            pretrained=pred, fractions=self.fit_design[idx], residuals=residual, alpha=alpha
        )
        pairs = HeldOutPairs(
            predicted=loo.tolist(),
            std=members.std(axis=0).tolist(),
            target=target.tolist(),
            round=[round] * len(idx),
        )
        self.calibration = fit_calibration(
            pairs,
            previous=self.calibration,
            prior_weight=self.settings.calibration_prior_weight,
            fit_bias=self.settings.calibration_bias,
            rule=self.settings.calibration_rule,
        )

    def predict(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        members = self.pool.members[:, idx] + self.predict_design[idx] @ self.shift
        return members.mean(axis=0) + self.calibration.bias, self.calibration.std(members.std(axis=0))

    def close(self) -> None:
        pass


class CampaignRetrainEmulator:
    """The campaign's retrain stage (`loop.stages.retrain.retrain`) on a campaign store holding the replay's labels."""

    mode = "retrain"

    def __init__(self, pool: Pool, *, epochs: int, max_minutes: float, seed: int) -> None:
        from loop.config import validate_config
        from loop.store import CampaignStore

        self.pool = pool
        self.tmp = tempfile.TemporaryDirectory(prefix="acq-replay-")
        self.workdir = Path(self.tmp.name)
        self.config = validate_config(
            {
                "name": "replay",
                "seed": seed,
                "chemical_systems": [pool.system],
                "near_stable": pool.near_stable,
                "generator": {"mix": {"substitution": 1}, "fine_tune_weight": 0},
                "emulator": pool.emulator_settings,
                "emulator_training": {"fine_tune_epochs": epochs, "fine_tune_max_minutes": max_minutes},
                "oracle": pool.oracle["settings"],
                "tracking": {"enabled": False},
                "execution": {"kind": "inline"},
            },
            source="replay",
        )
        self.store = CampaignStore.in_workdir(self.workdir)
        self.settings_hash = self.config.oracle.settings_hash()
        self.checkpoint: Path | None = None
        self.hashes = [e["hash"] for e in pool.entries]

    def _add_label(self, i: int, round: int) -> None:
        e = self.pool.entries[i]
        structure = self.pool.structures[i]
        self.store.add_structure(structure, source="replay", round=round, hash=e["hash"])
        o = e["oracle"]
        ok = o["status"] == "ok"
        metadata: dict[str, Any] = {"level_of_theory": self.pool.oracle.get("level_of_theory")}
        result = {
            "status": o["status"],
            "energy": o["energy_per_atom"] * len(structure) if ok else None,
            "energy_per_atom": o.get("energy_per_atom"),
            "forces": o.get("forces"),
            "stress": o.get("stress"),
            "reason": o.get("reason"),
            "settings": self.pool.oracle["settings"],
            "metadata": metadata,
            # The energy belongs to the oracle's relaxed geometry: the store keeps it as the label's final structure.
            "final_structure": self.pool.oracle_structures[i].as_dict()
            if ok and "oracle_relaxed_structure" in e
            else None,
        }
        self.store.add_oracle_result(
            e["hash"],
            oracle=self.pool.oracle["kind"],
            settings_hash=self.settings_hash,
            result=result,
            round=round,
        )

    def retrain(self, labelled: Sequence[int], new: Sequence[int], *, round: int) -> dict[str, Any]:
        from loop.stages.retrain import retrain
        from loop.store import Query

        with self.store.transaction():
            for i in labelled:
                if not self.store.get_oracle_result(self.hashes[i], self.settings_hash):
                    self._add_label(i, round)
            if round > 0:
                self.store.add_queries(
                    round,
                    [
                        Query(hash=self.hashes[i], strategy="replay", rank=r, score=None)
                        for r, i in enumerate(new)
                    ],
                )
        report = retrain(
            self.config,
            store=self.store,
            round=round,
            emulator_in=self.checkpoint,
            generator_in=None,
            out_dir=self.workdir / "checkpoints" / f"round_{round:03d}",
        )
        self.checkpoint = Path(report["emulator_checkpoint"])
        # What the update rule decided, for audits of the replay: the deployed variant, why, and its evidence.
        return {
            k: v
            for k, v in report.items()
            if k in ("emulator_deployed", "emulator_reason") or "_heldout_" in k
        }

    def predict(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from loop.runtime.tasks import load_emulator

        model = load_emulator(self.config.emulator, self.checkpoint)
        pred = model.predict([self.pool.structures[i] for i in idx], forces=False, stress=False)
        return np.asarray(pred.energy_per_atom, float), np.asarray(pred.energy_per_atom_std, float)

    def close(self) -> None:
        self.store.close()
        self.tmp.cleanup()


# -- one replay -----------------------------------------------------------------------------------------------------
def replay(
    pool: Pool,
    *,
    strategy: str,
    offered: np.ndarray,
    rounds: int,
    budget: int,
    seed: int,
    emulator: Any,
    committee: dict[str, np.ndarray] | None = None,
    references: Sequence[int] | None = None,
    crystals: dict[int, int] | None = None,
) -> dict[str, Any]:
    """One campaign replay; returns hits, calls and per-round emulator metrics.

    `references` are the entries labelled in round 0 (None: every reference of the pool); `crystals` maps a
    candidate to its oracle crystal (`distinct_candidates`), so that a crystal is counted as a hit once.

    With `committee` (`load_committee`), the acquisition sees the emulator's E_hull combined with the other model
    families', as a campaign configured with `committee:` does; the emulator metrics stay the emulator's own.
    """
    from loop.science.acquisition import AcquisitionConfig, DiversityConfig, select_structures
    from loop.science.emulator_errors import emulator_metrics
    from loop.science.hull import HullEntry, OracleHull
    from loop.science.verdicts import StabilityRule
    from loop.stages.acquire import one_per_crystal

    rule = StabilityRule(near_stable=pool.near_stable)
    if strategy == UNIFORM_RANDOM:
        # The baseline a whole-campaign comparison needs: random picks with no penalty and no cap.
        config = AcquisitionConfig(
            strategy="random",
            budget=budget,
            seed=seed,
            diversity=DiversityConfig(max_per_formula=None, similarity_penalty=0.0),
        )
    else:
        config = AcquisitionConfig(strategy=strategy, budget=budget, seed=seed)
    labelled = [
        int(i)
        for i in (pool.refs if references is None else references)
        if np.isfinite(pool.oracle_energy[i])
    ]
    counted: set[int] = set()  # oracle crystals already counted as a hit
    emulator.retrain(labelled, [], round=0)
    available = [int(i) for i in offered]
    per_round = []
    hits = calls = 0
    for rnd in range(1, rounds + 1):
        # The campaign's acquisition pool: one candidate per crystal, none of a crystal labelled already.
        kept = one_per_crystal(
            [pool.structures[i] for i in available],
            labelled=[
                (s.composition.reduced_formula, lambda s=s: s)
                for i in labelled
                for s in {id(x): x for x in (pool.structures[i], pool.oracle_structures[i])}.values()
            ],
        )
        if not kept:
            break
        avail = np.array([available[k] for k in kept], dtype=int)
        mean, std = emulator.predict(avail)
        hull = OracleHull.from_entries(
            HullEntry(
                entry_id=str(i),
                composition=pool.structures[i].composition,
                energy_per_atom=pool.oracle_energy[i],
            )
            for i in labelled
            if np.isfinite(pool.oracle_energy[i])  # a failed label costs its call but places nothing
        )
        ev = hull.evaluate([pool.structures[i].composition for i in avail], mean, std)
        e_hull, e_hull_std = np.asarray(ev.e_above_hull, float), np.asarray(ev.e_above_hull_std, float)
        if committee:
            e_hull, e_hull_std = committee_e_hull(
                pool, committee, hull=hull, avail=avail, mean=e_hull, std=e_hull_std
            )
        result = select_structures(
            structures=[pool.structures[i] for i in avail],
            mean=e_hull,
            std=e_hull_std,
            config=config.model_copy(update={"seed": seed * 1000 + rnd}),
            rule=rule,
            labelled=[pool.structures[i] for i in labelled],
        )
        rows = np.asarray(result.indices, dtype=int)
        picks = avail[rows]
        round_hits = 0
        for i in picks:
            crystal = (crystals or {}).get(int(i), int(i))
            if pool.hit[i] and crystal not in counted:
                counted.add(crystal)
                round_hits += 1
        hits += round_hits
        calls += len(picks)
        pairs = [
            (float(mean[r]), float(std[r]), float(pool.oracle_energy[i]))
            for r, i in zip(rows, picks, strict=True)
            if np.isfinite(pool.oracle_energy[i])
        ]
        metrics = emulator_metrics(pairs)
        per_round.append(
            {
                "round": rnd,
                "calls": len(picks),
                "hits": round_hits,
                "mae": metrics.get("emulator_mae"),
                "spearman": metrics.get("emulator_spearman_std_err"),
                "picked_e_hull_pred": np.round(e_hull[rows], 4).tolist(),
                "picks": picks.tolist(),  # pool entry indices, for audits
            }
        )
        picked = set(picks.tolist())
        available = [i for i in available if i not in picked]
        labelled.extend(int(i) for i in picks)
        if rnd < rounds:
            update = emulator.retrain(labelled, [int(i) for i in picks], round=rnd)
            if update:  # the campaign's retrain stage: what its update rule decided after this round's labels
                per_round[-1]["update"] = update
    return {"hits": hits, "calls": calls, "rounds": per_round}


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(runs: dict[str, list[dict[str, Any]]], *, rounds: int) -> dict[str, Any]:
    """Per strategy: hit rate, DAF, ratios to random and greedy (spread over seeds), per-round emulator metrics."""
    out: dict[str, Any] = {}
    daf = {s: [r["hits"] / r["calls"] / r["prevalence"] for r in rs] for s, rs in runs.items()}
    for s, rs in runs.items():
        rate = _mean_sd([r["hits"] / r["calls"] for r in rs])
        d = _mean_sd(daf[s])
        row: dict[str, Any] = {
            "seeds": len(rs),
            "hits": _mean_sd([r["hits"] for r in rs]),
            "calls": _mean_sd([r["calls"] for r in rs]),
            "hits_per_call": rate,
            "daf": d,
            "ceiling": _mean_sd([1 / r["prevalence"] for r in rs]),
            # All hits found: with more calls than offered hits, even a perfect strategy stays below 1/prevalence.
            "ceiling_at_budget": _mean_sd(
                [min(1 / r["prevalence"], r["n_offered"] / r["calls"]) for r in rs if "n_offered" in r]
            ),
        }
        for base in ("random", "greedy"):
            if base in daf and base != s:
                ref = _mean_sd(daf[base])[0]
                row[f"vs_{base}"] = (
                    (d[0] / ref, _mean_sd([x / ref for x in daf[s]])[1]) if ref > 0 else (math.nan,) * 2
                )
        row["per_round"] = [
            {
                "round": k + 1,
                "hits": _mean_sd([r["rounds"][k]["hits"] for r in rs if len(r["rounds"]) > k]),
                "mae": _mean_sd([r["rounds"][k]["mae"] for r in rs if len(r["rounds"]) > k]),
                "spearman": _mean_sd([r["rounds"][k]["spearman"] for r in rs if len(r["rounds"]) > k]),
            }
            for k in range(rounds)
        ]
        out[s] = row
    return out


def markdown(result: dict[str, Any]) -> str:
    """The benchmark table of one pool."""
    meta = result["meta"]
    first = next(iter(result["strategies"].values()), {})
    at_budget = first.get("ceiling_at_budget", (math.nan,))[0]
    # Over the seeds' offered subsets, as the DAFs are (the pool's own is 1 / meta["prevalence"]).
    ceiling = first.get("ceiling", (1 / meta["prevalence"],))[0]
    lines = [
        f"**{meta['system']}** ({meta['oracle']}, {meta['level_of_theory']}): {meta['n_candidates']} candidates, "
        f"{meta['n_hits']} hits (E_hull ≤ {meta['near_stable']:g} eV/atom), prevalence {meta['prevalence']:.3f} (DAF ceiling {ceiling:.1f}"
        + (f", {at_budget:.1f} at this budget" if math.isfinite(at_budget) else "")
        + "); "
        f"{meta['rounds']} rounds × {meta['budget']} queries, {meta['seeds']} seeds × {meta['subset']:.0%} of the pool, "
        f"retraining mode `{meta['mode']}`, screening `{meta.get('screening', 'as_built')}`, default strategy `{meta['default_strategy']}`"
        + (f", committee with {', '.join(meta['committee'])}" if meta.get("committee") else "")
        + (
            f", distinct oracle minima only ({meta['known_crystals_not_counted']} known crystals not counted)"
            if meta.get("distinct")
            else ""
        )
        + ".",
        "",
        "| strategy | hits / call | DAF (mean ± sd) | × random | × greedy | MAE per round (eV/atom) | Spearman(σ, err) per round |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, row in result["strategies"].items():

        def pm(pair: Sequence[float], fmt: str = ".2f") -> str:
            return "–" if not math.isfinite(pair[0]) else f"{pair[0]:{fmt}} ± {pair[1]:{fmt}}"

        def ratio(strategy: str, base: str, row: dict[str, Any] = row) -> str:
            if f"vs_{base}" in row:
                return pm(row[f"vs_{base}"])
            return "1" if strategy == base else "–"  # the baseline itself, or a baseline not run

        maes = " / ".join(
            "–" if not math.isfinite(r["mae"][0]) else f"{r['mae'][0]:.3f}" for r in row["per_round"]
        )
        rhos = " / ".join(
            "–" if not math.isfinite(r["spearman"][0]) else f"{r['spearman'][0]:+.2f}"
            for r in row["per_round"]
        )
        lines.append(
            f"| {s} | {pm(row['hits_per_call'], '.3f')} | {pm(row['daf'])} | "
            f"{ratio(s, 'random')} | {ratio(s, 'greedy')} | "
            f"{maes} | {rhos} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from loop.science.acquisition import AcquisitionConfig

    pool = load_pool(Path(args.pool), near_stable=args.near_stable, screening=args.screening)
    committee = load_committee(pool, [Path(p) for p in args.committee])
    cands = pool.cands
    n_known = 0
    crystals = None
    if args.distinct:
        cands, known, crystals = distinct_candidates(pool)
        n_known = int((known & pool.hit).sum())
        pool.hit = pool.hit & ~known
    references = (
        campaign_references(pool, max_compounds=args.max_compounds) if args.campaign_references else None
    )
    n_offer = max(1, round(args.subset * len(cands)))
    strategies = args.strategies.split(",")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    started = time.time()
    shared = (
        RefitEmulator(pool, per_element_only=args.per_element_refit, calibration_rule=args.calibration_rule)
        if args.mode == "refit"
        else None
    )
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        offered = np.sort(rng.choice(cands, size=n_offer, replace=False))
        prevalence = float(pool.hit[offered].mean())
        for s in strategies:
            emulator = shared or CampaignRetrainEmulator(
                pool, epochs=args.epochs, max_minutes=args.max_minutes, seed=seed
            )
            try:
                t0 = time.time()
                r = replay(
                    pool,
                    strategy=s,
                    offered=offered,
                    rounds=args.rounds,
                    budget=args.budget,
                    seed=seed,
                    emulator=emulator,
                    committee=committee,
                    references=references,
                    crystals=crystals,
                )
            finally:
                if emulator is not shared:
                    emulator.close()
            r.update(
                seed=seed,
                prevalence=prevalence,
                n_offered=len(offered),
                wall_time_s=round(time.time() - t0, 1),
            )
            runs[s].append(r)
            log.info(
                "seed %d %-8s hits %d / %d calls (prevalence %.3f), %.0f s",
                seed,
                s,
                r["hits"],
                r["calls"],
                prevalence,
                r["wall_time_s"],
            )
    n_hits = int(pool.hit[cands].sum())
    result = {
        "meta": {
            "pool": Path(args.pool).name,
            "system": pool.system,
            "oracle": pool.oracle["kind"],
            "level_of_theory": pool.oracle.get("level_of_theory"),
            "n_candidates": len(cands),
            "n_hits": n_hits,
            "prevalence": n_hits / len(cands),
            "near_stable": pool.near_stable,
            "rounds": args.rounds,
            "budget": args.budget,
            "seeds": args.seeds,
            "subset": args.subset,
            "mode": args.mode,
            "screening": args.screening,
            "distinct": bool(args.distinct),
            "round_0_references": "all of the pool's"
            if references is None
            else f"{len(references)}, as a campaign labels them",
            "known_crystals_not_counted": n_known,
            "committee": sorted(committee),
            "per_element_refit": bool(args.per_element_refit),
            "calibration_rule": args.calibration_rule or "the emulator's",
            "committee_pools": [Path(p).name for p in args.committee],
            "default_strategy": AcquisitionConfig().strategy,
            "wall_time_s": round(time.time() - started, 1),
        },
        "strategies": summarize(runs, rounds=args.rounds),
        "runs": runs,
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="pool file from build_pool.py")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", type=int, default=8, help="oracle queries per round")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--subset", type=float, default=0.8, help="fraction of the pool offered per seed")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--mode", choices=("refit", "retrain"), default="refit")
    p.add_argument("--epochs", type=int, default=3, help="retrain mode: fine-tuning epochs per round")
    p.add_argument("--max-minutes", type=float, default=2.0, help="retrain mode: bound of one fine-tune")
    p.add_argument(
        "--near-stable", type=float, help="hit threshold above the hull, eV/atom (default: the pool's, 0.05)"
    )
    p.add_argument(
        "--committee",
        action="append",
        default=[],
        metavar="POOL",
        help="a pool file of the same candidates labelled by another model family: replay with a committee",
    )
    p.add_argument(
        "--per-element-refit",
        action="store_true",
        help="refit mode: per-element shifts only (without the emulator's convention features)",
    )
    p.add_argument(
        "--calibration-rule",
        choices=("quantile", "floor"),
        help="refit mode: calibrate σ by this rule instead of the emulator's setting (emulator.calibration)",
    )
    p.add_argument(
        "--screening",
        choices=("as_built", "rescreened"),
        default="as_built",
        help="candidates at the build's screening geometry, or where rescreen_pool.py continued it to convergence",
    )
    p.add_argument(
        "--distinct",
        action="store_true",
        help="one candidate per emulator-relaxed crystal (what a campaign offers), each oracle crystal counted as a "
        "hit once, known crystals not counted (distinct_candidates)",
    )
    p.add_argument(
        "--campaign-references",
        action="store_true",
        help="round 0 labels only what a campaign labels (the elements and --max-compounds compounds) instead of "
        "every reference of the pool",
    )
    p.add_argument(
        "--max-compounds",
        type=int,
        default=4,
        help="compounds labelled in round 0 (references.max_compounds)",
    )
    p.add_argument("--out", help="write the full result (JSON) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(key, "1")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if not Path(args.pool).is_file():
        print(
            f"acquisition: {args.pool}: no such pool file; build one with benchmarks/build_pool.py",
            file=sys.stderr,
        )
        return 2
    if args.calibration_rule and args.mode != "refit":
        print(
            "acquisition: --calibration-rule applies to --mode refit (retrain uses the config's)",
            file=sys.stderr,
        )
        return 2
    missing = [p for p in args.committee if not Path(p).is_file()]
    if missing:
        print(f"acquisition: --committee {missing[0]}: no such pool file", file=sys.stderr)
        return 2
    unknown = sorted(set(args.strategies.split(",")) - set(STRATEGIES))
    if unknown:
        print(
            f"acquisition: unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}", file=sys.stderr
        )
        return 2
    try:
        result = run(args)
    except ValueError as err:
        print(f"acquisition: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
