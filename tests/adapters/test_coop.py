"""CoOp through the frozen text towers of HF CLIP, open_clip and the demo (MiniLM, mean pooling)."""

import types

import pytest
import torch
import torch.nn.functional as F

from resi_dual.adapters import coop as coop_mod
from resi_dual.adapters.adapter import LR_SWEEP
from resi_dual.adapters.peers import Features, PeerTraining, run_peer
from resi_dual.errors import ResiDualError
from resi_dual.models.text import clear_cache, get_text_tower
from resi_dual.zeroshot import build_classifier

NAMES = ["dog", "red car", "harbor", "tabby cat"]


@pytest.fixture(scope="module")
def towers(tmp_path_factory, tiny_clip_model):
    from resi_dual import load_model
    from resi_dual.models.text import clip_tokenizer_from_open_clip_bpe
    from tests.models.tracing_models import save_open_clip_dir

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("coop")
    tiny_clip_model(seed=3).save_pretrained(tmp / "hf")
    clip_tokenizer_from_open_clip_bpe().save_pretrained(tmp / "hf")
    cfg = {"embed_dim": 16, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    save_open_clip_dir(tmp / "oc", cfg, seed=5)
    return {"hf": load_model(f"hf:{tmp / 'hf'}"), "open_clip": load_model(f"open_clip:{tmp / 'oc'}"),
            "demo": load_model("demo")}


def features(d: int, n_per_class: int, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(NAMES), d, generator=torch.Generator().manual_seed(11)), dim=1)
    labels = torch.arange(len(NAMES)).repeat_interleave(n_per_class)
    return Features(F.normalize(centres[labels] + 0.3 * torch.randn(len(labels), d, generator=g), dim=1), labels)


@pytest.mark.parametrize("family", ["hf", "open_clip", "demo"])
def test_context_from_a_phrase_gives_the_zero_shot_logits_of_its_template(towers, family):
    model = towers[family]
    clear_cache()
    tower = get_text_tower(model)
    prompt = coop_mod.PromptTower(model, NAMES, ctx_init="a photo of a")
    assert prompt.n_ctx == 4 and prompt.init_ctx.shape == (4, prompt.d_token)
    with torch.no_grad():
        ours = prompt.class_embeddings(prompt.init_ctx)
    zero_shot = build_classifier(tower, NAMES, ["a photo of a {}."])
    f = features(zero_shot.shape[1], 3, seed=1).embeddings
    torch.testing.assert_close(tower.logit_scale * f @ ours.T, tower.logit_scale * f @ zero_shot.T, rtol=0, atol=1e-4)
    # a random context gives other class rows: the injection is what makes them equal
    with torch.no_grad():
        other = prompt.class_embeddings(torch.randn(4, prompt.d_token))
    assert not torch.allclose(other, zero_shot, atol=1e-3)


@pytest.mark.parametrize("family", ["hf", "demo"])
def test_only_the_context_gets_gradients_and_the_tower_is_unchanged(towers, family):
    model = towers[family]
    prompt = coop_mod.PromptTower(model, NAMES, n_ctx=3)
    ctx = torch.nn.Parameter(0.02 * torch.randn(3, prompt.d_token))
    prompt.class_embeddings(ctx).sum().backward()
    assert ctx.grad is not None and float(ctx.grad.abs().sum()) > 0
    assert all(p.grad is None for p in prompt.frozen) and len(prompt.frozen) > 0

    before = {id(p): p.detach().clone() for p in prompt.frozen}
    flags = [p.requires_grad for p in prompt.frozen]
    d = get_text_tower(model).encode(["x"]).shape[1]
    tr, va = features(d, 4, seed=2), features(d, 2, seed=3)
    budget = PeerTraining(max_epochs=3, patience=2, batch_size=8, seed=1)
    res = run_peer("coop", tr, va, torch.eye(len(NAMES), d), get_text_tower(model).logit_scale, budget,
                   model=model, class_names=NAMES)
    assert all(torch.equal(p, before[id(p)]) for p in prompt.frozen)
    assert [p.requires_grad for p in prompt.frozen] == flags
    assert res.trainable_parameters == coop_mod.N_CTX * prompt.d_token
    assert res.lr_choice == "sweep" and res.settings["lr"] in LR_SWEEP["coop"] and res.candidates == 4
    assert res.predict(va.embeddings).shape == (len(va), len(NAMES))


def test_schedule_warms_up_then_anneals():
    at = coop_mod.coop_schedule(0.002, 10)
    assert at(0) == coop_mod.WARMUP_LR and at(1) == 0.002
    assert at(1) > at(5) > at(10) > 0


def test_towers_without_input_embeddings_are_refused_in_one_line(towers):
    vision_only = types.SimpleNamespace(spec="hf:vit", library_model=torch.nn.Linear(2, 2))
    with pytest.raises(ResiDualError, match="vision-only"):
        coop_mod.PromptTower(vision_only, NAMES)
    opaque = types.SimpleNamespace(spec="x", text_tower=types.SimpleNamespace(encode=lambda b: torch.zeros(len(b), 4)),
                                   library_model=torch.nn.Linear(2, 2))
    with pytest.raises(ResiDualError, match="no text tower that takes input embeddings"):
        coop_mod.PromptTower(opaque, NAMES)
    with pytest.raises(ResiDualError, match="pass the model"):
        run_peer("coop", features(8, 2, 0), features(8, 2, 1), torch.eye(4, 8), 100.0)
