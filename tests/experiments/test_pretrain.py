"""Demo pretraining on the world (resi_dual.experiments.pretrain): its pieces, and a tiny end-to-end run."""

import json
import math

import numpy as np
import pytest
import torch

from resi_dual.experiments import pretrain as pt


def test_caption_match_keeps_images_agreeing_with_everything_named():
    attrs = torch.tensor([[0, 1, 2], [0, 2, 2], [1, 1, 0]])  # (b, A)
    named = torch.tensor([[True, False, False],  # caption 0 names only attribute 0 = 0
                          [False, True, True],  # caption 1: attr 1 = 2 and attr 2 = 2
                          [False, False, False]])  # caption 2 names nothing: fits every image
    got = pt.caption_match(attrs, named)
    want = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
    assert torch.equal(got, want) and got.diagonal().all()


def test_multi_positive_loss_matches_hand_computation():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    keys = torch.tensor([0, 1, 0, 2, 1])
    positive = keys[:, None] == keys[None, :]
    scale = torch.tensor(3.0)
    got = pt.multi_positive_clip_loss(img, txt, positive, scale)
    logits = 3.0 * img @ txt.T
    total = 0.0
    for m in (logits, logits.T):
        lsm = m.log_softmax(1)
        for i in range(5):
            pos = (keys == keys[i]).nonzero().flatten()
            total += -lsm[i, pos].mean() / 5
    assert math.isclose(float(got), float(total) / 2, rel_tol=1e-6)
    # with only the diagonal positive it is the plain CLIP loss
    eye = torch.eye(5, dtype=torch.bool)
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(5))
            + torch.nn.functional.cross_entropy(logits.T, torch.arange(5))) / 2
    assert torch.allclose(pt.multi_positive_clip_loss(img, txt, eye, scale), clip)


def test_pixels_equal_the_checkpoint_processor():
    from PIL import Image

    proc = pt.image_processor(32)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)  # resized by the processor
    rgb = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)  # already 32 px RGB: normalised directly
    for imgs in (grey, rgb):
        got = pt.pixels(imgs, proc)
        ref = proc([Image.fromarray(a) for a in imgs], return_tensors="pt")["pixel_values"]
        assert got.shape == (len(imgs), 3, 32, 32) and torch.allclose(got, ref, atol=1e-5)
    assert math.isclose(float(pt.pixels(np.zeros((1, 32, 32, 3), np.uint8), proc)[0, 0, 0, 0]),
                        -pt.PIXEL_MEAN / pt.PIXEL_STD, rel_tol=1e-6)


def test_encode_unique_encodes_each_text_once():
    calls = []

    class Tower:
        def encode(self, texts):
            calls.append(list(texts))
            return torch.tensor([[float(len(t)), 1.0] for t in texts])

    emb = pt.encode_unique(Tower(), ["ab", "a", "ab", "abc"])
    assert len(calls) == 1 and sorted(calls[0]) == ["a", "ab", "abc"]
    assert torch.allclose(emb[0], emb[2]) and torch.allclose(emb.norm(dim=1), torch.ones(4))


@pytest.mark.slow
def test_pretrain_tiny_run_writes_a_loadable_checkpoint(tmp_path):
    from PIL import Image

    from resi_dual.models import demo as demo_mod

    cfg = pt.PretrainConfig(out=tmp_path / "ckpt", world_size=96, epochs=1, batch_size=32, log_every=2,
                            eval_limit=24, final_eval_limit=24, num_hidden_layers=1, num_attention_heads=2,
                            hidden_size=32, intermediate_size=64, max_minutes=5, threads=1)
    info = pt.pretrain_demo(cfg)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "demo.json", "train_log.tsv"):
        assert (cfg.out / name).is_file(), name
    assert info["steps"] == 3 and not info["stopped_by_budget"]
    log = (cfg.out / "train_log.tsv").read_text().strip().splitlines()
    assert len(log) == 3 and log[-1].split("\t")[-1] == "done"
    assert json.loads((cfg.out / "demo.json").read_text())["final_zero_shot"] == info["final_zero_shot"]
    assert set(info["final_zero_shot"]) >= {"world_colour", "world_position", "unseen_class", "heldout_combo_class"}
    model = demo_mod.load_demo(cfg.out)
    assert model.spec == f"demo:{cfg.out}" and model.composition.n_layers == 1
    assert model.text_tower.logit_scale == pytest.approx(info["logit_scale"])
    enc = model.trace(model.preprocess([Image.new("RGB", (32, 32), (200, 0, 0))] * 2))
    assert float(enc.relative_error().max()) < 1e-5
