"""The whole pipeline on a tiny random EVA-02 tower inside open_clip: encode → analyze → interpret → train."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from resi_dual.cli import main
from tracing_models import save_open_clip_dir, timm_clip_cfg

pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def _colour_folders(root, per_split: dict[str, int]):
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for c, name in enumerate(["red", "green", "blue"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((30, 30, 3))
                base[..., c] = 200
                Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)).save(d / f"{i}.png")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_encode_analyze_interpret_train_on_a_tiny_eva02(tmp_path):
    _colour_folders(tmp_path / "data", {"train": 8, "val": 3, "test": 3})
    cfg = timm_clip_cfg("eva02_clip")  # 2 layers × 3 heads, LN over the heads, rotary, SwiGLU, 30 px
    cfg["text_cfg"] = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}  # open_clip's BPE
    save_open_clip_dir(tmp_path / "eva", cfg, seed=7)
    spec = f"open_clip:{tmp_path / 'eva'}"
    stores = {s: tmp_path / f"s-{s}" for s in ("train", "val", "test")}
    for split, out in stores.items():
        assert main(["encode", "--model", spec, "--dataset", f"folder:{tmp_path / 'data'}", "--split", split,
                     "--out", str(out), "--dtype", "float32", "--no-progress"]) == 0
    comp = json.loads((stores["train"] / "composition.json").read_text())
    assert comp["family"] == "open_clip-timm" and (comp["n_layers"], comp["n_heads"]) == (2, 3)

    assert main(["analyze", str(stores["train"]), "--out", str(tmp_path / "an"), "--no-progress"]) == 0
    ids = _rows(tmp_path / "an" / "id.tsv")
    assert [r["unit"] for r in ids] == ["emb", "L0H0", "L0H1", "L0H2", "L0.mlp", "L1H0", "L1H1", "L1H2", "L1.mlp"]

    assert main(["interpret", str(stores["train"]), "-k", "2", "--out", str(tmp_path / "interp"), "--no-progress"]) == 0
    spans = _rows(tmp_path / "interp" / "textspan.tsv")
    heads = {r["unit"] for r in spans}
    assert heads == {"L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"} and len(spans) == 2 * len(heads)

    assert main(["train", "--train", str(stores["train"]), "--val", str(stores["val"]), "--test", str(stores["test"]),
                 "--adapter", "residual", "--out", str(tmp_path / "runs"), "--quiet", "--epochs", "3", "--seeds", "1",
                 "--lr", "0.01"]) == 0
    m = json.loads((tmp_path / "runs" / "data-residual-seed1.json").read_text())
    assert m["adapted_units"] == 6 and m["basis_meta"]["model_spec"] == spec
    # the adapter's components per head are the analysis' 90 %-variance linear IDs of the same train store
    assert m["components"] == m["trainable_parameters"] == sum(int(r["linear_id"]) for r in ids if r["kind"] == "head")
    assert set(m["accuracy"]) == {"val", "test", "zeroshot_val", "zeroshot_test"} and m["epochs"] <= 3
