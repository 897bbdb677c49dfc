"""Labelling queries into the campaign store with a real (EMT) oracle: size guard before submitting, final
structures stored and deduplicated, typed failures, training data from the final structures."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from loop.config import CampaignConfig
from loop.runtime.labelling import label_hashes
from loop.science.structures import structure_hash
from loop.store import CampaignStore
from loop.work.retraining import training_labels
from oracle import EMTSettings


def cu_fcc(a: float, shift: tuple[int, float] | None = None) -> Structure:
    s = Structure(Lattice.cubic(a), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    if shift is not None:
        site, dx = shift
        s.translate_sites([site], [dx, 0.0, 0.0], frac_coords=False)
    return s


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Three distorted fcc Cu cells and one Cu-Au cell, relaxed by EMT; one cell too large for the oracle."""
    tmp_path = tmp_path_factory.mktemp("labelled")
    store = CampaignStore.in_workdir(tmp_path)
    cells = [cu_fcc(3.70), cu_fcc(3.55, (0, 0.10)), cu_fcc(3.68, (1, -0.12))]
    cuau = Structure(Lattice.cubic(3.9), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    big = cu_fcc(3.6).make_supercell([3, 3, 3], in_place=False)  # 108 atoms
    hashes = [store.add_structure(s, source="relaxed", round=1) for s in [*cells, cuau, big]]
    settings = EMTSettings(relax_steps=60, relax_fmax=0.005, max_atoms=50)
    results = label_hashes(store, hashes, settings=settings, workdir=tmp_path, round=1)
    return store, settings, hashes, results, tmp_path


def test_verdict_energy_and_stored_structure_come_from_the_relaxation(labelled):
    store, settings, hashes, results, _ = labelled
    for h in hashes[:4]:
        r = results[h]
        assert r.ok, r.reason
        final = store.get_structure(r.final_hash)
        assert r.final_hash != h and structure_hash(final) == r.final_hash
        frames = store.oracle_frames(h, settings.settings_hash())
        assert len(frames) >= 2 and frames[-1].energy == pytest.approx(r.energy)
        assert r.energy < frames[0].energy  # relaxed below the queried geometry
        # Forces (eV/Å) or stress (GPa) of the final geometry are smaller than those of the queried one.
        assert max(np.abs(r.forces).max(), np.abs(r.stress).max()) < max(
            np.abs(frames[0].forces).max(), np.abs(frames[0].stress).max()
        )


def test_relaxed_duplicates_name_the_first_label(labelled):
    _, _, hashes, results, _ = labelled
    cu = sorted(hashes[:3])  # same round: canonical order is by hash
    # The three Cu cells relax to the same fcc crystal; the Cu-Au cell is a different one.
    assert results[cu[0]].duplicate_of is None
    assert results[cu[1]].duplicate_of == cu[0] and results[cu[2]].duplicate_of == cu[0]
    assert results[hashes[3]].duplicate_of is None


def test_duplicates_do_not_depend_on_completion_order(labelled, tmp_path):
    store, settings, hashes, results, workdir = labelled
    other = CampaignStore.in_workdir(tmp_path)
    for h in hashes:
        other.add_structure(store.get_structure(h), source="relaxed", round=1)
    # Labelled in reverse order (the oracle's result files are reused: nothing is computed again).
    again = label_hashes(other, hashes[::-1], settings=settings, workdir=workdir, round=1)
    assert {h: r.duplicate_of for h, r in again.items()} == {h: r.duplicate_of for h, r in results.items()}


def test_too_large_cell_is_a_failed_query_and_never_started(labelled):
    store, settings, hashes, results, workdir = labelled
    big = results[hashes[4]]
    assert big.status == "failed" and big.failure_kind == "too_large"
    assert "108 atoms exceed the emt oracle's limit of 50" in big.reason
    assert store.get_oracle_result(hashes[4], settings.settings_hash()) is not None  # stored, with the reason
    assert not (workdir / "oracle" / hashes[4]).exists()  # nothing was started
    # Asking again does not submit it again either.
    again = label_hashes(store, [hashes[4]], settings=settings, workdir=workdir, round=2)
    assert again[hashes[4]].round == 1


def test_training_labels_pair_oracle_numbers_with_final_structures(labelled):
    store, settings, hashes, results, _ = labelled
    config = CampaignConfig.model_validate(
        {"name": "t", "chemical_systems": ["Cu-Au"], "oracle": settings.model_dump()}
    )
    data = training_labels(config, store)
    assert [d["hash"] for d in data] == sorted(hashes[:4])  # canonical order; the failed one is left out
    for d in data:
        r = results[d["hash"]]
        assert d["kind"] == "final" and d["energy"] == r.energy and d["forces"] == r.forces
        assert structure_hash(d["structure"]) == r.final_hash
    with_frames = training_labels(config, store, frames=2)
    extra = [d for d in with_frames if d["kind"] == "frame"]
    assert extra and all(len(d["structure"]) == len(d["forces"]) for d in extra)
    assert len([d for d in with_frames if d["kind"] == "final"]) == 4


def test_corrupt_result_file_in_a_campaign_is_recomputed_once_and_logged(tmp_path, caplog):
    import logging

    store = CampaignStore.in_workdir(tmp_path)
    h = store.add_structure(cu_fcc(3.62, (0, 0.05)), source="relaxed", round=1)
    settings = EMTSettings()
    oracle_dir = tmp_path / "oracle" / h
    # A kill between the oracle's file write and the store's commit, with the file half-written: simulate by
    # labelling into the work dir only, then truncating the file.
    from loop.runtime.labelling import run_label

    first = run_label(settings.model_dump(), store.get_structure(h).as_dict(), str(oracle_dir))
    text = (oracle_dir / "result.json").read_text()
    (oracle_dir / "result.json").write_text(text[: len(text) // 3])
    with caplog.at_level(logging.WARNING):
        results = label_hashes(store, [h], settings=settings, workdir=tmp_path, round=1)
    assert results[h].ok and results[h].energy == pytest.approx(first["energy"], abs=1e-9)
    assert "corrupt" in results[h].metadata["replaced_corrupt_result"]
    assert sum("was corrupt and was recomputed once" in r.getMessage() for r in caplog.records) == 1
    assert len(list(oracle_dir.glob("result.json.corrupt-*"))) == 1


def test_a_relaxation_that_collapses_the_cell_is_a_failed_label(tmp_path):
    # A layered LiPO2 candidate of a Li-P-O pool build (funnel and emulator screening passed it): SevenNet-0 relaxes
    # it onto atoms a fraction of an Å apart and reports an energy of order -1e16 eV/atom, which broke the hull of
    # every later batch before this check.
    from oracle import MLFFSettings

    lipo2 = Structure(
        Lattice([[1.44203073, -0.83255731, 0.0], [0.0, 1.66511464, 0.0], [0.0, 0.0, 13.67550567]]),
        ["Li", "O", "O", "P"],
        [[0, 0, 0], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5], [0, 0, 0.5]],
    )
    store = CampaignStore.in_workdir(tmp_path)
    h = store.add_structure(lipo2, source="relaxed", round=1)
    settings = MLFFSettings()
    result = label_hashes(store, [h], settings=settings, workdir=tmp_path, round=1)[h]
    assert result.status == "failed"
    assert "collapsed" in result.reason and result.energy_per_atom is None
    stored = store.get_oracle_result(h, settings.settings_hash())
    assert stored is not None and stored.status == "failed"  # kept: the same relaxation would collapse again
