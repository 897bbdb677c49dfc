"""The `design:` section: validation in one line (unknown property, impossible range, a requirement the oracle
cannot answer) and the cheap rules on real crystals."""

from __future__ import annotations

import pytest
import yaml

from generator.seeds import load_seeds
from loop.config import load_config
from loop.design.requirements import DesignConfig, Status, load_design
from loop.errors import InputError


def _config(tmp_path, design, oracle=None):
    data = {"name": "t", "chemical_systems": ["Li-O"], "oracle": oracle or {"kind": "mlff"}, "design": design}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("design", "expected"),
    [
        ({"viscosity": {"max": 1}}, "design.viscosity: unknown key"),
        (
            {"density": {"min_g_cm3": 3.0, "max_g_cm3": 2.0}},
            "design.density: Value error, min_g_cm3 3.0 must be below",
        ),
        ({"conductivity": {"min_ms_cm": 0.1, "temperatures_k": [250, 800]}}, "above 300 K"),
        ({"conductivity": {"min_ms_cm": -1}}, "design.conductivity.min_ms_cm"),
        ({"thermal": {"temperature_k": 600, "duration_ps": 0}}, "design.thermal.duration_ps"),
        ({"electrochemical_window": {}}, "set max_reduction_v, min_oxidation_v or min_width_v"),
        ({"expensive": ["conductivity", "melting"]}, "design.expensive.1"),
        ({"elements": {"forbidden": ["Xx"]}}, "unknown element 'Xx'"),
        ({"band_gap": {"min_ev": 3.0}}, "oracle mlff computes only energy, forces, stress"),
    ],
)
def test_bad_design_is_one_line(tmp_path, design, expected):
    with pytest.raises(InputError) as info:
        load_config(_config(tmp_path, design))
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_band_gap_is_accepted_with_an_oracle_that_computes_one(tmp_path):
    config = load_config(_config(tmp_path, {"band_gap": {"min_ev": 3.0}}, oracle={"kind": "gpaw"}))
    assert config.design.band_gap.min_ev == 3.0 and config.design.asked == ["band_gap"]
    design, oracle = load_design({"oracle": {"kind": "emt"}, "design": {"phonons": {}}}, source="d.yaml")
    assert design.phonons.tolerance_thz == 0.1 and oracle.kind == "emt"
    with pytest.raises(InputError, match=r"d\.yaml: design: band_gap needs a band gap"):
        load_design({"oracle": {"kind": "emt"}, "design": {"band_gap": {"min_ev": 1}}}, source="d.yaml")


def test_cheap_rules_on_real_crystals():
    seeds = {k.id: k.structure for k in load_seeds(ids=["mp-1960", "mp-2341"])}
    li2o, li3n = seeds["mp-1960"], seeds["mp-2341"]
    design = DesignConfig(
        elements={"forbidden": ["N"]}, cost={"max_hhi": 3000}, density={"min_g_cm3": 1.5, "max_g_cm3": 2.5}
    )
    assert design.elements.assess(li2o.composition).status is Status.PASS
    nitride = design.elements.assess(li3n.composition)
    assert nitride.status is Status.FAIL and "N" in nitride.detail and nitride.value == "Li-N"
    cost = design.cost.assess(li2o.composition)
    # pymatgen's production HHI of Li and O, weighted by mass fraction
    assert cost.status is Status.PASS and 0 < cost.value < 3000
    rho = design.density.assess(li2o)
    assert (
        rho.value == pytest.approx(float(li2o.density))
        and 1.9 < rho.value < 2.2
        and rho.status is Status.PASS
    )
    assert DesignConfig(density={"max_g_cm3": 1.0}).density.assess(li2o).status is Status.FAIL
