"""Spatial maps (docs/DESIGN.md §10–11): Σ_t of a head's map is its contribution along the direction (at the CLS
token, or pooled by the probe), and heads + non-spatial remainder are the library's own score, for every family
(CLS, timm/EVA-02 and attention-pooled SigLIP) and both conventions."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from tracing_models import HF_KINDS, OPEN_CLIP_VARIANTS, POOLED_KINDS, TIMM_VARIANTS
from resi_dual import load_model
from resi_dual.errors import ResiDualError
from resi_dual.models.spatial import head_mask, spatial_maps

ALL_KINDS = HF_KINDS + POOLED_KINDS + [f"open_clip_{v}" for v in OPEN_CLIP_VARIANTS] + [f"timm_{v}" for v in TIMM_VARIANTS]
#: tokens before the patch grid: CLS and registers, or (pooled towers) the slot of the heads' constant share
PREFIX = {"dinov2_registers": 5, "timm_vit_registers": 3}
TOL = 1e-5


def _load(spec, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(spec, **kw)


def _rel(a, b):
    a, b = a.double(), b.double()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


@pytest.mark.parametrize("convention", ["paper", "centred"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_maps_sum_to_cls_contributions_and_score(saved_models, kind, convention):
    spec, _lib, own = saved_models[kind]
    model = _load(spec, convention=convention)
    g = torch.Generator().manual_seed(1)
    px = torch.randn(4, 3, model.image_size, model.image_size, generator=g)
    c = model.composition
    dirs = torch.randn(3, c.d_out, generator=g)
    sm = spatial_maps(model, px, dirs)
    n_tok = sm.heads.shape[-1]
    assert sm.heads.shape == (4, 3, c.n_layers, c.n_heads, n_tok) and sm.prefix == PREFIX.get(kind, 1)
    assert sm.grid[0] * sm.grid[1] == n_tok - sm.prefix
    # reference: the tracer's per-unit contributions (readout.apply, float64), projected
    enc = model.trace(px)
    heads = [i for i, u in enumerate(c.units) if u.kind == "head"]
    ref = torch.einsum("nuo,ko->nku", enc.contributions(heads).double(), dirs.double())  # (n, K, L·H)
    got = sm.heads.sum(-1).flatten(2)
    assert _rel(got, ref) <= TOL  # Σ_t m_h(t) = ⟨c_h, u⟩ for every head (relative over the heads)
    assert _rel(sm.cls.flatten(2), ref) <= TOL
    with torch.no_grad():
        score = own(px).double() @ dirs.double().T  # the library's own embedding
    total = sm.heads.double().sum(dim=(2, 3, 4)) + sm.remainder.double()
    assert float(((total - score).abs() / score.abs().clamp_min(1.0)).max()) <= TOL
    assert _rel(sm.score, score) <= TOL
    # the maps are spatial: some non-CLS token carries a non-zero share in every head
    assert float(sm.heads[..., 1:].abs().amax(-1).min()) > 0


@pytest.mark.parametrize("kind", ["clip", "open_clip_custom_attention", "dinov2", "timm_eva02_clip", "siglip",
                                  "timm_siglip_map"])
def test_per_head_directions(saved_models, kind):
    """Each head along its own directions (a PC per head): Σ_t = that head's CLS contribution along it."""
    model = _load(saved_models[kind][0])
    c = model.composition
    g = torch.Generator().manual_seed(2)
    px = torch.randn(3, 3, model.image_size, model.image_size, generator=g)
    dirs = torch.randn(c.n_layers, c.n_heads, 2, c.d_out, generator=g)
    sm = spatial_maps(model, px, dirs)
    assert sm.remainder is None and sm.score is None
    enc = model.trace(px)
    heads = [i for i, u in enumerate(c.units) if u.kind == "head"]
    contrib = enc.contributions(heads).double().view(3, c.n_layers, c.n_heads, -1)
    ref = torch.einsum("nlho,lhko->nklh", contrib, dirs.double())
    assert _rel(sm.heads.sum(-1).flatten(2), ref.flatten(2)) <= TOL
    # a head's map along its own directions equals the shared-direction map of the same vector
    one = spatial_maps(model, px, dirs[1, 0])
    assert torch.allclose(one.heads[:, :, 1, 0], sm.heads[:, :, 1, 0], atol=1e-5 * float(one.heads.abs().max()))


