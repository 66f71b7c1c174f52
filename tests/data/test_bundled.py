"""Bundled offline datasets: shapes, label sets, safe unpickling, and errors naming the package."""

import gzip
import pickle

import numpy as np
import pytest

from resi_dual.data import bundled
from resi_dual.data.bundled import load_numpy_pickle, load_raw
from resi_dual.errors import ResiDualError


def test_fashion_mnist_splits_and_classes():
    d = load_raw("fashion-mnist")
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10
    assert d["class_names"][0] == "t-shirt" and d["class_names"][9] == "ankle boot"
    # white on black: corners are background
    assert xtr[:, 0, 0].mean() < 1.0 and xtr.mean() > 50


def test_digits_rescaled_to_bytes():
    d = load_raw("digits")
    x, y = d["train"]
    assert d["test"] is None
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8 and x.max() == 255
    assert len(d["class_names"]) == 10 and set(np.unique(y)) == set(range(10))


def test_animal_mnist_alphabetical_and_cached():
    d = load_raw("animal_mnist")
    x, y = d["train"]
    assert x.shape == (10000, 28, 28) and d["test"] is None
    assert np.bincount(y).tolist() == [1000] * 10
    assert d["class_names"] == sorted(d["class_names"])
    assert d["class_names"][0] == "bear" and d["class_names"][-1] == "zebra"
    # giraffes (6) are taller than wide, cows (3) wider than tall: a check of the label order
    def aspect(c):
        m = x[y == c].astype(np.float64).mean(0) > 60
        rows, cols = np.where(m)
        return (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)
    assert aspect(6) > 1.2 > 0.9 > aspect(3)
    assert load_raw("animal-mnist") is d  # lru cache


def test_textiles_rgb_three_classes():
    d = load_raw("textiles")
    x, y = d["train"]
    assert x.shape == (2000, 250, 250, 3) and x.dtype == np.uint8
    assert d["class_names"] == ["global defect", "local defect", "nominal"]
    assert np.bincount(y).tolist() == [500, 500, 1000]


def test_restricted_unpickler_loads_arrays_and_refuses_code():
    arr = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert np.array_equal(load_numpy_pickle(pickle.dumps(arr, protocol=4)), arr)

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(pickle.dumps(Evil()))


def test_unknown_name_and_missing_packages(monkeypatch, tmp_path):
    with pytest.raises(ResiDualError, match="unknown bundled dataset"):
        load_raw("cifar-1000")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "animal_mnist" else real(name, *a))
    bundled._load_animal_mnist.cache_clear()
    with pytest.raises(ResiDualError, match=r"pip install --no-deps animal-mnist"):
        load_raw("animal-mnist")
    bundled._load_animal_mnist.cache_clear()

    monkeypatch.setenv(bundled.FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    bundled._load_fashion_mnist.cache_clear()
    with pytest.raises(ResiDualError, match="apt-get install dataset-fashion-mnist"):
        load_raw("fashion-mnist")
    bundled._load_fashion_mnist.cache_clear()


def test_idx_reader_round_trip(tmp_path, monkeypatch):
    import struct

    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labs = np.array([0, 1, 2, 3, 9], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBB3I", 0, 8, 3, 5, 28, 28) + imgs.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 8, 1, 5) + labs.tobytes())
    monkeypatch.setenv(bundled.FASHION_MNIST_ENV, str(tmp_path))
    bundled._load_fashion_mnist.cache_clear()
    try:
        d = load_raw("fashion-mnist")
        assert np.array_equal(d["test"][0], imgs) and d["train"][1].tolist() == [0, 1, 2, 3, 9]
    finally:
        bundled._load_fashion_mnist.cache_clear()
