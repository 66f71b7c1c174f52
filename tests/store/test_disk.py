"""The on-disk store: file format, exact round trip, resume, refusals, bad images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resi_dual import open_store
from resi_dual.data import load_dataset
from resi_dual.errors import ResiDualError
from resi_dual.store import MemorySource
from resi_dual.store.disk import MANIFEST, ShardReader, safetensors_bytes
from resi_dual.store.writer import EncodeConfig, encode_store


def test_safetensors_bytes_fixed_and_readable(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    tensors = {"b": rng.standard_normal((3, 4)).astype(np.float16), "a": np.arange(5, dtype=np.int64),
               "empty": np.zeros((0, 7), np.float32)}
    data = safetensors_bytes(tensors, {"z": "1", "ids": json.dumps(["x/1.png", "é"])})
    assert data == safetensors_bytes(dict(reversed(tensors.items())), {"ids": json.dumps(["x/1.png", "é"]), "z": "1"})
    assert int.from_bytes(data[:8], "little") % 8 == 0
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)
    ref = load_file(str(path))  # the reference reader agrees
    r = ShardReader(path)
    for k, v in tensors.items():
        np.testing.assert_array_equal(ref[k], v)
        np.testing.assert_array_equal(r.array(k), v)
        assert r.array(k).dtype == v.dtype
    assert json.loads(r.metadata["ids"]) == ["x/1.png", "é"]


def _pixels(model, ds, rows):
    return model.preprocess([ds[int(i)][0] for i in rows])


def test_round_trip_float32_exact(tmp_path, tiny_model):
    ds = load_dataset("digits", "val")
    cfg = EncodeConfig(limit=40, batch_size=8, chunk_rows=16, dtype="float32", progress=False)
    manifest = encode_store(tiny_model, ds, tmp_path / "s", cfg)
    assert manifest.n_samples == 40 and len(manifest.chunks) == 3
    assert [c.rows for c in manifest.chunks] == [16, 16, 8]
    assert manifest.max_trace_error < 1e-5 and manifest.max_storage_error < 1e-5
    store = open_store(tmp_path / "s", model=tiny_model, split="val", dataset="digits", verify=True)
    assert len(store) == 40 and store.class_names == ds.class_names
    # the stratified limit: 4 per class, kept in dataset order
    assert np.bincount(store.labels).tolist() == [4] * 10
    order = [int(s.split("/")[1]) for s in store.sample_ids]  # val ids index the undivided array
    assert order == sorted(order) and len(set(order)) == 40

    # traced contributions of the same images == contributions computed from the store
    rows = np.array([0, 5, 17, 33, 39])
    idx = [ds.sample_id(i) for i in range(len(ds))]
    ds_rows = [idx.index(store.sample_ids[r]) for r in rows]
    enc = tiny_model.trace(_pixels(tiny_model, ds, ds_rows))
    got = store.contributions(rows=rows)
    torch.testing.assert_close(got, enc.contributions(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(store.labels[rows], ds.labels[ds_rows])
    torch.testing.assert_close(store.output(rows), enc.output, rtol=1e-5, atol=1e-6)  # other batch mates: low bits differ
    mem = MemorySource(enc, ds.labels[ds_rows])
    for unit in ("emb", "L1H1", "L0.mlp"):
        torch.testing.assert_close(store.features(unit, rows), mem.features(unit), rtol=1e-6, atol=1e-7)
    sub = store.contributions(units=["L1H0", "emb"], rows=rows)
    torch.testing.assert_close(sub, got[:, [store.composition.index("L1H0"), 0]])
    # blocks and unordered index reads agree with one full read
    full = store.contributions()
    blocks = torch.cat([store.readout.apply(store.composition, b.dense, b.heads, b.mu, b.sigma)
                        for b in store.iter_blocks(block_rows=7)])
    torch.testing.assert_close(blocks, full, rtol=0, atol=0)
    perm = np.array([39, 0, 16, 15, 31, 32, 1])
    torch.testing.assert_close(store.contributions(rows=perm), full[perm], rtol=0, atol=0)
    torch.testing.assert_close(full.sum(1), store.output(), rtol=1e-4, atol=1e-5)
    assert [u.label for u, _ in store.iter_units("heads")] == ["L0H0", "L0H1", "L1H0", "L1H1"]


def test_float16_store_is_close_and_small(tmp_path, tiny_model):
    ds = load_dataset("digits", "test")
    f16 = encode_store(tiny_model, ds, tmp_path / "h", EncodeConfig(limit=32, chunk_rows=32, progress=False))
    f32 = encode_store(tiny_model, ds, tmp_path / "f", EncodeConfig(limit=32, chunk_rows=32, dtype="float32", progress=False))
    a, b = open_store(tmp_path / "h"), open_store(tmp_path / "f")
    assert f16.plan.dtype == "float16" and 1e-6 < f16.max_storage_error < 5e-3
    rel = (a.contributions() - b.contributions()).norm() / b.contributions().norm()
    assert 1e-6 < float(rel) < 2e-3
    size = lambda p: (p / "chunks" / "000000.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "h") < 0.8 * size(tmp_path / "f")


def test_resume_after_lost_chunk_is_byte_identical(tmp_path, tiny_model, store_bytes, stable_manifest):
    ds = load_dataset("animal-mnist", "test")
    cfg = EncodeConfig(limit=30, batch_size=4, chunk_rows=8, progress=False)
    encode_store(tiny_model, ds, tmp_path / "ref", cfg)
    encode_store(tiny_model, ds, tmp_path / "s", cfg)
    ref = store_bytes(tmp_path / "ref")
    assert store_bytes(tmp_path / "s") == ref and stable_manifest(tmp_path / "s") == stable_manifest(tmp_path / "ref")
    # a crash after chunk 0 and during chunk 2: chunk 1..3 missing, half-written temporaries, no manifest
    s = tmp_path / "s"
    for k in (1, 2, 3):
        (s / "chunks" / f"{k:06d}.safetensors").unlink()
    (s / MANIFEST).unlink()
    (s / "chunks" / ".000002.safetensors.tmp-999").write_bytes(b"half a chunk")
    (s / ".manifest.json.tmp-998").write_bytes(b"{")
    with pytest.raises(ResiDualError, match="incomplete"):
        open_store(s)
    m = encode_store(tiny_model, ds, s, cfg)
    assert m.run["resumed"] and m.timing["images_traced_this_run"] == 22
    assert store_bytes(s) == ref and stable_manifest(s) == stable_manifest(tmp_path / "ref")
    # DataLoader worker processes change nothing either
    encode_store(tiny_model, ds, tmp_path / "w", EncodeConfig(limit=30, batch_size=4, chunk_rows=8, workers=2, progress=False))
    assert store_bytes(tmp_path / "w") == ref
    # complete: a rerun changes nothing
    before = (s / MANIFEST).read_bytes()
    encode_store(tiny_model, ds, s, cfg)
    assert (s / MANIFEST).read_bytes() == before


def test_refusals_leave_everything_untouched(tmp_path, tiny_model, save_tiny_clip, store_bytes):
    ds = load_dataset("digits", "val")
    cfg = EncodeConfig(limit=12, batch_size=4, chunk_rows=8, progress=False)
    encode_store(tiny_model, ds, tmp_path / "s", cfg)
    before = store_bytes(tmp_path / "s")
    mf = (tmp_path / "s" / MANIFEST).read_bytes()
    with pytest.raises(ResiDualError, match="different job.*limit"):
        encode_store(tiny_model, ds, tmp_path / "s", EncodeConfig(limit=13, batch_size=4, chunk_rows=8, progress=False))
    with pytest.raises(ResiDualError, match="different job.*split"):
        encode_store(tiny_model, load_dataset("digits", "test"), tmp_path / "s", cfg)
    assert store_bytes(tmp_path / "s") == before and (tmp_path / "s" / MANIFEST).read_bytes() == mf
    # a directory holding something else
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ResiDualError, match="not empty and is not a resi-dual store"):
        encode_store(tiny_model, ds, other, cfg)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    # opening with the wrong split, model or dataset
    with pytest.raises(ResiDualError, match="holds the 'val' split, not 'train'"):
        open_store(tmp_path / "s", split="train")
    with pytest.raises(ResiDualError, match="encoded with model"):
        open_store(tmp_path / "s", model="hf:somewhere/else")
    from resi_dual import load_model

    other_model = load_model(save_tiny_clip(tmp_path / "m2", seed=1))
    with pytest.raises(ResiDualError, match="weights"):
        open_store(tmp_path / "s", model=other_model)
    with pytest.raises(ResiDualError, match="not a resi-dual store"):
        open_store(other)
    # a corrupted chunk is caught by verify
    chunk = tmp_path / "s" / "chunks" / "000000.safetensors"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(ResiDualError, match="checksum"):
        open_store(tmp_path / "s", verify=True)


def _image_folder(root: Path) -> dict[str, Path]:
    """Three classes of small PNG/JPEG images in mixed modes, plus three unreadable files."""
    rng = np.random.default_rng(0)
    modes = ["L", "RGBA", "P", "CMYK", "RGB", "I;16"]
    for c, cname in enumerate(["cat", "dog", "fox"]):
        (root / cname).mkdir(parents=True)
        for j in range(6):
            a = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            im = Image.fromarray(a, "RGB")
            mode = modes[(c + j) % len(modes)]
            im = im.convert("L").convert("I;16") if mode == "I;16" else im.convert(mode)
            ext = "jpg" if mode in ("CMYK",) else "png"
            im.save(root / cname / f"{j:02d}.{ext}")
    bad = {"zero": root / "dog" / "03b.png", "truncated": root / "cat" / "02b.jpg", "garbage": root / "fox" / "00b.png"}
    bad["zero"].write_bytes(b"")
    buf = root / "tmp.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, quality=95)
    bad["truncated"].write_bytes(buf.read_bytes()[:600])
    buf.unlink()
    bad["garbage"].write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return bad


def test_bad_images_fail_with_path_or_are_skipped(tmp_path, tiny_model, store_bytes):
    bad = _image_folder(tmp_path / "imgs")
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", "train")
    assert ds.class_names == ["cat", "dog", "fox"] and len(ds) == 17  # 80 % of 21, stratified
    full = ds.base  # the undivided folder
    assert len(full) == 21
    cfg = EncodeConfig(batch_size=4, chunk_rows=4, progress=False)
    with pytest.raises(ResiDualError) as err:
        encode_store(tiny_model, full, tmp_path / "s", cfg)
    first_bad = min(bad.values(), key=lambda p: [str(q) for q in full.paths].index(str(p)))
    assert str(first_bad) in str(err.value) and "--skip-bad" in str(err.value)
    assert not (tmp_path / "s" / MANIFEST).exists()
    written = sorted(p.name for p in (tmp_path / "s" / "chunks").iterdir())
    first_bad_chunk = [str(q) for q in full.paths].index(str(first_bad)) // 4
    assert written == [f"{k:06d}.safetensors" for k in range(first_bad_chunk)]
    # resume the failed run with skip_bad == a fresh skip_bad run
    m = encode_store(tiny_model, full, tmp_path / "s", EncodeConfig(batch_size=4, chunk_rows=4, skip_bad=True, progress=False))
    fresh = encode_store(tiny_model, full, tmp_path / "t", EncodeConfig(batch_size=4, chunk_rows=4, skip_bad=True, progress=False))
    assert store_bytes(tmp_path / "s") == store_bytes(tmp_path / "t") and m.skipped == fresh.skipped
    assert sorted(s["where"] for s in m.skipped) == sorted(str(p) for p in bad.values())
    assert m.n_samples == 18 and m.plan.n_planned == 21
    store = open_store(tmp_path / "s")
    assert len(store) == 18 and not set(store.sample_ids) & {s["sample_id"] for s in m.skipped}
    assert store.sample_ids[0] == "cat/00.png"


def test_cli_encode_errors_are_one_line_and_change_nothing(tmp_path, tiny_spec, capsys):
    from resi_dual.cli import main

    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.bin").write_bytes(b"\x00")
    args = ["encode", "--model", tiny_spec, "--dataset", "digits", "--split", "val", "--limit", "8", "--no-progress"]
    assert main([*args, "--out", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "not a resi-dual store" in err[-1] and "Traceback" not in "".join(err)
    assert [p.name for p in other.iterdir()] == ["keep.bin"]
    assert main([*args, "--out", str(tmp_path / "s"), "--chunk-rows", "4"]) == 0
    out = capsys.readouterr().out
    assert "8 samples of digits/val (0 skipped), 2 chunks, float16" in out
    assert main(["encode", "--model", tiny_spec, "--dataset", "folder:/nonexistent", "--out", str(tmp_path / "t")]) == 2
    assert "does not exist" in capsys.readouterr().err
