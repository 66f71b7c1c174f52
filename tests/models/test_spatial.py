"""Spatial maps (docs/DESIGN.md §10): Σ_t of a head's map is its CLS contribution along the direction, and
heads + non-spatial remainder are the library's own score, for every family and both conventions."""

from __future__ import annotations

import warnings

import pytest
import torch

from tracing_models import HF_KINDS, OPEN_CLIP_VARIANTS
from resi_dual import load_model
from resi_dual.errors import ResiDualError
from resi_dual.models.spatial import head_mask, spatial_maps

ALL_KINDS = HF_KINDS + [f"open_clip_{v}" for v in OPEN_CLIP_VARIANTS]
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
    prefix = 5 if kind == "dinov2_registers" else 1  # CLS and the 4 registers come before the patches
    assert sm.heads.shape == (4, 3, c.n_layers, c.n_heads, n_tok) and sm.prefix == prefix
    assert sm.grid[0] * sm.grid[1] == n_tok - prefix
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


@pytest.mark.parametrize("kind", ["clip", "open_clip_custom_attention", "dinov2"])
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


def test_families_without_spatial_layout_say_so(saved_models):
    """EVA-02 (timm: rotary embeddings, a LayerNorm over the heads) has no token split yet: one clear line."""
    if "timm_eva02_clip" not in saved_models:
        pytest.skip("no timm family in this checkout")
    model = _load(saved_models["timm_eva02_clip"][0])
    with pytest.raises(ResiDualError, match="has no spatial decomposition"):
        spatial_maps(model, torch.randn(1, 3, model.image_size, model.image_size), torch.randn(1, model.composition.d_out))
