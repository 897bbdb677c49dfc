"""Structures the emulator cannot turn into a crystal graph are set aside where they appear, never stopping a
campaign: a seed is skipped from the references with a note, a candidate fails the funnel, an oracle result that
cannot be physical is a failed label, and training leaves out a stored label it cannot graph."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure

from emulator.graphs import ATOM_GRAPH_CUTOFF, graph_problem
from generator.seeds import _parse_cif, load_seeds, seed_table
from loop.config import validate_config
from loop.runtime.labelling import label_hashes, reject_unphysical
from loop.science.funnel import Funnel, FunnelConfig, KnownIndex
from loop.store import CampaignStore
from loop.work.references import reference_pool
from loop.work.retraining import retrain, training_labels
from oracle import EMTSettings
from oracle.base import OracleResult
from tests.loop.cli_process import matloop
from tests.loop.quick_campaign import quick_config

NA_SPARSE = "mp-689577"  # one Na atom in 349.8 Å3: no neighbour within 6 Å
HOVO4_SPARSE = "mp-1104326"  # a 12-atom HoVO4 cell of 364.7 Å3/atom


def converter():
    """CHGNet's own graph converter, as the pretrained model in use builds it."""
    from chgnet.graph import CrystalGraphConverter
    from chgnet.model import CHGNet

    model = CHGNet.load(use_device="cpu", verbose=False)
    assert model.graph_converter.atom_graph_cutoff == ATOM_GRAPH_CUTOFF
    return CrystalGraphConverter(
        atom_graph_cutoff=ATOM_GRAPH_CUTOFF,
        bond_graph_cutoff=model.graph_converter.bond_graph_cutoff,
        on_isolated_atoms="error",
    )


def chgnet_refuses(convert, structure: Structure) -> bool:
    try:
        convert(structure)
    except ValueError as exc:
        assert "isolated atom" in str(exc)
        return True
    return False


def na_with_an_isolated_atom() -> Structure:
    """Seven Na atoms 3-3.5 Å apart and one more 8.5 Å from all of them: 122 Å3/atom, inside the funnel's volume
    range and with no pair too close, yet the eighth atom has no neighbour within the graph cutoff."""
    cluster = [(x, y, z) for x in (0.0, 3.0) for y in (0.0, 3.5) for z in (0.0, 3.5)][:7]
    coords = [*cluster, (11.5, 1.75, 1.75)]
    return Structure(Lattice.orthorhombic(20.0, 7.0, 7.0), ["Na"] * 8, coords, coords_are_cartesian=True)


def na_s_config(**kw):
    data = {"name": "na-s", "chemical_systems": ["Na-S"], "oracle": {"kind": "mlff"}, **kw}
    return validate_config(data)


# -- the rule ---------------------------------------------------------------------------------------------------------
def test_the_rule_is_chgnets_on_every_bundled_elemental_seed():
    table = seed_table()
    elemental = table[table["element_set"].map(len) == 1]
    assert len(elemental) == 323
    convert = converter()
    refused = set()
    for material_id, cif in zip(elemental["material_id"], elemental["cif"], strict=True):
        structure = _parse_cif(cif)
        problem = graph_problem(structure)
        assert (problem is not None) == chgnet_refuses(convert, structure), material_id
        if problem is not None:
            refused.add(material_id)
    assert refused == {NA_SPARSE}
    assert chgnet_refuses(convert, na_with_an_isolated_atom())
    assert "1 of 8 atom(s) have no neighbour" in graph_problem(na_with_an_isolated_atom())


