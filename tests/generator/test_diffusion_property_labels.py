"""CHGNet magnetic-density / bulk-modulus labels and conditioning on them, old checkpoints included."""

from __future__ import annotations

import math

import pytest
import torch
from pymatgen.core import Structure

from generator.base import GeneratorError
from generator.diffusion import sample_structures, validate_conditions
from generator.diffusion.conditions import (
    BASE_CONDITIONS,
    KNOWN,
    check_supported,
    checkpoint_conditions,
    encode_batch,
)
from generator.diffusion.data import load_mp20, read_mp20_frame
from generator.diffusion.denoiser import Denoiser
from generator.diffusion.training import export_checkpoint, init_from_parent, load_checkpoint


@pytest.fixture(scope="module")
def chgnet():
    from generator.diffusion.chgnet_labels import load_chgnet

    torch.set_num_threads(1)
    return load_chgnet()


@pytest.fixture(scope="module")
def real_crystals() -> dict[str, Structure]:
    frame = read_mp20_frame("train").set_index("material_id")
    # MgO rock salt, Cu fcc, zinc-blende ZnS, FeO (antiferromagnetic in DFT; CHGNet moments are unsigned)
    ids = {"MgO": "mp-1265", "Cu": "mp-30", "ZnS": "mp-10695", "FeO": "mp-715262"}
    return {name: Structure.from_str(frame.loc[mid, "cif"], fmt="cif") for name, mid in ids.items()}


def test_labels_of_real_crystals_are_physically_sane(chgnet, real_crystals):
    from generator.diffusion.chgnet_labels import label_structures

    names = list(real_crystals)
    mag, bulk = label_structures([real_crystals[n] for n in names], model=chgnet)
    mag, bulk = dict(zip(names, mag, strict=True)), dict(zip(names, bulk, strict=True))
    # experimental bulk moduli: MgO 160, Cu 140, ZnS 77 GPa; clamped-ion CHGNet values should be near
    assert 100 < bulk["MgO"] < 260
    assert 90 < bulk["Cu"] < 220
    assert 45 < bulk["ZnS"] < 130
    assert bulk["ZnS"] < bulk["MgO"]
    # Fe²⁺ carries ~3.7 μB in a ~20 Å³/formula-unit cell; MgO, Cu and ZnS are nonmagnetic
    assert mag["FeO"] > 0.05
    for name in ("MgO", "Cu", "ZnS"):
        assert mag[name] < 0.01


def test_bulk_fit_rejects_non_convex_and_absurd_curves():
    from generator.diffusion.chgnet_labels import fit_bulk_modulus

    v = [95.0, 97.5, 100.0, 102.5, 105.0]
    assert math.isnan(fit_bulk_modulus(v, [-((x - 100) ** 2) for x in v]))  # concave
    assert math.isnan(fit_bulk_modulus(v, [50 * (x - 100) ** 2 for x in v]))  # ~8000 GPa
    b = fit_bulk_modulus(v, [0.01 * (x - 100) ** 2 for x in v])  # B = V0 · 2a = 2 eV/Å³ ≈ 320 GPa
    assert b == pytest.approx(100 * 0.02 * 160.2177, rel=1e-3)


def test_bundled_labels_attach_to_mp20():
    data = load_mp20("train", limit=64)
    assert (~data.magnetic_density.isnan()).sum() >= 60
    assert (~data.bulk_modulus.isnan()).sum() >= 40
    md = data.magnetic_density[~data.magnetic_density.isnan()]
    assert md.min() >= 0 and md.max() < 0.3
    assert len(data.subset(torch.arange(5)).bulk_modulus) == 5


