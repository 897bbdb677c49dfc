"""Per-condition adherence of samples, checked on real mp_20 crystals whose properties are known."""

from __future__ import annotations

from pymatgen.core import Structure

from generator.diffusion.adherence import AdherenceTally, describe_summary
from generator.diffusion.conditions import validate_conditions
from generator.diffusion.data import hhi_score, read_mp20_frame


def test_tally_judges_structural_conditions_and_flags_the_rest():
    frame = read_mp20_frame("val").iloc[:40]
    crystals = [Structure.from_str(c, fmt="cif") for c in frame["cif"]]
    sg = int(frame["spacegroup.number"].iloc[0])
    same_sg = sum(int(x) == sg for x in frame["spacegroup.number"])
    system = "-".join(sorted(el.symbol for el in crystals[0].composition.elements))
    hhis = [hhi_score(s) for s in crystals]
    tally = AdherenceTally(
        conditions=validate_conditions(
            {"space_group": sg, "chemical_system": system, "hhi": "0:3000", "band_gap": "1:3"}
        )
    )
    tally.add(crystals[:25])
    tally.add(crystals[25:])
    summary = tally.summary()
    assert summary["space_group"]["honoured"] == same_sg / 40
    assert summary["chemical_system"]["honoured"] >= 1 / 40
    assert summary["hhi"]["honoured"] == sum(0 <= h <= 3000 for h in hhis if h == h) / 40
    assert summary["band_gap"]["honoured"] is None
    lines = describe_summary(summary)
    assert len(lines) == 4 and lines[3].startswith("band_gap=1:3: not judged")
