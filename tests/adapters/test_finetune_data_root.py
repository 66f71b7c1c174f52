"""`resi-dual train --adapter finetune` on stores of a `torchvision:` dataset: the images are reloaded
from the dataset root (recorded in the store manifests, or --data-root)."""

import json
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from resi_dual.cli import main


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def _idx(path: Path, arr: np.ndarray) -> None:
    """An IDX file as torchvision's MNIST reads it (the same fake as tests/data/test_datasets.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _vit(path: Path) -> str:
    import transformers as tf

    torch.manual_seed(0)
    tf.ViTModel(tf.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=16, patch_size=8)).save_pretrained(path)
    return f"hf:{path}"


def test_finetune_reloads_torchvision_images_from_the_recorded_or_given_root(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "tv"
    for prefix, n in (("train", 40), ("t10k", 10)):
        _idx(data / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _idx(data / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    spec = _vit(tmp_path / "vit")
    stores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weight model's own warnings
        for split in ("train", "val", "test"):
            stores[split] = str(tmp_path / f"s-{split}")
            assert main(["encode", "--model", spec, "--dataset", "torchvision:MNIST", "--data-root", str(data),
                         "--split", split, "--out", stores[split], "--dtype", "float32", "--no-progress"]) == 0
        base = ["train", "--train", stores["train"], "--val", stores["val"], "--test", stores["test"],
                "--adapter", "finetune", "--epochs", "1", "--lr", "1e-3", "--quiet"]
        # the root recorded in the manifests when the stores were encoded
        assert main(base + ["--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
        m = json.loads((tmp_path / "a" / "mnist-finetune-seed1.json").read_text())
        assert m["n"] == {"train": 36, "val": 4, "test": 10} and m["epochs"] == 1
        # a count of 10 test images, and a real loss from the reloaded pixels
        assert m["accuracy"]["test"] * 10 == round(m["accuracy"]["test"] * 10) and 0 < m["history"][0]["loss"] < 1e3
        # the dataset moved: the recorded root no longer holds it, --data-root points at the new place
        moved = tmp_path / "elsewhere"
        shutil.move(str(data), str(moved))
        capsys.readouterr()
        assert main(base + ["--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers' loading bar comes first)
        assert err.startswith("error: torchvision:MNIST not found under") and str(tmp_path / "tv") in err
        assert main(base + ["--out", str(tmp_path / "c"), "--data-root", str(moved)]) == 0
    m2 = json.loads((tmp_path / "c" / "mnist-finetune-seed1.json").read_text())
    assert m2["n"] == m["n"] and m2["trainable_parameters"] == m["trainable_parameters"]
