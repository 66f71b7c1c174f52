"""`--device` on the commands that run a model (trace, encode, train, apply, experiment).

No GPU here: ``cpu`` runs end to end on a tiny random ViT (and gives the same bytes as no option);
``cuda`` / ``mps`` give a one-line error naming the device and exit status 2; malformed strings are
refused before anything is loaded; a non-CPU device reaches ``load_model`` from the experiment grid.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resi_dual.cli import build_parser, main
from resi_dual.errors import ResiDualError
from resi_dual.models.loading import check_device_string, load_model, resolve_device

pytestmark = pytest.mark.integration  # the CLI / real stores end to end


GRID = """
[grid]
seeds = [0]
batch-size = 16
{device}
[[models]]
name = "vit"
spec = "{spec}"

[[datasets]]
name = "data"
spec = "folder:{data}"

[reference]
name = "data"
spec = "folder:{data}"

[intrinsic-dim]
twonn-max-samples = 30
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random ViT checkpoint, a 3-class image folder with train/val/test, and a grid file."""
    import transformers as tf

    root = tmp_path_factory.mktemp("device")
    rng = np.random.default_rng(0)
    for split, n in {"train": 10, "val": 4, "test": 4}.items():
        for c, name in enumerate(["red", "green", "blue"]):
            d = root / "data" / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = np.zeros((16, 16, 3))
                img[..., c] = 200
                Image.fromarray(np.clip(img + rng.normal(0, 50, img.shape), 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    torch.manual_seed(0)
    tf.ViTModel(tf.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=16, patch_size=8)).save_pretrained(root / "vit")
    spec = f"hf:{root / 'vit'}"
    (root / "grid.toml").write_text(GRID.format(spec=spec, data=root / "data", device=""))
    (root / "grid_cuda.toml").write_text(GRID.format(spec=spec, data=root / "data", device='device = "cuda"'))
    return {"root": root, "spec": spec, "data": f"folder:{root / 'data'}"}


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA or MPS, whatever torch build is installed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _quiet():
    warnings.simplefilter("ignore")


def test_device_strings():
    assert [check_device_string(s) for s in ("cpu", "cuda", "cuda:1", " mps ")] == ["cpu", "cuda", "cuda:1", "mps"]
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "", "cuda:0,1", 3):
        with pytest.raises(ResiDualError, match="is not a device; use cpu, cuda, cuda:N or mps"):
            check_device_string(bad)


def test_option_parses_on_every_model_command():
    parser = build_parser()
    argvs = {
        "trace": ["trace", "--model", "demo"],
        "encode": ["encode", "--model", "demo", "--dataset", "digits", "--out", "x"],
        "train": ["train", "--train", "a", "--val", "b", "--test", "c", "--adapter", "finetune"],
        "apply": ["apply", "--model", "demo", "--adapter", "a.safetensors", "im.png"],
        "experiment": ["experiment", "adaptation", "--config", "g.toml", "--out", "o"],
    }
    for name, argv in argvs.items():
        default = None if name == "experiment" else "cpu"  # experiment: the grid's device unless given
        assert parser.parse_args(argv).device == default, name
        assert parser.parse_args(argv + ["--device", "cuda:1"]).device == "cuda:1", name


def test_unavailable_devices_are_one_line_errors(no_gpu, monkeypatch):
    with pytest.raises(ResiDualError, match=r"^--device: cuda is not available on this machine \(torch .* sees no CUDA GPU\)$"):
        resolve_device("cuda")
    with pytest.raises(ResiDualError, match="mps is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ResiDualError, match=r"cuda:2 is not available on this machine \(it has 2 CUDA device\(s\)\)"):
        resolve_device("cuda:2")


def test_cpu_end_to_end_and_identical_to_the_default(tiny, tmp_path, capsys):
    _quiet()
    root, spec, data = tiny["root"], tiny["spec"], tiny["data"]
    model = load_model(spec, device="cpu")
    assert model.device == torch.device("cpu")
    px = model.preprocess([Image.new("RGB", (16, 16), (200, 10, 10))] * 3)
    enc = model.trace(px)
    assert enc.output.device.type == "cpu" and enc.heads.device.type == "cpu"
    assert float(enc.relative_error().max()) < 1e-5
    assert torch.equal(model.embed(px), enc.output)

    assert main(["trace", "--model", spec, "--batch", "2", "--device", "cpu"]) == 0
    assert "device=cpu" in capsys.readouterr().out
    stores = {}
    for split in ("train", "val", "test"):
        stores[split] = tmp_path / f"s-{split}"
        assert main(["encode", "--model", spec, "--dataset", data, "--split", split, "--out", str(stores[split]),
                     "--dtype", "float32", "--no-progress", "--device", "cpu"]) == 0
    assert main(["encode", "--model", spec, "--dataset", data, "--split", "train", "--out", str(tmp_path / "plain"),
                 "--dtype", "float32", "--no-progress"]) == 0
    manifest = json.loads((stores["train"] / "manifest.json").read_text())
    assert manifest["run"]["device"] == "cpu" and manifest["n_samples"] == 30
    chunks = sorted((stores["train"] / "chunks").iterdir())
    assert chunks and all(c.read_bytes() == (tmp_path / "plain" / "chunks" / c.name).read_bytes() for c in chunks)

    out = tmp_path / "adapters"
    base = ["train", "--train", str(stores["train"]), "--val", str(stores["val"]), "--test", str(stores["test"]),
            "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(base + ["--adapter", "coarse", "--epochs", "2"]) == 0
    assert main(base + ["--adapter", "finetune", "--epochs", "1", "--lr", "1e-3"]) == 0
    from resi_dual.adapters.metrics import RunMetrics

    ft = RunMetrics.from_dict(json.loads((out / "data-finetune-seed1.json").read_text()))
    assert ft.epochs == 1 and ft.n == {"train": 30, "val": 12, "test": 12}
    assert ft.test_accuracy == 1.0  # colour-separable classes: the prototype classifier is already perfect
    capsys.readouterr()
    image = root / "data" / "test" / "red" / "0.png"
    assert main(["apply", "--model", spec, "--adapter", str(out / "data-coarse-seed1.safetensors"), str(image),
                 "--json", "--device", "cpu"]) == 0
    pred = json.loads(capsys.readouterr().out.strip())
    assert pred["image"] == str(image) and pred["classes"][0] in ("red", "green", "blue")

    assert main(["experiment", "intrinsic-dim", "--config", str(root / "grid.toml"), "--out", str(tmp_path / "grid"),
                 "--quiet", "--device", "cpu"]) == 0
    run = json.loads((tmp_path / "grid" / "intrinsic-dim" / "run.json").read_text())
    assert run["device"] == "cpu" and run["computed"] == 3


@pytest.mark.parametrize("command", ["trace", "encode", "train", "apply", "experiment", "experiment-config"])
def test_unavailable_cuda_exits_non_zero_with_one_line(command, tiny, tmp_path, no_gpu, capsys):
    _quiet()
    root, spec, data = tiny["root"], tiny["spec"], tiny["data"]
    argv = {
        "trace": ["trace", "--model", spec, "--device", "cuda"],
        "encode": ["encode", "--model", spec, "--dataset", data, "--out", str(tmp_path / "s"), "--device", "cuda"],
        "train": ["train", "--train", "a", "--val", "b", "--test", "c", "--adapter", "finetune", "--device", "cuda"],
        "apply": ["apply", "--model", spec, "--adapter", "a.safetensors", "im.png", "--device", "cuda"],
        "experiment": ["experiment", "intrinsic-dim", "--config", str(root / "grid.toml"), "--out", str(tmp_path / "g"),
                       "--device", "cuda", "--quiet"],
        "experiment-config": ["experiment", "intrinsic-dim", "--config", str(root / "grid_cuda.toml"),
                              "--out", str(tmp_path / "g"), "--quiet"],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "cuda is not available on this machine" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "g" / "cells").exists()  # nothing was started
    if command == "experiment-config":
        assert "grid.device" in err


def test_experiment_carries_the_device_to_the_model(tiny, tmp_path, monkeypatch):
    """With a (pretended) GPU, the grid's models are loaded with the requested device; the cache keys
    do not depend on it, so the same cells are found again on the CPU."""
    import resi_dual.models.loading as loading
    from resi_dual.experiments.config import load_config
    from resi_dual.report.experiments import run_experiment

    _quiet()
    seen = []
    real = loading.resolve_device

    def fake(device="cpu", where="--device"):
        seen.append(str(device))
        return real("cpu", where)  # validated like the real one, then run on the CPU

    monkeypatch.setattr(loading, "resolve_device", fake)
    config = load_config(tiny["root"] / "grid_cuda.toml")
    assert config.device == "cuda"
    first = run_experiment("intrinsic-dim", config, tmp_path, progress=False)
    assert first["device"] == "cuda" and first["computed"] == 3
    assert seen.count("cuda") >= 2  # checked up front, then by load_model
    again = run_experiment("intrinsic-dim", config, tmp_path, progress=False, device="cpu")
    assert again["device"] == "cpu" and again["computed"] == 0 and again["cached"] == 3