def test_image_map_masks_and_shape_errors(saved_models):
    model = _load(saved_models["clip"][0])
    c = model.composition
    px = torch.randn(2, 3, model.image_size, model.image_size)
    sm = spatial_maps(model, px, torch.randn(c.d_out))
    mask = head_mask(model, ["L1H2", "L0H0"])
    assert int(mask.sum()) == 2 and bool(mask[1, 2]) and bool(mask[0, 0])
    part = sm.image_map(mask)
    want = sm.patches()[:, :, 1, 2] + sm.patches()[:, :, 0, 0]
    assert part.shape == (2, 1, *sm.grid) and torch.allclose(part, want)
    with pytest.raises(ResiDualError, match="not a head"):
        head_mask(model, ["L0.mlp"])
    with pytest.raises(ResiDualError, match=r"\(K, 24\)"):
        spatial_maps(model, px, torch.randn(3, 7))


def test_broken_attention_is_caught(saved_models):
    """A wrong logit scale in the layout (a family bug) fails the rebuilt-heads check, loudly."""
    model = _load(saved_models["vit"][0])
    model.layout.attention[0].scale *= 2.0
    with pytest.raises(ResiDualError, match="spatial decomposition .* is off"):
        spatial_maps(model, torch.randn(2, 3, model.image_size, model.image_size), torch.randn(1, model.composition.d_out))


def test_eva02_rotary_attention_is_rebuilt(saved_models):
    """EVA-02's CLS row reads rotated keys: without the rotary embedding the rebuilt heads are off, loudly."""
    model = _load(saved_models["timm_eva02_clip"][0])
    px = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(4))
    u = torch.randn(1, model.composition.d_out, generator=torch.Generator().manual_seed(5))
    spatial_maps(model, px, u)
    spec = model.layout.attention[1]
    rotary = spec.cls_logits
    spec.cls_logits = lambda x, kwargs: rotary(x, {k: v for k, v in kwargs.items() if k != "rope"})
    with pytest.raises(ResiDualError, match="rebuilt heads"):
        spatial_maps(model, px, u)


@pytest.mark.parametrize("convention", ["paper", "centred"])
def test_pooled_maps_place_shares_on_tokens_and_the_constant_in_slot_0(saved_models, convention):
    """SigLIP: the map's token axis is the tokens the probe pools; the bias and μ shares of a head follow the
    probe's weights over those tokens, and only its image-independent constant share sits in slot 0."""
    from resi_dual.core.units import head_share

    spec, lib, _own = saved_models["siglip"]
    model = _load(spec, convention=convention)
    c = model.composition
    g = torch.Generator().manual_seed(6)
    u = torch.randn(2, c.d_out, generator=g)
    a = spatial_maps(model, torch.randn(3, 3, model.image_size, model.image_size, generator=g), u)
    b = spatial_maps(model, torch.randn(3, 3, model.image_size, model.image_size, generator=g), u)
    # slot 0 is the same for every image and every head of the tower: s_h ⟨u, K⟩ with K the probe's constant
    head = lib.vision_model.head
    D = head.attention.embed_dim
    ln = lib.vision_model.post_layernorm
    K = head.attention.out_proj(F.linear(ln.bias, head.attention.in_proj_weight[2 * D:],
                                         head.attention.in_proj_bias[2 * D:]))
    want = head_share(c.n_layers, c.n_heads) * (u.double() @ K.detach().double())
    assert torch.allclose(a.heads[..., 0].double(), want[None, :, None, None].expand_as(a.heads[..., 0]), rtol=1e-5, atol=1e-7)
    assert torch.equal(a.heads[..., 0], b.heads[..., 0])
    # the patches carry the rest of each head's pooled contribution
    assert _rel((a.patches().sum(dim=(-2, -1)) + a.heads[..., 0]).flatten(2), a.cls.flatten(2)) <= TOL
