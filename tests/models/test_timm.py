"""timm towers inside open_clip (EVA-02, EVA, timm ViT): exact folding, text side, refusals, the real EVA02-B-16."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from resi_dual import load_model
from resi_dual.errors import ResiDualError
from resi_dual.models.registry import resolve_spec
from tracing_models import TIMM_VARIANTS, register_timm_variant, save_open_clip_dir, timm_clip_cfg

TOL = 1e-5


def _load(spec, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(spec, **kw)


def test_eva02_head_norm_is_folded_into_the_head_readout(saved_models):
    spec, lib, _ = saved_models["timm_eva02_clip"]
    model = _load(spec, convention="centred")
    trunk = lib.visual.trunk
    attn = trunk.blocks[1].attn
    assert [type(n).__name__ for n in model.layout.head_norm] == ["LayerNorm", "LayerNorm"]
    # centred: G·(I − 11ᵀ/D) · W_o·diag(γ_inner)·(I − 11ᵀ/(H·dh)), the columns of head 2
    f64 = torch.float64
    w_o, g_in = attn.proj.weight.detach().to(f64), attn.norm.weight.detach().to(f64)
    inner = w_o * g_in[None] - (w_o * g_in[None]).mean(1, keepdim=True)
    P = trunk.head.weight.detach().to(f64)  # EVA-CLIP: timm's own head is the projection
    G = P * trunk.norm.weight.detach().to(f64)[None]
    Gc = G - G.mean(1, keepdim=True)
    dh = model.composition.d_head
    expected = (Gc @ inner)[:, 2 * dh:3 * dh]
    torch.testing.assert_close(model.readout.head_weight[1, 2].double(), expected, rtol=1e-5, atol=1e-6)


def test_eva_layer_scales_and_fc_norm(saved_models):
    model = _load(saved_models["timm_eva_ls_fc_norm"][0])
    trunk = model.library_model.visual.trunk
    assert model.layout.final_norm is trunk.fc_norm and all(s is not None for s in model.layout.mlp_scale)
    assert model.layout.attn_scale[2] is trunk.blocks[2].gamma_1
    px = torch.randn(4, 3, 21, 21, generator=torch.Generator().manual_seed(1))
    enc = model.trace(px)
    seen = []
    h = trunk.blocks[1].mlp.register_forward_hook(lambda _m, _a, out: seen.append(out[:, 0]))
    try:
        model.embed(px)
    finally:
        h.remove()
    # the MLP unit of block 1 is γ₂ ⊙ mlp(norm2(x)) at the CLS token (γ₂ is applied by the block, not a module)
    torch.testing.assert_close(enc.dense[:, 2], trunk.blocks[1].gamma_2.detach() * seen[0], rtol=1e-5, atol=1e-6)
    assert enc.dense.shape == (4, 4, 40) and enc.heads.shape == (4, 3, 5, 8)


def test_timm_text_tower_gives_the_librarys_logits(saved_models):
    from resi_dual.models.text import clear_cache, get_text_tower
    from resi_dual.zeroshot import build_classifier

    spec, lib, _ = saved_models["timm_eva02_clip"]
    model = _load(spec)
    texts = ["a photo of a cat", "a dog", "something much longer than the others, with more words"]
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    clear_cache()
    tower = get_text_tower(model, tokenizer=lambda batch: ids[[texts.index(t) for t in batch]])
    px = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        img, txt, scale = lib(px, ids)
    ours = tower.logit_scale * F.normalize(model.embed(px), dim=-1) @ build_classifier(tower, texts, ["{}"]).T
    torch.testing.assert_close(ours, scale * img @ txt.T, rtol=1e-4, atol=1e-4)
    assert tower.name.startswith("open_clip text tower")


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("convnext_atto", {"image_size": 32, "timm_pool": "avg", "timm_proj": "linear"}, "timm ConvNeXt trunk, not a ViT"),
        ("eva02_clip", {"timm_pool": "avg"}, "pools with 'avg'"),
        ("eva02_clip", {"timm_proj": "mlp"}, "image head has a Mlp, which is not linear"),
        ("post_norm", {}, "block 0 is a timm EvaBlockPostNorm"),
    ],
)
def test_untraceable_timm_towers_are_refused(tmp_path, name, extra, message):
    if name == "post_norm":
        args = dict(TIMM_VARIANTS["eva02_clip"][1], use_post_norm=True, scale_attn_inner=False, scale_mlp=False)
        cfg = timm_clip_cfg(register_timm_variant("post_norm", "eva", args), image_size=30, timm_proj=None)
    else:
        cfg = timm_clip_cfg(name, **extra)
    save_open_clip_dir(tmp_path / "m", cfg)
    with pytest.raises(ResiDualError, match=message) as info:
        _load(f"open_clip:{tmp_path / 'm'}")
    assert "\n" not in str(info.value) and "(supported families: hf-clip, " in str(info.value)


def test_short_names_of_the_timm_family():
    assert resolve_spec("eva02_b") == "open_clip:EVA02-B-16@merged2b_s8b_b131k"
    assert resolve_spec("eva02_l") == "open_clip:EVA02-L-14@merged2b_s4b_b131k"


@pytest.mark.slow
def test_the_real_eva02_b16_architecture_decomposes_exactly():
    """open_clip's EVA02-B-16 with random weights (no download): 12 × 12 heads, d_head 64, d_out 512."""
    for convention in ("paper", "centred"):
        model = _load("open_clip:EVA02-B-16", convention=convention)
        c = model.composition
        assert (c.family, c.n_layers, c.n_heads, c.d_head, c.d_out) == ("open_clip-timm", 12, 12, 64, 512)
        px = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        enc = model.trace(px)
        with torch.no_grad():
            ref = model.library_model.encode_image(px)
        err = float(((enc.contributions().sum(1).double() - ref.double()).norm(dim=-1) / ref.double().norm(dim=-1)).max())
        assert err <= TOL


def test_eva02_short_name_offline_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-m", "resi_dual", "trace", "--model", "eva02_b"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not fetch the weights of 'eva02_b' (offline?)")
