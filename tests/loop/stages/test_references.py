"""Round 0's references: the simple elemental cells complete the hull's ends at the oracle's own level (EMT
labels, Cu-Au and Li-Al)."""

from __future__ import annotations

from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from loop.campaign import run_stage
from loop.config import validate_config
from loop.runtime.labelling import label_hashes
from loop.science.elemental_cells import simple_cells
from loop.stages import references
from loop.stages.base import StageContext
from loop.store import CampaignStore
from loop.views.oracle_hull import current_hull
from loop.work.references import reference_pool

FCC, BCC, HCP = 225, 229, 194


def config(**kw):
    data = {"name": "t", "chemical_systems": ["Li-Al"], "oracle": {"kind": "emt"}, **kw}
    return validate_config(data)


def spacegroup(structure) -> int:
    return SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number()


def test_simple_cells_are_fcc_bcc_hcp_at_the_given_volume():
    cells = simple_cells("Li", volume_per_atom=20.0)
    assert [k.id for k in cells] == ["cell:Li-fcc", "cell:Li-bcc", "cell:Li-hcp"]
    assert [spacegroup(k.structure) for k in cells] == [FCC, BCC, HCP]
    assert [len(k.structure) for k in cells] == [1, 1, 2]
    assert all(abs(k.structure.volume / len(k.structure) - 20.0) < 1e-9 for k in cells)


def test_every_target_element_has_fcc_bcc_and_hcp_in_the_pool_once():
    pool = reference_pool(config(references={"max_element_atoms": 2}))
    by_element: dict[str, list[int]] = {}
    for k in pool:
        if len(k.structure.composition) == 1:
            by_element.setdefault(k.structure.composition.reduced_formula, []).append(spacegroup(k.structure))
    for element in ("Li", "Al"):
        groups = by_element[element]
        assert {FCC, BCC, HCP} <= set(groups), (element, groups)
        # bundled or ASE's crystal first; a simple cell only fills a gap (fcc Al is mp-134, bcc Li ASE's)
        assert all(groups.count(g) == 1 for g in (FCC, BCC, HCP)), (element, groups)
    ids = {k.id for k in pool}
    assert {"mp-134", "ase-ref:Li-bcc", "cell:Li-fcc"} <= ids and "cell:Al-fcc" not in ids
    # oxygen's standard state is a molecule: no close-packed atomic oxygen is labelled
    oxides = reference_pool(config(chemical_systems=["Li-O"], references={"max_element_atoms": 2}))
    assert not [k for k in oxides if k.id.startswith("cell:O-")]
    assert {"cell:Li-fcc"} <= {k.id for k in oxides}


def test_round0_labels_the_simple_cells_and_each_hull_end_is_the_lowest_polymorph(tmp_path):
    cfg = config(
        chemical_systems=["Cu-Au"],
        references={"max_compounds": 0, "max_element_atoms": 2},
        oracle={"kind": "emt", "relax_steps": 40},
    )
    store = CampaignStore.in_workdir(tmp_path)
    store.set_meta("config", cfg.model_dump(mode="json"))
    ctx = StageContext(config=cfg, store=store, workdir=tmp_path, round=0)
    report = run_stage(references.STAGE, ctx)
    queried = [q.hash for q in store.round_queries(0)]
    assert report["n_references"] == len(queried) == report["n_elements"]
    results = label_hashes(store, queried, settings=cfg.oracle, workdir=tmp_path, round=0)
    assert all(r.ok for r in results.values())
    structures = store.get_structures(queried)
    origin = {r.hash: r.parent for r in store.structure_rows()}
    labelled: dict[str, dict[str, float]] = {}
    for h in queried:
        s = structures[h]
        labelled.setdefault(s.composition.reduced_formula, {})[origin[h]] = results[h].energy_per_atom
    assert {"cell:Cu-bcc", "cell:Cu-hcp", "cell:Au-bcc"} <= set(labelled["Cu"]) | set(labelled["Au"])
    hull = current_hull(cfg, store)
    ends = {}
    for element in ("Cu", "Au"):
        groups = {spacegroup(structures[h]) for h in queried if origin[h] in labelled[element]}
        assert {FCC, BCC, HCP} <= groups, (element, groups)
        end = hull.hull_energy_per_atom(element)
        assert abs(end - min(labelled[element].values())) < 1e-9  # no polymorph lies below a hull end
        ends[element] = min(labelled[element], key=labelled[element].get)
    # EMT puts hcp Cu ~1 meV/atom below fcc Cu (mp-30), and no bundled Cu cell of <= 2 atoms is hcp: without the
    # simple cells the Cu end would be a polymorph above another one.
    assert ends == {"Cu": "cell:Cu-hcp", "Au": "ase-ref:Au-fcc"}
    store.close()