@pytest.mark.slow
def test_every_bundled_compound_once():
    """All 40 392 bundled compounds. A cell with an axis no longer than the cutoff gives every atom its own periodic
    image as a neighbour, so only cells whose three axes are longer are parsed and checked (about 16 000)."""
    table = seed_table()
    compounds = table[table["element_set"].map(len) > 1]
    assert len(compounds) == len(table) - 323
    axis = {k: re.compile(rf"_cell_length_{k}\s+([0-9.]+)") for k in "abc"}
    convert = converter()
    refused, checked = set(), 0
    for material_id, cif in zip(compounds["material_id"], compounds["cif"], strict=True):
        if min(float(axis[k].search(cif).group(1)) for k in "abc") <= ATOM_GRAPH_CUTOFF:
            continue
        checked += 1
        structure = _parse_cif(cif)
        if graph_problem(structure) is not None:
            assert chgnet_refuses(convert, structure), material_id
            refused.add(material_id)
    assert checked > 10_000
    assert refused == {HOVO4_SPARSE}
    # Where it would appear: the references of its system leave it out.
    config = validate_config(
        {
            "name": "hvo",
            "chemical_systems": ["Ho-V-O"],
            "oracle": {"kind": "emt"},
            "references": {"max_atoms": 12},
        }
    )
    seeds = {k.id: k for k in load_seeds(chemical_systems=["Ho-V-O"])}
    assert (
        len(seeds[HOVO4_SPARSE].structure) <= 12
    )  # it would be a reference candidate, if it could be graphed
    assert HOVO4_SPARSE not in {k.id for k in reference_pool(config)}


# -- where such structures appear -------------------------------------------------------------------------------------
def test_a_seed_it_cannot_graph_is_skipped_from_the_references_with_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="matloop"):
        pool = reference_pool(na_s_config(references={"max_element_atoms": 2}))
    ids = {k.id for k in pool}
    assert NA_SPARSE not in ids
    assert any(k.structure.composition.reduced_formula == "Na" for k in pool)
    assert all(graph_problem(k.structure) is None for k in pool)
    assert any(f"reference {NA_SPARSE} (Na) skipped" in r.getMessage() for r in caplog.records)


def test_a_candidate_it_cannot_graph_fails_the_funnel_with_a_reason():
    from generator.base import Candidate

    funnel = Funnel(FunnelConfig(charge_balance="off"), known=KnownIndex())
    kept, report = funnel.run([Candidate(structure=na_with_an_isolated_atom(), source="test", parent=None)])
    assert kept == []
    assert report.removed["graph"] == 1 and report.removed["volume"] == 0
    assert "no neighbour within the emulator's 6 Å graph cutoff" in report.rejections[0].reason


def _ok_result(final: Structure) -> dict:
    return OracleResult(
        status="ok",
        energy=-1.0 * len(final),
        energy_per_atom=-1.0,
        forces=[[0.0, 0.0, 0.0]] * len(final),
        stress=[0.0] * 6,
        final_structure=final,
        settings={"kind": "emt"},
    ).to_dict()


def test_an_oracle_result_it_cannot_graph_or_too_large_is_a_failed_label():
    settings = EMTSettings().model_dump()
    isolated = _ok_result(na_with_an_isolated_atom())
    rejected = reject_unphysical(isolated, settings=settings, max_volume_per_atom=150.0)
    assert rejected["status"] == "failed" and "cannot graph" in rejected["reason"]
    blown = na_with_an_isolated_atom()
    blown.scale_lattice(blown.volume * 2)
    rejected = reject_unphysical(_ok_result(blown), settings=settings, max_volume_per_atom=150.0)
    assert rejected["status"] == "failed"
    assert "expanded the cell to 245.0 Å³/atom, above the funnel's limit of 150" in rejected["reason"]
    # `matloop label` trains nothing on its results: only a collapsed cell is refused there.
    assert reject_unphysical(isolated, settings=settings)["status"] == "ok"


def test_an_energy_no_code_gives_is_a_failed_label_even_in_a_sound_cell():
    """SevenNet relaxed a squeezed Na2S to -3.6e7 eV/atom with no two atoms closer than 0.5 Å."""
    settings = EMTSettings().model_dump()
    bcc_na = Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    wild = {**_ok_result(bcc_na), "energy_per_atom": -3.6e7, "energy": -7.2e7}
    for volume_limit in (150.0, None):  # in a campaign and through `matloop label`
        rejected = reject_unphysical(wild, settings=settings, max_volume_per_atom=volume_limit)
        assert rejected["status"] == "failed" and "energy no code gives" in rejected["reason"]
    # An absolute pseudopotential energy of a few hundred eV/atom (CP2K, Quantum ESPRESSO) is a label.
    absolute = {**_ok_result(bcc_na), "energy_per_atom": -1302.5, "energy": -2605.0}
    assert reject_unphysical(absolute, settings=settings, max_volume_per_atom=150.0)["status"] == "ok"


