"""Fault corpus, weak behaviour: inputs that used to be accepted silently or crash with a traceback."""

import json
import shutil

import numpy as np
import pytest
import torch

from fault_helpers import assert_one_line_error, make_folder, run_cli


def _train_argv(world, out, **splits):
    s = {"train": world["train"], "val": world["val"], "test": world["test"], **splits}
    return ["train", "--train", s["train"], "--val", s["val"], "--test", s["test"], "--adapter", "linear",
            "--out", out, "--quiet", "--epochs", "1"]


def test_same_store_for_two_splits_is_refused(world, tmp_path, capsys):
    for splits in ({"val": world["train"]}, {"test": world["val"]}):
        rc, _, err = run_cli(_train_argv(world, tmp_path / "o", **splits), capsys)
        assert_one_line_error(rc, err, "are the same store")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_single_class_and_too_many_shots(world, tmp_path, capsys, make_toy_source):
    from resi_dual.adapters.protocol import check_splits
    from resi_dual.errors import ResiDualError

    one = make_toy_source(n=20, n_classes=1)
    with pytest.raises(ResiDualError, match="single class"):
        check_splits(one, make_toy_source(n=20, n_classes=1, seed=1), make_toy_source(n=20, n_classes=1, seed=2))
    rc, _, err = run_cli(_train_argv(world, tmp_path / "o") + ["--shots", "100"], capsys)
    assert_one_line_error(rc, err, "fewer than the 100 asked for")


def test_nan_in_the_val_store(world, tmp_path, capsys, monkeypatch):
    """A store whose encodings hold a NaN (edited in here, so the read-time sha256 check is switched off)."""
    from resi_dual.store.disk import ShardReader

    monkeypatch.setenv("RESI_DUAL_CHECK_READS", "0")

    val = tmp_path / "val"
    shutil.copytree(world["val"], val)
    chunk = val / "chunks" / "000000.safetensors"
    shard = ShardReader(chunk)
    begin = shard.data_start + shard.header["output"]["data_offsets"][0]  # what the linear adapter reads
    data = bytearray(chunk.read_bytes())
    data[begin:begin + 4] = np.float32("nan").tobytes()
    chunk.write_bytes(bytes(data))
    rc, _, err = run_cli(_train_argv(world, tmp_path / "o", val=val), capsys)
    assert_one_line_error(rc, err, "non-finite", "val")
    rc, _, err = run_cli(["verify", val], capsys)  # and verify names the chunk
    assert_one_line_error(rc, err, "chunks/000000.safetensors")


def test_textspan_k_larger_than_the_dictionary(make_toy_source):
    from resi_dual.errors import ResiDualError
    from resi_dual.interpret.decompose import text_span

    data = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    dictionary = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    assert len(set(text_span(data, dictionary, k=5).indices)) == 5
    with pytest.raises(ResiDualError, match="larger than the dictionary"):
        text_span(data, dictionary, k=6)


def test_interpret_on_a_vision_only_model_names_the_cli(world, capsys):
    rc, _, err = run_cli(["interpret", world["test"], "--no-progress"], capsys)
    assert_one_line_error(rc, err, "vision-only", "resi-dual zeroshot STORE --train")


def test_zero_variance_units_are_warned_about(world, tmp_path, capsys):
    from PIL import Image

    from resi_dual.data import load_dataset
    from resi_dual.store.writer import EncodeConfig, encode_store

    root = make_folder(tmp_path / "same", {"test": 2, "train": 1})
    img = Image.new("RGB", (16, 16), (90, 30, 200))
    for p in (root / "test").rglob("*.png"):
        img.save(p)
    encode_store(world["model"], load_dataset(f"folder:{root}", "test"), tmp_path / "s", EncodeConfig(progress=False))
    rc, _, err = run_cli(["analyze", tmp_path / "s", "--twonn-samples", "0", "--no-progress"], capsys)
    assert rc == 0 and "zero variance" in err and "identical images" in err


def test_binary_text_inputs(world, tmp_path, capsys):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    rc, _, err = run_cli(["interpret", world["test"], "--dictionary", blob], capsys)
    assert_one_line_error(rc, err, "dictionary", "not UTF-8 text")
    rc, _, err = run_cli(["explain", world["adapter"], "--descriptions", blob], capsys)
    assert_one_line_error(rc, err, "descriptions", "not UTF-8 text")
    rc, _, err = run_cli(["experiment", "intrinsic-dim", "--config", blob, "--out", tmp_path / "x"], capsys)
    assert_one_line_error(rc, err, "grid config", "not UTF-8 text")


def test_bad_bases_files(world, tmp_path, capsys):
    from resi_dual.spectral.pca import fit_bases
    from resi_dual.store import open_store

    good = fit_bases(open_store(world["train"]), units="heads", progress=False).save(tmp_path / "b.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    text = tmp_path / "text.safetensors"
    text.write_text("these are not bases\n")
    for path in (cut, text):
        rc, _, err = run_cli(_train_argv(world, tmp_path / "o") + ["--adapter", "residual", "--basis", path], capsys)
        assert_one_line_error(rc, err, str(path), "not a readable bases file")
    assert json.loads(json.dumps(str(good)))  # the good one stays readable


def test_grid_dataset_specs_are_checked_up_front(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text('[[models]]\nname = "a"\nspec = "demo"\n\n[[datasets]]\nname = "digits"\nspec = "digits"\n\n'
                    f'[[datasets]]\nname = "mine"\nspec = "folder:{tmp_path / "nowhere"}"\n\n'
                    '[reference]\nspec = "fashion-mnist"\n')
    rc, _, err = run_cli(["experiment", "intrinsic-dim", "--config", grid, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(rc, err, "datasets[1] (mine)", "no folder")
    assert not (tmp_path / "out").exists()


def test_an_unfinished_rerun_marks_the_previous_tables_stale(tmp_path):
    from types import SimpleNamespace

    from resi_dual.experiments.config import parse_config
    from resi_dual.experiments.outputs import Outputs
    from resi_dual.report.experiments import STALE, config_sha256, mark_stale, write_run

    def grid(ds):
        return parse_config({"models": [{"name": "a", "spec": "demo"}], "datasets": [{"name": ds, "spec": ds}],
                             "reference": {"spec": "fashion-mnist"}})

    first, edited = config_sha256(grid("digits")), config_sha256(grid("textiles"))
    assert first != edited and first == config_sha256(grid("digits"))
    run = SimpleNamespace(name="intrinsic-dim", outputs=Outputs(), summary={"cells": 1})
    results = write_run(run, tmp_path, first)
    assert json.loads((results / "run.json").read_text())["config_sha256"] == first
    (results / "units.tsv").write_text("old table\n")
    mark_stale(results, edited)  # the edited grid starts ... and is killed
    assert not (results / "run.json").exists() and edited[:16] in (results / STALE).read_text()
    assert (results / "units.tsv").read_text() == "old table\n"
    write_run(run, tmp_path, edited)  # ... and finishes on the rerun
    assert not (results / STALE).exists() and json.loads((results / "run.json").read_text())["config_sha256"] == edited
