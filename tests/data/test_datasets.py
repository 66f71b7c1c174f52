"""Dataset specs, splits and image conversion (bundled offline data, folders, torchvision, HF)."""

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resi_dual.data import BadImageError, load_dataset, stratified_limit, stratified_split, three_way_split, to_rgb
from resi_dual.data.bundled import FASHION_MNIST_DIR
from resi_dual.errors import ResiDualError

# -- splits ------------------------------------------------------------------------------------


def test_stratified_split_is_a_seeded_stratified_partition():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    keep, held = stratified_split(labels, 0.2)
    assert len(held) == 20 and len(keep) == 80
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(100))
    assert np.bincount(labels[held]).tolist() == [10, 6, 3, 1]
    k2, h2 = stratified_split(labels, 0.2)
    assert np.array_equal(h2, held) and np.all(np.diff(held) > 0)
    _, h3 = stratified_split(labels, 0.2, seed=7)
    assert not np.array_equal(h3, held)
    # a class with one member and a held-out set smaller than the number of classes both work
    keep, held = stratified_split(np.array([0, 0, 0, 1, 2, 2, 2, 2, 2, 2]), 0.2)
    assert len(held) == 2 and len(keep) == 8


def test_three_way_split_and_stratified_limit():
    labels = np.repeat(np.arange(3), [40, 40, 20])
    parts = three_way_split(labels)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    assert not set(parts["val"]) & set(parts["test"]) and not set(parts["train"]) & set(parts["val"])
    lim = stratified_limit(labels, 10)
    assert np.bincount(labels[lim]).tolist() == [4, 4, 2]
    assert set(lim) <= set(stratified_limit(labels, 50)) and np.all(np.diff(lim) > 0)
    assert lim.tolist()[:4] == [0, 1, 2, 3]  # each class contributes its first rows
    assert len(stratified_limit(labels, None)) == 100


# -- bundled offline data -------------------------------------------------------------------------

