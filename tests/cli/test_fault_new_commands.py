"""Fault corpus, the newer commands (locate, explore, groundtruth, verify, train --shots and the peers): missing
or moved files, the wrong kind of store or file, a model without a text tower, bad numbers and an unwritable
or occupied --out — each one ``error:`` line, a non-zero exit, and nothing written or changed."""

import builtins
import errno
import os
import shutil

import pytest

from fault_helpers import assert_one_line_error, run_cli, snapshot

pytestmark = pytest.mark.integration  # the CLI / real stores end to end


@pytest.fixture(scope="module")
def files(world, tmp_path_factory):
    """Inputs of the wrong kind: a binary file, a text file, a foreign folder, a table of other columns."""
    root = tmp_path_factory.mktemp("bad")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (root / "notes.txt").write_text("not a table\n")
    (root / "other.tsv").write_text("a\tb\n1\t2\n")
    (root / "mine").mkdir()
    (root / "mine" / "keep.txt").write_text("my files")
    return root


def _image(world):
    return world["data"] / "test" / "red" / "0.png"


def _assert_nothing_written(before: dict, root, *absent):
    assert snapshot(root) == before
    for p in absent:
        assert not p.exists(), p


# -- verify ---------------------------------------------------------------------------------------

def test_verify_bad_paths(world, files, tmp_path, capsys):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(world["test"], incomplete)
    (incomplete / "manifest.json").unlink()
    for path, needle in [(tmp_path / "missing", "does not exist"), (files / "notes.txt", "is a file, not a store"),
                         (files / "mine", "not a resi-dual store"), (incomplete, "incomplete")]:
        rc, _, err = run_cli(["verify", path], capsys)
        assert_one_line_error(rc, err, str(path), needle)
    rc, out, err = run_cli(["verify", world["test"], files / "mine"], capsys)  # the good one is reported first
    assert_one_line_error(rc, err, "not a resi-dual store")
    assert "ok" in out and str(world["test"]) in out


# -- locate ---------------------------------------------------------------------------------------

def _locate(world, out, *extra, model="demo"):
    return ["locate", "--model", model, "--text", "a red square", _image(world), "--out", out, *extra]


@pytest.mark.parametrize("case", ["missing image", "not an image", "vision-only", "moved model", "bad unit", "binary ranking",
                                  "wrong ranking", "missing ranking", "top 0", "batch 0", "side 4", "empty text"])
def test_locate_bad_input(world, files, tmp_path, capsys, case):
    out = tmp_path / "out"
    argv = {
        "missing image": ["locate", "--model", "demo", "--text", "x", tmp_path / "gone.png", "--out", out],
        "not an image": ["locate", "--model", "demo", "--text", "x", files / "notes.txt", "--out", out],
        "vision-only": _locate(world, out, model=world["spec"]),
        "moved model": _locate(world, out, model=f"hf:{tmp_path / 'moved'}"),
        "bad unit": _locate(world, out, "--units", "L99H0"),
        "binary ranking": _locate(world, out, "--ranking", files / "blob.bin"),
        "wrong ranking": _locate(world, out, "--ranking", files / "other.tsv"),
        "missing ranking": _locate(world, out, "--ranking", tmp_path / "rankings.tsv"),
        "top 0": _locate(world, out, "--ranking", files / "other.tsv", "--top", "0"),
        "batch 0": _locate(world, out, "--batch", "0"),
        "side 4": _locate(world, out, "--side", "4"),
        "empty text": ["locate", "--model", "demo", "--text", " ", _image(world), "--out", out],
    }[case]
    needle = {"missing image": "gone.png", "not an image": "notes.txt", "vision-only": "no text tower",
              "moved model": "no such checkpoint directory", "bad unit": "L99H0", "binary ranking": "not UTF-8 text",
              "wrong ranking": "no method, rank, head columns", "missing ranking": "no --ranking file",
              "top 0": "--top", "batch 0": "--batch", "side 4": "--side", "empty text": "--text is empty"}[case]
    rc, _, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_locate_folder_is_replaced_by_a_rerun(world, tmp_path, capsys):
    rc, _, err = run_cli(_locate(world, tmp_path / "loc"), capsys)
    assert rc == 0, err
    rc, _, err = run_cli(_locate(world, tmp_path / "loc", "--units", "L0H0"), capsys)
    assert rc == 0 and sorted(p.name for p in (tmp_path / "loc").iterdir()) == ["0000_0.png", "locate.tsv"]


