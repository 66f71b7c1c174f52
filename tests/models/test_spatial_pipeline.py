"""`locate` and `explore` on a tiny random SigLIP (attention-pooled) and a tiny EVA-02 (timm, rotary, a
LayerNorm over the heads), both saved and reloaded through the real loaders."""

from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from resi_dual.cli import main

pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def _siglip(root) -> str:
    from test_pooled import _bert_tokenizer, tiny_siglip_with_text
    from transformers import SiglipImageProcessor

    tiny_siglip_with_text(4).save_pretrained(root / "siglip")
    _bert_tokenizer().save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 30, "width": 30}).save_pretrained(root / "siglip")
    return f"hf:{root / 'siglip'}"


def _eva02(root) -> str:
    from tracing_models import save_open_clip_dir, timm_clip_cfg

    cfg = timm_clip_cfg("eva02_clip")  # 2 layers × 3 heads, rotary, SwiGLU, LN over the heads, 30 px
    cfg["text_cfg"] = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}  # open_clip's BPE
    save_open_clip_dir(root / "eva", cfg, seed=11)
    return f"open_clip:{root / 'eva'}"


@pytest.fixture(scope="module", params=["siglip", "eva02"])
def tower(request, tmp_path_factory):
    """(model spec, family, folder dataset of coloured squares at a known place)."""
    root = tmp_path_factory.mktemp(f"spatial_{request.param}")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / "data" / name).mkdir(parents=True)
        for i in range(6):
            img = np.zeros((30, 30, 3), np.uint8)
            y, x = rng.integers(0, 18, 2)
            img[y:y + 12, x:x + 12, c] = 220
            Image.fromarray(img).save(root / "data" / name / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = _siglip(root) if request.param == "siglip" else _eva02(root)
    family = {"siglip": "hf-siglip", "eva02": "open_clip-timm"}[request.param]
    return root, spec, family


def test_locate_writes_overlays(tower, capsys):
    root, spec, family = tower
    images = sorted(str(p) for p in (root / "data" / "red").glob("*.png"))[:3]
    out = root / "loc"
    assert main(["locate", "--model", spec, "--text", "a red square", *images, "--out", str(out), "--side", "60"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0000_0.png", "0001_1.png", "0002_2.png"]
    assert Image.open(out / "0000_0.png").size == (60, 60)
    with open(out / "locate.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    shares = [float(r["positive_left"]) + float(r["positive_right"]) for r in rows]
    assert len(rows) == 3 and all(abs(s - 1) < 1e-3 or s == 0 for s in shares)  # 0: a map with no positive mass
    # the score column is the model's own embedding along the unit text embedding
    from resi_dual import load_model
    from resi_dual.models.text import get_text_tower

    model = load_model(spec)
    assert model.family == family
    emb = get_text_tower(model).encode(["a red square"])[0]
    want = float(model.embed(model.preprocess([Image.open(images[0])]))[0] @ (emb / emb.norm()))
    assert float(rows[0]["score"]) == pytest.approx(want, rel=1e-4, abs=1e-6)
    # one head only
    assert main(["locate", "--model", spec, "--text", "red", images[0], "--out", str(out), "--units", "L1H2"]) == 0


def test_explore_builds_the_site_with_head_overlays(tower):
    root, spec, family = tower
    store = root / "store"
    if not store.exists():
        assert main(["encode", "--model", spec, "--dataset", f"folder:{root / 'data'}", "--split", "train",
                     "--out", str(store), "--dtype", "float32", "--no-progress"]) == 0
    site = root / "site"
    assert main(["explore", str(store), "--out", str(site), "--units", "L0H1,L1H2,L1.mlp", "--pcs", "2",
                 "--images", "3", "--no-progress"]) == 0
    build = json.loads((site / "build.json").read_text())
    assert build["traced_images"] >= 3
    html = (site / "u" / "L1H2-pc1.html").read_text()
    overlays = re.findall(r'src="\.\./(img/L1H2-pc1-r[0-9]+\.jpg)"', html)
    assert len(set(overlays)) >= 3 and all((site / p).is_file() for p in overlays)
    # the page says what the map is over: the head's own attention (CLS) or the probe's tokens (pooled)
    assert ("attention probe reads this head" in html) == (family == "hf-siglip")
    assert (site / "index.html").is_file() and (site / "u" / "L1.mlp-pc2.html").is_file()