BUNDLED = {
    "digits": ([1437, 180, 180], [str(d) for d in range(10)]),
    "animal-mnist": ([8000, 1000, 1000], ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]),
    "fashion-mnist": ([54000, 6000, 10000], ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                             "sneaker", "bag", "ankle boot"]),
    "textiles": ([1600, 200, 200], ["global defect", "local defect", "nominal"]),
}


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_datasets_counts_and_class_names(name):
    if name == "fashion-mnist" and not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian dataset-fashion-mnist not installed")
    counts, classes = BUNDLED[name]
    splits = {s: load_dataset(name, s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == counts
    ids = {s: set(d.sample_id(i) for i in range(len(d))) for s, d in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["val"] & ids["test"] and not ids["train"] & ids["test"]
    for s, d in splits.items():
        assert d.class_names == classes and d.name == name and d.split == s
        # stratified: every class present in every split, in proportion
        share = np.bincount(d.labels, minlength=len(classes)) / len(d)
        full = np.bincount(np.concatenate([x.labels for x in splits.values()]), minlength=len(classes)) / sum(counts)
        assert np.abs(share - full).max() < 0.02
    img, label = splits["val"][3]
    assert img.mode == "RGB" and label == splits["val"].labels[3]


# -- folders ------------------------------------------------------------------------------------


def _save(path: Path, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray((rng.integers(0, 4000, (12, 10))).astype(np.uint16)).save(path)
    elif mode == "Ptrans":
        p = im.convert("P")
        p.info["transparency"] = 0
        p.save(path, transparency=0)
    else:
        im.convert(mode).save(path)


def test_folder_with_split_folders_and_union_of_classes(tmp_path):
    for s, classes in {"train": ["b", "a", "c"], "val": ["a", "b"], "test": ["a", "c"]}.items():
        for c in classes:
            for j in range(3):
                _save(tmp_path / s / c / f"{j}.png", "RGB", j)
    tr, va, te = (load_dataset(f"folder:{tmp_path}", s) for s in ("train", "val", "test"))
    assert tr.class_names == va.class_names == te.class_names == ["a", "b", "c"]
    assert (len(tr), len(va), len(te)) == (9, 6, 6)
    assert te.labels.tolist() == [0, 0, 0, 2, 2, 2] and te.sample_id(3) == "test/c/0.png"
    assert va.describe(0) == str(tmp_path / "val" / "a" / "0.png")


def test_folder_without_splits_modes_and_bad_files(tmp_path):
    modes = ["L", "RGBA", "P", "Ptrans", "CMYK", "I;16", "LA", "RGB"]
    for c in ("cat", "dog"):
        for j, mode in enumerate(modes):
            ext = "jpg" if mode == "CMYK" else ("tif" if mode == "I;16" else "png")
            _save(tmp_path / "d" / c / f"{j}.{ext}", mode, j)
    (tmp_path / "d" / "dog" / "notes.txt").write_text("not an image")
    parts = {s: load_dataset(f"folder:{tmp_path / 'd'}", s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [12, 2, 2]
    assert parts["train"].name == "d" and parts["train"].class_names == ["cat", "dog"]
    for i in range(len(parts["train"])):
        img, _ = parts["train"][i]
        assert img.mode == "RGB" and img.size == (10, 12)
    # 16-bit grayscale is rescaled by its range, not clipped at 255
    tif = to_rgb(Image.open(tmp_path / "d" / "cat" / "5.tif"))
    assert np.asarray(tif).max() == 255 and np.asarray(tif).min() == 0
    # transparent pixels become black
    rgba = Image.new("RGBA", (2, 1), (200, 100, 50, 0))
    assert np.asarray(to_rgb(rgba)).max() == 0
    (tmp_path / "d" / "cat" / "zz.png").write_bytes(b"")
    ds = load_dataset(f"folder:{tmp_path / 'd'}", "train").base
    bad = [i for i in range(len(ds)) if ds.sample_id(i) == "cat/zz.png"][0]
    with pytest.raises(BadImageError, match=str(tmp_path / "d" / "cat" / "zz.png")):
        ds[bad]
    with pytest.raises(ResiDualError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'd' / 'cat'}", "train")
    with pytest.raises(ResiDualError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}", "train")
    with pytest.raises(ResiDualError, match="unknown split"):
        load_dataset(f"folder:{tmp_path / 'd'}", "validation")


# -- torchvision (local files only) -------------------------------------------------------------


def _idx(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_and_eurosat_from_local_files(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    for prefix, n in (("train", 100), ("t10k", 20)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    tr = load_dataset("torchvision:MNIST", "train", root=tmp_path)
    va = load_dataset("torchvision:MNIST", "val", root=tmp_path)
    te = load_dataset("torchvision:MNIST", "test", root=tmp_path)
    assert (len(tr), len(va), len(te)) == (90, 10, 20)  # val: 10 % of train, stratified
    assert tr.class_names[:3] == ["0", "1", "2"] and tr.name == "mnist"
    assert np.bincount(va.labels).tolist() == [1] * 10
    img, label = te[5]
    assert img.mode == "RGB" and img.size == (28, 28) and label == 5 and te.sample_id(5) == "test/5"

    for c in ("Forest", "River"):
        for j in range(10):
            _save(tmp_path / "eurosat" / "2750" / c / f"{c}_{j}.jpg", "RGB", j)
    parts = {s: load_dataset("torchvision:EuroSAT", s, root=tmp_path) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [16, 2, 2]  # 80/10/10
    assert parts["test"].class_names == ["Forest", "River"]
    assert parts["val"].sample_id(0).startswith("eurosat/2750/")
    with pytest.raises(ResiDualError, match="--data-root"):
        load_dataset("torchvision:MNIST", "train")
    with pytest.raises(ResiDualError, match="not found under"):
        load_dataset("torchvision:CIFAR10", "train", root=tmp_path)


# -- Hugging Face datasets ----------------------------------------------------------------------


def test_hf_saved_dataset(tmp_path):
    import datasets

    rng = np.random.default_rng(0)

    def make(n, with_names=True):
        feats = datasets.Features({"img": datasets.Image(),
                                   "label": datasets.ClassLabel(names=["ant", "bee"]) if with_names else datasets.Value("int64")})
        imgs = [Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L") for _ in range(n)]
        return datasets.Dataset.from_dict({"img": imgs, "label": [i % 2 for i in range(n)]}, features=feats)

    datasets.DatasetDict({"train": make(20), "test": make(6)}).save_to_disk(str(tmp_path / "bugs"))
    tr, va, te = (load_dataset(f"hf:{tmp_path / 'bugs'}", s) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (18, 2, 6) and tr.class_names == ["ant", "bee"]
    img, label = te[3]
    assert img.mode == "RGB" and label == 1 and tr.name == "bugs"

    make(10, with_names=False).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(ResiDualError, match="class names"):
        load_dataset(f"hf:{tmp_path / 'plain'}", "train")
    names = tmp_path / "names.txt"
    names.write_text("first\nsecond\n")
    ds = load_dataset(f"hf:{tmp_path / 'plain'}", "test", class_names=str(names))
    assert ds.class_names == ["first", "second"] and len(ds) == 1  # 80/10/10 of 10


def test_torchvision_cifar10_read_without_plain_pickle(tmp_path):
    import pickle  # only to write the fixture in CIFAR's own format

    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    names = [f"c{k}" for k in range(10)]
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}))
    for f, n in [(f"data_batch_{i}", 20) for i in range(1, 6)] + [("test_batch", 10)]:
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        (base / f).write_bytes(pickle.dumps(batch))
    tr, va, te = (load_dataset("torchvision:CIFAR10", s, root=tmp_path) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (90, 10, 10) and tr.class_names == names and tr.name == "cifar10"
    img, label = te[3]
    raw = pickle.loads((base / "test_batch").read_bytes())[b"data"][3].reshape(3, 32, 32).transpose(1, 2, 0)
    assert img.mode == "RGB" and label == 3 and np.array_equal(np.asarray(img), raw)
    # a batch file that would run code is refused
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (base / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ResiDualError, match="not a CIFAR batch file"):
        load_dataset("torchvision:CIFAR10", "test", root=tmp_path)
