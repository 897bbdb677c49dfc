"""The acquisition replay engine: a campaign's rounds replayed on a labelled pool (`benchmarks.lib.pools`).

The oracle is a lookup into the pool's labels, so a replay costs no oracle call. A replay starts like a campaign
after round 0 (its references labelled, the emulator retrained on them); each round predicts the unlabelled
candidates, places them on the hull of the labels so far, picks a batch with the project's acquisition call, looks
the picks up in the pool and retrains the emulator (`RefitEmulator`, cheap, or `CampaignRetrainEmulator`, the
campaign's own retrain stage). `benchmarks.acquisition` runs it over strategies and seeds. Units: eV/atom.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lib.pools import Pool

UNIFORM_RANDOM = "uniform_random"  # random picks without the diversity penalty and formula cap
STRATEGIES = ("p_stable", "expected_improvement", "ucb", "max_std", "greedy", "random", UNIFORM_RANDOM)


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
    one candidate (`loop.science.acquisition.one_per_crystal` on the screened geometry, as the campaign's acquire stage
    offers them), each crystal keeping its first candidate in generation order. What the oracle says decides what
    counts: a kept candidate whose oracle minimum is a reference's crystal is a known crystal, not a discovery, and
    candidates that the oracle relaxes onto one crystal (17 diffusion samples of the Li-Co-O pool end as one LiCoO2)
    share that crystal, which the replay counts as a hit once (`replay`). Failed labels stay, each on its own: they
    cost their call.

    Returns:
        The kept candidates' indices (sorted); for the pool's entries, whether each is a known crystal; and the
        oracle crystal (an entry index) of each kept candidate with a label.
    """
    from loop.science.acquisition import one_per_crystal
    from loop.science.funnel import KnownIndex

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
    composition (`references.max_compounds`, as `loop.work.references` chooses them), instead of every bundled
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
    from the oracle's level of theory cancel (`loop.science.committee.family_e_hull`); the combination is the
    campaign's own rule (`loop.science.committee.combine_committee`). Units: eV/atom.
    """
    from loop.science.committee import combine_committee, family_e_hull
    from loop.science.hull import HullEntry

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
            half_life=self.settings.calibration_half_life,
        )

    def predict(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        members = self.pool.members[:, idx] + self.predict_design[idx] @ self.shift
        return members.mean(axis=0) + self.calibration.bias, self.calibration.std(members.std(axis=0))

    def close(self) -> None:
        pass


class CampaignRetrainEmulator:
    """The campaign's retrain stage (`loop.work.retraining.retrain`) on a campaign store holding the replay's labels."""

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
        from loop.store import Query
        from loop.work.retraining import retrain

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

    With `committee` (`benchmarks.lib.pools.load_committee`), the acquisition sees the emulator's E_hull combined with the other model
    families', as a campaign configured with `committee:` does; the emulator metrics stay the emulator's own.
    """
    from loop.science.acquisition import (
        AcquisitionConfig,
        DiversityConfig,
        one_per_crystal,
        select_structures,
    )
    from loop.science.emulator_errors import emulator_metrics
    from loop.science.hull import HullEntry, OracleHull
    from loop.science.verdicts import StabilityRule

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