# -- explore --------------------------------------------------------------------------------------

def _explore(world, out, *extra, store=None):
    return ["explore", store or world["test"], "--out", out, "--pcs", "1", "--images", "1", "--no-progress", *extra]


@pytest.mark.parametrize("case", ["pcs -1", "pcs 0", "images 0", "batch 0", "thumb 8", "bad unit", "analysis missing",
                                  "analysis is a store", "analysis of another model", "adapter is text",
                                  "specialization binary", "similarity wrong table", "interpret wrong table",
                                  "store is an analysis folder", "store missing"])
def test_explore_bad_input(world, files, foreign_analysis, tmp_path, capsys, case):
    out = tmp_path / "site"
    wrong_interpret = tmp_path.parent / f"{tmp_path.name}-interp"
    wrong_interpret.mkdir(exist_ok=True)
    (wrong_interpret / "textspan.tsv").write_text("a\tb\n1\t2\n")
    argv, needle = {
        "pcs -1": (_explore(world, out, "--pcs", "-1"), "--pcs"),
        "pcs 0": (_explore(world, out, "--pcs", "0"), "--pcs"),
        "images 0": (_explore(world, out, "--images", "0"), "--images"),
        "batch 0": (_explore(world, out, "--batch", "0"), "--batch"),
        "thumb 8": (_explore(world, out, "--thumb", "8"), "--thumb"),
        "bad unit": (_explore(world, out, "--units", "L9H9"), "L9H9"),
        "analysis missing": (_explore(world, out, "--analysis", tmp_path / "gone"), "--analysis"),
        "analysis is a store": (_explore(world, out, "--analysis", world["train"]), "no bases.safetensors"),
        "analysis of another model": (_explore(world, out, "--analysis", foreign_analysis), "fitted on"),
        "adapter is text": (_explore(world, out, "--adapter", files / "notes.txt"), "not a readable adapter file"),
        "specialization binary": (_explore(world, out, "--specialization", files / "blob.bin"), "not UTF-8 text"),
        "similarity wrong table": (_explore(world, out, "--similarity", files / "other.tsv"), "--similarity"),
        "interpret wrong table": (_explore(world, out, "--interpret", wrong_interpret), "textspan.tsv"),
        "store is an analysis folder": (_explore(world, out, store=foreign_analysis), "not a resi-dual store"),
        "store missing": (_explore(world, out, store=tmp_path / "nostore"), "does not exist"),
    }[case]
    rc, _, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def foreign_analysis(world, tmp_path_factory, make_toy_source):
    """A `resi-dual analyze`-like folder whose bases belong to another model (the toy source's)."""
    from resi_dual.spectral.pca import fit_bases

    out = tmp_path_factory.mktemp("foreign") / "analysis"
    out.mkdir()
    fit_bases(make_toy_source(n=40), units="heads", progress=False).save(out / "bases.safetensors")
    return out


@pytest.mark.parametrize("command", ["locate", "explore"])
def test_out_is_a_file_or_someone_elses_folder(world, files, tmp_path, capsys, command):
    """The output replaces its folder as a whole: a file, or a folder of other files, is refused and kept."""
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    theirs = tmp_path / "mine"
    shutil.copytree(files / "mine", theirs)
    before = snapshot(tmp_path)
    for out, needle in [(target, "is a file"), (target / "sub", "is a file"), (theirs, "holding other files")]:
        rc, _, err = run_cli((_locate if command == "locate" else _explore)(world, out), capsys)
        assert_one_line_error(rc, err, str(out), needle)
    _assert_nothing_written(before, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- groundtruth ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["n 0", "n -3", "n 5", "vision-only", "moved demo", "not a demo folder", "out is a file"])
