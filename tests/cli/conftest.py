"""Fault-corpus fixtures: a tiny ViT checkpoint, an image folder with train/val/test, its stores and
an adapter, plus the two ways of running a command (in-process, and as a subprocess for faults)."""

import warnings

import pytest

from fault_helpers import make_folder, save_vit


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny world on disk: ViT checkpoint, image folder, float32 stores of each split, an adapter."""
    from resi_dual import load_model
    from resi_dual.cli import main
    from resi_dual.data import load_dataset
    from resi_dual.store.writer import EncodeConfig, encode_store

    root = tmp_path_factory.mktemp("world")
    make_folder(root / "data", {"train": 8, "val": 4, "test": 4})
    spec = save_vit(root / "vit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(spec)
    out = {"root": root, "spec": spec, "model": model, "data": root / "data"}
    cfg = EncodeConfig(progress=False, dtype="float32", chunk_rows=8, batch_size=4)
    for split in ("train", "val", "test"):
        out[split] = root / f"s-{split}"
        encode_store(model, load_dataset(f"folder:{root / 'data'}", split), out[split], cfg)
    runs = root / "runs"
    argv = ["train", "--train", str(out["train"]), "--val", str(out["val"]), "--test", str(out["test"]),
            "--adapter", "linear", "--out", str(runs), "--quiet", "--epochs", "3", "--seeds", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    out["adapter"] = runs / "data-linear-seed1.safetensors"
    assert out["adapter"].exists()
    return out


@pytest.fixture(scope="session")
def text_store(world, tmp_path_factory):
    """The world's test images encoded with the bundled demo model (it has a text tower, for interpret)."""
    from resi_dual import load_model
    from resi_dual.data import load_dataset
    from resi_dual.store.writer import EncodeConfig, encode_store

    out = tmp_path_factory.mktemp("text") / "s"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encode_store(load_model("demo"), load_dataset(f"folder:{world['data']}", "test"), out,
                     EncodeConfig(progress=False, dtype="float32"))
    dictionary = out.parent / "dictionary.txt"
    dictionary.write_text("a red thing\na green thing\na blue thing\nnoise\na photo\n")
    return out
