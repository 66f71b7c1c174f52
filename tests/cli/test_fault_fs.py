"""Fault corpus, filesystems: a file where a folder goes, a read-only folder, a full disk (``ulimit -f``)
and an interrupted run — each one line, and every output folder complete or marked incomplete."""

import errno
import os
from pathlib import Path

import pytest

from fault_helpers import assert_one_line_error, run_cli, run_sub, snapshot


def _commands(world, out):
    return {
        "encode": ["encode", "--model", world["spec"], "--dataset", f"folder:{world['data']}", "--split", "test",
                   "--out", out, "--no-progress"],
        "analyze": ["analyze", world["test"], "--out", out, "--twonn-samples", "0", "--no-progress"],
        "train": ["train", "--train", world["train"], "--val", world["val"], "--test", world["test"], "--adapter", "linear",
                  "--out", out, "--quiet", "--epochs", "1"],
        "zeroshot": ["zeroshot", world["test"], "--train", world["train"], "--out", out],
    }


def _temporaries(root: Path) -> list[str]:
    return sorted(p.name for p in Path(root).rglob(".*") if ".tmp-" in p.name)


@pytest.mark.parametrize("command", ["encode", "analyze", "train", "zeroshot"])
def test_out_naming_an_existing_file(world, tmp_path, capsys, command):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    for out in (target, target / "sub"):
        rc, _, err = run_cli(_commands(world, out)[command], capsys)
        assert_one_line_error(rc, err, "notes.txt", "is a file")
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("command", ["encode", "analyze", "train", "zeroshot"])
def test_read_only_output_folder(world, tmp_path, capsys, monkeypatch, command):
    """Every write under ``ro`` fails with EACCES (simulated: the tests may run as root, which ignores modes)."""
    import builtins

    import resi_dual.files

    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = builtins.open

    def deny(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(file).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    rc, _, err = run_cli(_commands(world, ro / "out")[command], capsys)
    monkeypatch.setattr(builtins, "open", real_open)
    assert_one_line_error(rc, err, "permission denied", str(ro))
    assert _temporaries(ro) == []
    assert resi_dual.files  # the module whose writes were denied


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder")
def test_read_only_folder_for_real(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run_sub(_commands(world, ro / "out")["analyze"])
        assert_one_line_error(r.returncode, r.stderr, "permission denied")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command, blocks", [("encode", 2), ("analyze", 4), ("train", 2), ("zeroshot", 1)])
def test_file_size_limit(world, tmp_path, command, blocks):
    """Under ``ulimit -f`` (a full disk, as far as the writer can tell): one line, no temporaries left,
    and a rerun without the limit completes."""
    out = tmp_path / "out"
    argv = _commands(world, out)[command]
    if command == "zeroshot":  # zeroshot.json records the store path as given: a long one outgrows 1 KiB
        argv[1] = str(world["test"].parent) + "/." * 700 + "/" + world["test"].name
    r = run_sub(argv, ulimit_f=blocks)
    assert_one_line_error(r.returncode, r.stderr, "file-size limit", str(out))
    assert _temporaries(tmp_path) == []
    if command == "analyze":
        assert not (out / "complete.json").exists()
    if command == "zeroshot":
        assert not (out / "zeroshot.json").exists()
    r = run_sub(argv)
    assert r.returncode == 0, r.stderr
    assert _temporaries(tmp_path) == []
    if command == "encode":
        assert run_sub(["verify", out]).returncode == 0
    if command == "analyze":
        assert (out / "complete.json").exists()


def test_interrupted_analysis_is_marked_incomplete(world, tmp_path, capsys, monkeypatch):
    """An analysis killed after its bases: the folder has no complete.json; the rerun writes it."""
    import resi_dual.spectral.intrinsic_dim as idm

    out = tmp_path / "analysis"
    argv = _commands(world, out)["analyze"]
    assert run_cli(argv, capsys)[0] == 0
    done = json.loads((out / "complete.json").read_text())
    assert "bases.safetensors" in done["files"] and "id.tsv" in done["files"]
    before = snapshot(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(idm, "unit_intrinsic_dimensions", killed)
    rc, _, err = run_cli(argv, capsys)
    assert rc == 130 and not (out / "complete.json").exists() and _temporaries(out) == []
    assert snapshot(out)["id.tsv"] == before["id.tsv"]  # each file is the old one or a new whole one
    monkeypatch.undo()
    assert run_cli(argv, capsys)[0] == 0
    assert snapshot(out) == before


def test_outputs_honour_the_umask(world, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert run_cli(_commands(world, tmp_path / "a")["analyze"], capsys)[0] == 0
        assert run_cli(_commands(world, tmp_path / "t")["train"], capsys)[0] == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "a" / "bases.safetensors", *(tmp_path / "t").glob("*.safetensors")]:
        assert path.stat().st_mode & 0o777 == 0o640, path


import json  # noqa: E402 - used by the interrupted-analysis case
