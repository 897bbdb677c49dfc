"""The other CLI commands through the console entry point: help, generate, predict, and bad-input handling."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from tests.loop import cli_process

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "smoke.yaml"
SI = ROOT / "configs" / "structures" / "Si_mp-149.cif"
NACL = ROOT / "configs" / "structures" / "NaCl_mp-22862.cif"
COMMANDS = ("run", "daemon", "stop", "status", "generate", "predict", "label", "export", "ui")


matloop = partial(cli_process.matloop, timeout=900)


def test_every_command_has_help():
    top = matloop("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        sub = matloop(command, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout, command


def test_generate_writes_conditioned_crystals_to_extxyz_and_cifs(tmp_path):
    from ase.io import read

    out = tmp_path / "samples.extxyz"
    request = ("--condition", "chemical_system=Li-Fe-O", "--guidance", 3)
    proc = matloop("generate", "--n", 8, *request, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["n_written"] == 8
    assert info["adherence"]["chemical_system"]["honoured"] == 1.0
    frames = read(out, index=":")
    assert len(frames) == 8
    assert all(set(a.get_chemical_symbols()) <= {"Li", "Fe", "O"} for a in frames)
    folder = tmp_path / "cifs"
    assert matloop("generate", "--n", 3, "--num-atoms", 6, "--out", folder).returncode == 0
    cifs = sorted(folder.glob("*.cif"))
    assert len(cifs) == 3
    from pymatgen.core import Structure

    assert all(len(Structure.from_file(c)) == 6 for c in cifs)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("colour=red", "colour"),
        ("chemical_system=Li-Qq", "unknown element 'Qq'"),
        ("band_gap=3:1", "low > high"),
        ("band_gap", "KEY=VALUE"),
    ],
)
def test_generate_rejects_bad_conditions_and_writes_nothing(tmp_path, condition, message):
    out = tmp_path / "never.extxyz"
    proc = matloop("generate", "--n", 4, "--condition", condition, "--out", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_predict_gives_mean_and_spread(tmp_path):
    proc = matloop("predict", SI, NACL, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["structure"] for r in rows] == [SI.name, NACL.name]
    for r in rows:
        assert r["energy_per_atom"] < 0 and r["energy_per_atom_std"] >= 0 and len(r["stress"]) == 6
    # Pretrained CHGNet knows Si well: about -5.4 eV/atom in MP's (PBE) level of theory.
    assert abs(rows[0]["energy_per_atom"] + 5.42) < 0.15


def test_workdir_commands_refuse_a_directory_without_a_campaign(tmp_path):
    for args in (("status",), ("export", "--out", tmp_path / "x"), ("stop",), ("ui",)):
        proc = matloop(*args, "--workdir", tmp_path / "none")
        assert proc.returncode == 2 and "no campaign here" in proc.stderr, args
    assert not (tmp_path / "none").exists()


def test_run_rejects_invalid_config_and_foreign_workdir(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nchemical_systems: [Cu-Au]\noracle: {kind: emt, cutoff: 3}\n")
    proc = matloop("run", bad, "--workdir", tmp_path / "w")
    assert proc.returncode == 2 and "oracle.cutoff: unknown key" in proc.stderr
    assert not (tmp_path / "w").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    proc = matloop("run", ROOT / "configs" / "smoke.yaml", "--workdir", tmp_path / "busy")
    assert proc.returncode == 2 and "not a matloop campaign" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("generate", "--n", "0", "--out", "x.extxyz"), "'--n'"),
        (("generate", "--n", "-5", "--out", "x.extxyz"), "'--n'"),
        (("run", SMOKE, "--workdir", "w", "--rounds", "abc"), "'--rounds'"),
        (("status",), "Missing option '--workdir'"),
        (("frobnicate",), "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    proc = matloop(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matloop: error:") and message in lines[0], proc.stderr
    assert "--help" in lines[0]
    assert not any(tmp_path.iterdir())


def test_binary_config_and_export_onto_a_file_are_one_line_errors(tmp_path):
    from loop.store import CampaignStore

    binary = tmp_path / "config.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    proc = matloop("run", binary, "--workdir", tmp_path / "w")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"matloop: error: {binary}: not a text file; give a campaign YAML (see configs/default.yaml)"
    ]
    assert not (tmp_path / "w").exists()

    workdir = tmp_path / "campaign"
    CampaignStore.in_workdir(workdir).close()
    taken = tmp_path / "taken.csv"
    taken.write_text("mine")
    proc = matloop("export", "--workdir", workdir, "--out", taken)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "exists and is not a folder" in proc.stderr
    assert taken.read_text() == "mine"


def test_nan_coordinates_are_refused_before_anything_is_stored(tmp_path):
    poscar = tmp_path / "POSCAR"
    poscar.write_text("Cu2\n1.0\n3.6 0 0\n0 3.6 0\n0 0 3.6\nCu\n2\nDirect\n0 0 0\nnan 0.5 0.5\n")
    proc = matloop("label", poscar, "--oracle", "emt", "--workdir", tmp_path / "w")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "matloop: error: POSCAR: the lattice or atomic coordinates hold NaN or infinite numbers; fix them in the file"
    ]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", SMOKE, "--workdir", "taken.csv"), "--workdir taken.csv: is a file"),
        (
            ("daemon", SMOKE, "--workdir", "taken.csv/w"),
            "--workdir taken.csv/w: is inside taken.csv, which is a file",
        ),
        (("label", SI, "--oracle", "emt", "--workdir", "taken.csv"), "--workdir taken.csv: is a file"),
        (
            ("export", "--workdir", "campaign", "--out", "taken.csv/sub"),
            "--out taken.csv/sub: is inside taken.csv",
        ),
        (("generate", "--n", "2", "--out", "taken.csv/s.extxyz"), "--out's folder taken.csv: is a file"),
        (("generate", "--n", "2", "--out", "s.txt"), "give an .extxyz file or a folder name for CIFs"),
    ],
)
def test_a_file_where_a_folder_belongs_is_one_line_and_nothing_is_written(tmp_path, args, message):
    from loop.store import CampaignStore

    CampaignStore.in_workdir(tmp_path / "campaign").close()
    (tmp_path / "taken.csv").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = matloop(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matloop: error:") and message in lines[0], proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "taken.csv").read_text() == "mine"
