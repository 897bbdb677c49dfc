"""`matloop label` end to end through the installed console script, with real oracles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests.loop import cli_process

ROOT = Path(__file__).resolve().parents[3]
SI = ROOT / "configs" / "structures" / "Si_mp-149.cif"
NACL = ROOT / "configs" / "structures" / "NaCl_mp-22862.cif"


matloop = partial(cli_process.matloop, timeout=900)


def write_cu_cells(tmp_path: Path) -> list[Path]:
    from pymatgen.core import Lattice, Structure

    paths = []
    for name, a in (("cu_a360", 3.60), ("cu_a370", 3.70)):
        s = Structure(Lattice.cubic(a), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        path = tmp_path / f"{name}.cif"
        s.to(filename=str(path))
        paths.append(path)
    return paths


def test_label_emt_twice_computes_once(tmp_path):
    cells = write_cu_cells(tmp_path)
    work = tmp_path / "work"
    first = matloop("label", *cells, "--oracle", "emt", "--workdir", work, "--json")
    assert first.returncode == 0, first.stderr
    rows = json.loads(first.stdout)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert not any(r["cached"] for r in rows)
    # Compressed fcc Cu (a = 3.60 Å) is under compression relative to 3.70 Å: higher pressure.
    assert rows[0]["pressure"] > rows[1]["pressure"]
    second = matloop("label", *cells, "--oracle", "emt", "--workdir", work, "--json")
    again = json.loads(second.stdout)
    assert all(r["cached"] for r in again)
    assert [r["energy"] for r in again] == [r["energy"] for r in rows]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.cif", "--oracle", "emt"], "no such file"),
        (["bad.cif", "--oracle", "emt"], "not a readable crystal structure"),
        ([str(SI), "--oracle", "emt"], "cannot treat Si"),
        (["tc.cif", "--oracle", "gpaw"], "no PBE PAW setup for Tc"),
        ([str(SI), "--oracle", "nonsense"], "unknown oracle"),
        ([str(SI), "--config", "bad_key.yaml"], "oracle.cutof"),
    ],
)
def test_label_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, message):
    (tmp_path / "bad.cif").write_text("data_broken\nloop_\n_atom_site_label\nnot a structure\n")
    (tmp_path / "bad_key.yaml").write_text("oracle:\n  kind: gpaw\n  cutof: 400\n")
    from pymatgen.core import Lattice, Structure

    Structure(Lattice.cubic(3.1), ["Tc"], [[0, 0, 0]]).to(filename=str(tmp_path / "tc.cif"))
    work = tmp_path / "work"
    proc = matloop("label", *args, "--workdir", work, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not work.exists()


def test_label_refuses_a_5000_atom_cell_before_any_calculation(tmp_path):
    from pymatgen.core import Lattice, Structure

    cell = Structure(
        Lattice.cubic(4.04), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )
    big = cell.make_supercell([11, 11, 11], in_place=False)
    big.remove_sites(list(range(5000, len(big))))
    path = tmp_path / "al5000.cif"
    big.to(filename=str(path))
    work = tmp_path / "work"
    proc = matloop("label", path, "--workdir", work)  # the default oracle: GPAW
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "al5000.cif: 5000 atoms exceed the gpaw oracle's limit of 200" in lines[0]
    assert "raise oracle.max_atoms" in lines[0]
    assert not work.exists()


@pytest.mark.slow
def test_label_gpaw_si_and_nacl_matches_bare_gpaw(tmp_path):
    """Real DFT through the CLI agrees with a bare GPAW run with the same settings (within 0.05 eV/atom)."""
    config = tmp_path / "gpaw.yaml"
    config.write_text("oracle:\n  kind: gpaw\n  cutoff: 300\n  kpoint_density: 1.5\n  relax_steps: 0\n")
    work = tmp_path / "work"
    proc = matloop("label", SI, NACL, "--config", config, "--workdir", work, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows

    bare = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "bare_gpaw.py"), str(SI), str(NACL), "300", "1.5"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert bare.returncode == 0, bare.stderr
    reference = json.loads(bare.stdout)
    for row, e_ref in zip(rows, reference, strict=True):
        assert abs(row["energy_per_atom"] - e_ref) < 0.05
        assert len(row["forces"]) == row["natoms"] and len(row["stress"]) == 6
    # Labelling again is answered from the store: no second DFT run.
    again = json.loads(matloop("label", SI, NACL, "--config", config, "--workdir", work, "--json").stdout)
    assert all(r["cached"] for r in again)