def test_groundtruth_bad_input(world, tmp_path, capsys, case):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    out = tmp_path / "gt"
    argv, needle = {
        "n 0": (["--n", "0"], "--n must be at least 20"),
        "n -3": (["--n", "-3"], "--n must be at least 20"),
        "n 5": (["--n", "5"], "--n must be at least 20"),
        "vision-only": (["--model", world["spec"], "--no-control"], "vision-only"),
        "moved demo": (["--model", f"demo:{tmp_path / 'moved'}"], "demo checkpoint not found"),
        "not a demo folder": (["--model", f"demo:{world['root'] / 'vit'}"], "demo checkpoint not found"),
        "out is a file": (["--out", target], "is a file"),
    }[case]
    argv = ["groundtruth", "--n", "20", "--out", out, *argv]
    rc, _, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and target.read_text() == "mine"


# -- train: --shots and the peers ----------------------------------------------------------------

def _train(world, out, adapter, *extra, train=None):
    return ["train", "--train", train or world["train"], "--val", world["val"], "--test", world["test"], "--adapter", adapter,
            "--out", out, "--quiet", "--epochs", "1", "--seeds", "1", *extra]


@pytest.mark.parametrize("adapter", ["linear", "tip-adapter", "linear-probe", "lp++", "clip-adapter", "lora"])
@pytest.mark.parametrize("shots", ["0", "-1"])
def test_train_shots_must_be_positive(world, tmp_path, capsys, adapter, shots):
    rc, _, err = run_cli(_train(world, tmp_path / "o", adapter, "--shots", shots), capsys)
    assert_one_line_error(rc, err, "shots must be at least 1", shots)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("case", ["missing store", "analysis folder as store", "out is a file", "epochs 0", "moved data",
                                  "coop on a vision-only model", "lr on a peer"])
def test_train_peers_bad_input(world, files, tmp_path, capsys, case):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    out = tmp_path / "o"
    argv, needle = {
        "missing store": (_train(world, out, "tip-adapter", train=tmp_path / "gone"), "does not exist"),
        "analysis folder as store": (_train(world, out, "linear-probe", train=files / "mine"), "not a resi-dual store"),
        "out is a file": (_train(world, target, "tip-adapter-f"), "is a file"),
        "epochs 0": (_train(world, out, "clip-adapter", "--epochs", "0"), "--epochs"),
        "moved data": (_train(world, out, "lora", "--data-root", tmp_path / "moved"), "--data-root"),
        "coop on a vision-only model": (_train(world, out, "coop"), "text tower"),
        "lr on a peer": (_train(world, out, "lp++", "--lr", "0.01"), "--lr is not used by lp++"),
    }[case]
    rc, _, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) in (["notes.txt"], ["notes.txt", "o"])
    assert target.read_text() == "mine" and (not out.exists() or not any(out.iterdir()))


# -- an unwritable --out --------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["locate", "explore", "groundtruth", "train-peer", "interpret"])
def test_unwritable_out(world, text_store, tmp_path, capsys, monkeypatch, command):
    """Every write or mkdir under ``ro`` fails with EACCES (simulated: the tests may run as root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "out"
    real_open, real_mkdir = builtins.open, os.mkdir

    def deny_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(file).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    def deny_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    argv = {"locate": _locate(world, out), "explore": _explore(world, out),
            "groundtruth": ["groundtruth", "--n", "20", "--no-control", "--out", out],
            "train-peer": _train(world, out, "tip-adapter"),
            "interpret": ["interpret", text_store, "--dictionary", text_store.parent / "dictionary.txt", "-k", "2",
                          "--out", out, "--no-progress"]}[command]
    monkeypatch.setattr(builtins, "open", deny_open)
    monkeypatch.setattr(os, "mkdir", deny_mkdir)
    rc, _, err = run_cli(argv, capsys)
    monkeypatch.undo()
    assert_one_line_error(rc, err, "permission denied", str(ro))
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("flag, value", [("--pcs", "-1"), ("--max-samples", "-1"), ("--pc-texts", "0"), ("--rank", "0"),
                                         ("-k", "0")])
def test_interpret_bad_numbers(text_store, tmp_path, capsys, flag, value):
    rc, _, err = run_cli(["interpret", text_store, "--dictionary", text_store.parent / "dictionary.txt", "-k", "2",
                          "--out", tmp_path / "o", "--no-progress", flag, value], capsys)
    assert_one_line_error(rc, err, flag)
    assert not (tmp_path / "o").exists()