def test_new_conditions_parse_and_reject_impossible_ranges():
    conds = validate_conditions({"magnetic_density": "0.05:0.3", "bulk_modulus": "200"})
    assert (conds["magnetic_density"].low, conds["magnetic_density"].high) == (0.05, 0.3)
    assert conds["bulk_modulus"].value == 200
    values, present = encode_batch(conds, 100)["magnetic_density"]
    assert present.all() and values.min() >= 0.05 and values.max() <= 0.3
    for bad, message in [
        ({"bulk_modulus": "600:900"}, "impossible"),
        ({"bulk_modulus": "-5"}, "impossible"),
        ({"magnetic_density": "1:2"}, "impossible"),
        ({"magnetic_density": "0.2:0.1"}, "low > high"),
        ({"bulk_modulus": "stiff"}, "not a number"),
    ]:
        with pytest.raises(GeneratorError, match=message) as info:
            validate_conditions(bad)
        assert "\n" not in str(info.value)


def _tiny(conditions):
    torch.manual_seed(0)
    return Denoiser(hidden=16, layers=1, n_freq=2, conditions=conditions)


def _forward(model, conditions):
    n = torch.tensor([2, 3])
    gen = torch.Generator().manual_seed(0)
    lattice = torch.eye(3).repeat(2, 1, 1) * 4.0
    return model(
        tokens=torch.tensor([3, 8, 26, 26, 8]),
        frac=torch.rand(5, 3, generator=gen),
        lattice_y=torch.zeros(2, 6),
        lattice=lattice,
        num_atoms=n,
        t=torch.tensor([0.3, 0.7]),
        conditions=conditions,
    )


def test_added_embeddings_start_as_the_parent():
    parent = _tiny(BASE_CONDITIONS).eval()
    child = _tiny(None).eval()
    assert init_from_parent(child, parent) == ["magnetic_density", "bulk_modulus"]
    base = encode_batch(validate_conditions({"hhi": "1000"}), 2)
    new = encode_batch(
        validate_conditions({"hhi": "1000", "magnetic_density": "0.1", "bulk_modulus": "90"}), 2
    )
    with torch.no_grad():
        for a, b in zip(_forward(parent, base), _forward(child, new), strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_old_format_checkpoint_loads_and_rejects_new_conditions(tmp_path):
    old = _tiny(BASE_CONDITIONS)
    path = tmp_path / "old.pt"
    from generator.diffusion.training import TrainConfig

    export_checkpoint(
        path,
        model=old,
        config=TrainConfig(hidden=16, layers=1, n_freq=2),
        stats={
            "density": 0.06,
            "num_atoms_hist": [0.0] + [0.05] * 20,
            "allowed_z": list(range(1, 84)),
            "n_train": 1,
        },
        metrics={"steps": 1.0},
    )
    # strip what older checkpoints did not have
    payload = torch.load(path, weights_only=True)
    del payload["conditions"]
    del payload["train_config"]["conditions"]
    torch.save(payload, path)
    model, loaded = load_checkpoint(path)
    assert model.conditions == BASE_CONDITIONS
    with pytest.raises(GeneratorError, match="bulk_modulus conditioning is not available") as info:
        check_supported(validate_conditions({"bulk_modulus": "100:200"}), checkpoint_conditions(loaded))
    assert "\n" not in str(info.value)
    with pytest.raises(GeneratorError, match="magnetic_density conditioning is not available"):
        sample_structures(n=2, conditions={"magnetic_density": "0.1:0.2"}, checkpoint=path, steps=3)
    # the conditions it was trained with still work
    assert len(sample_structures(n=2, conditions={"hhi": "0:2000"}, checkpoint=path, steps=3)) == 2


def test_shipped_checkpoint_samples_with_new_conditions():
    from generator.diffusion import SHIPPED_CHECKPOINT

    payload = torch.load(SHIPPED_CHECKPOINT, weights_only=True)
    assert set(payload["conditions"]) == set(KNOWN)
    request = validate_conditions({"magnetic_density": "0.05:0.3", "bulk_modulus": "200:500"})
    check_supported(request, checkpoint_conditions(payload))
    out = sample_structures(
        n=4, conditions={"magnetic_density": "0.05:0.3", "bulk_modulus": "150:300"}, seed=0, steps=30
    )
    assert len(out) == 4
    assert all(1 <= len(s) <= 20 for s in out)
