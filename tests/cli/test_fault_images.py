"""Fault corpus, images: one decoding path for every command, and unreadable images under --workers."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fault_helpers import CLASSES, assert_one_line_error, run_cli, run_sub, snapshot


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def _odd_images(folder):
    """An RGBA, a palette-with-transparency and a 16-bit grayscale PNG in each class folder."""
    rng = np.random.default_rng(7)
    paths = []
    for c, name in enumerate(CLASSES):
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
        rgba[..., c] = 220
        rgba[..., 3] = np.where(rng.random((16, 16)) < 0.5, 0, 255)
        Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
        pal = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.ADAPTIVE, colors=16)
        pal.info["transparency"] = 0
        pal.save(d / "palette.png", transparency=0)
        deep = (rng.integers(0, 4096, (16, 16)) * (c + 1)).astype(np.uint16)
        Image.fromarray(deep).save(d / "deep.png")
        paths += [d / "rgba.png", d / "palette.png", d / "deep.png"]
    return paths


def test_apply_decodes_like_encode(world, tmp_path, capsys):
    """RGBA, palette+transparency and 16-bit images: apply's probabilities equal the adapter on encode's store."""
    from resi_dual.adapters.adapter import Adapter
    from resi_dual.data import load_dataset
    from resi_dual.store import open_store
    from resi_dual.store.writer import EncodeConfig, encode_store

    odd = tmp_path / "odd"
    for split in ("train", "test"):
        _odd_images(odd / split)
    modes = {p.name: Image.open(p).mode for p in (odd / "test" / "red").iterdir()}
    assert modes == {"rgba.png": "RGBA", "palette.png": "P", "deep.png": "I;16"}
    encode_store(world["model"], load_dataset(f"folder:{odd}", "test"), tmp_path / "s", EncodeConfig(progress=False, dtype="float32"))
    store = open_store(tmp_path / "s")
    adapter = Adapter.load(world["adapter"])
    probs = torch.softmax(adapter.predict_logits(adapter.encode(store)), dim=1)
    paths = [str(odd / sid) for sid in store.sample_ids]
    rc, out, err = run_cli(["apply", "--model", world["spec"], "--adapter", world["adapter"], "--top", "3", "--json", *paths], capsys)
    assert rc == 0, err
    import json

    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["image"] for r in rows] == paths
    for row, p in zip(rows, probs):
        got = dict(zip(row["classes"], row["probabilities"]))
        want = {adapter.class_names[i]: float(q) for i, q in enumerate(p)}
        assert got == pytest.approx(want, abs=2e-5)
    # PIL's plain convert("RGB") (what apply used) gives other pixels on these images
    from resi_dual.data import to_rgb

    rgba = Image.open(odd / "test" / "red" / "rgba.png")
    assert not np.array_equal(np.asarray(rgba.convert("RGB")), np.asarray(to_rgb(rgba)))


def test_preprocess_uses_the_same_conversion(world, tmp_path):
    from resi_dual.data import to_rgb

    deep = Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 200))
    a = world["model"].preprocess([deep])
    b = world["model"].preprocess([to_rgb(deep)])
    assert torch.equal(a, b)


def test_bad_image_error_survives_pickling():
    from resi_dual.data import BadImageError

    e = pickle.loads(pickle.dumps(BadImageError("/x/y.png", "truncated")))
    assert isinstance(e, BadImageError) and (e.where, e.reason) == ("/x/y.png", "truncated")
    assert str(e) == "cannot read image /x/y.png: truncated"


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    from fault_helpers import make_folder

    root = make_folder(tmp_path_factory.mktemp("bad") / "data", {"train": 4, "test": 2})
    (root / "train" / "red" / "broken.png").write_bytes(b"not an image at all")
    (root / "train" / "green" / "empty.png").write_bytes(b"")
    return root


def test_workers_with_a_bad_image(world, bad_folder, tmp_path):
    base = ["encode", "--model", world["spec"], "--dataset", f"folder:{bad_folder}", "--split", "train",
            "--workers", "2", "--chunk-rows", "4", "--batch-size", "2", "--no-progress"]
    r = run_sub([*base, "--out", tmp_path / "a"])
    line = assert_one_line_error(r.returncode, r.stderr, "cannot read image", "--skip-bad")
    assert "broken.png" in line or "empty.png" in line
    r = run_sub([*base, "--out", tmp_path / "a", "--skip-bad"])  # resumes the failed store
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert sorted(s["sample_id"].split("/")[-1] for s in m["skipped"]) == ["broken.png", "empty.png"]
    assert m["n_samples"] + 2 == m["n_planned"]


def test_negative_workers(world, bad_folder, tmp_path, capsys):
    rc, _, err = run_cli(["encode", "--model", world["spec"], "--dataset", f"folder:{bad_folder}", "--workers", "-1",
                          "--out", tmp_path / "w", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "--workers")
    assert not (tmp_path / "w").exists()


def test_apply_refuses_a_decompression_bomb(world, tmp_path, capsys, monkeypatch):
    big = tmp_path / "bomb.png"
    Image.new("L", (60, 60)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3600 px > twice the limit: a bomb, as 180 Mpx is by default
    rc, _, err = run_cli(["apply", "--model", world["spec"], "--adapter", world["adapter"], big], capsys)
    assert_one_line_error(rc, err, "cannot read image", "bomb.png")