def test_training_leaves_out_a_stored_label_it_cannot_graph(tmp_path, caplog):
    config = validate_config({"name": "na", "chemical_systems": ["Na"], "oracle": {"kind": "emt"}})
    store = CampaignStore.in_workdir(tmp_path)
    good = Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    hashes = [store.add_structure(s, source="relaxed", round=1) for s in (good, na_with_an_isolated_atom())]
    # As a campaign from before the label stage refused such results would have stored them.
    for h, s in zip(hashes, (good, na_with_an_isolated_atom()), strict=True):
        store.add_oracle_result(
            h, oracle="emt", settings_hash=config.oracle.settings_hash(), result=_ok_result(s), round=1
        )
    with caplog.at_level(logging.WARNING, logger="matloop"):
        data = training_labels(config, store)
    assert [d["hash"] for d in data] == [hashes[0]]
    assert any(f"label {hashes[1]} is left out" in r.getMessage() for r in caplog.records)


def _na2s(scale: float) -> Structure:
    s = Structure(Lattice.cubic(4.2), ["Na", "Na", "S"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    s.scale_lattice(s.volume * scale)
    return s


@pytest.mark.slow
def test_a_real_sevennet_relaxation_past_the_volume_limit_is_a_failed_label_and_retraining_goes_on(tmp_path):
    # SevenNet-0 relaxes this squeezed Na2S cell (8.6 Å3/atom, no pair closer than the collapse rule) out to about
    # 50 Å3/atom; the campaign's funnel here accepts at most 40, so the result is refused as a label.
    config = na_s_config(
        generator={"funnel": {"volume_per_atom": [4.0, 40.0]}},
        emulator={"kind": "chgnet_ensemble", "n_members": 2, "distill_steps": 5, "distill_structures": 8},
        emulator_training={"fine_tune_epochs": 1},
        oracle={"kind": "mlff", "relax_steps": 60},
    )
    store = CampaignStore.in_workdir(tmp_path)
    bcc_na = Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structures = [_na2s(0.35), _na2s(1.0), bcc_na]
    hashes = [store.add_structure(s, source="relaxed", round=1) for s in structures]
    results = label_hashes(
        store,
        hashes,
        settings=config.oracle,
        workdir=tmp_path,
        round=1,
        max_volume_per_atom=config.generator.funnel.volume_per_atom[1],
    )
    exploded = results[hashes[0]]
    assert exploded.status == "failed"
    assert re.search(
        r"expanded the cell to [4-9]\d\.\d Å³/atom, above the funnel's limit of 40", exploded.reason
    )
    assert store.get_oracle_result(hashes[0], config.oracle.settings_hash()).status == "failed"
    assert all(results[h].ok for h in hashes[1:])

    report = retrain(
        config, store=store, round=1, emulator_in=None, generator_in=None, out_dir=tmp_path / "checkpoints"
    )
    assert report["n_training_labels"] == 2
    assert (Path(report["emulator_checkpoint"]) / "manifest.json").is_file()


@pytest.mark.slow
def test_a_na_s_campaign_with_the_mlff_oracle_runs_two_rounds(tmp_path):
    data = quick_config(name="na-s-mlff", rounds=2)
    data.update(
        chemical_systems=["Na-S"],
        references={"max_compounds": 2, "max_atoms": 8, "max_element_atoms": 2},
        oracle={"kind": "mlff", "relax_steps": 40, "relax_fmax": 0.1},
    )
    data["generator"]["funnel"] = {"max_atoms": 12}
    (tmp_path / "na-s.yaml").write_text(yaml.safe_dump(data))
    proc = matloop("run", "na-s.yaml", "--workdir", "w", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reference {NA_SPARSE} (Na) skipped" in proc.stderr
    store = CampaignStore.in_workdir(tmp_path / "w")
    try:
        assert [r.round for r in store.rounds() if r.status == "done"] == [0, 1, 2]
        assert NA_SPARSE not in {r.parent for r in store.structure_rows(where="round = ?", params=(0,))}
        assert all(store.stage_done(rnd, "retrain") for rnd in (0, 1, 2))
        assert len(store.round_queries(1)) > 0 and len(store.round_queries(2)) > 0
    finally:
        store.close()
