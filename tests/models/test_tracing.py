"""Exact tracing of every family: Σ_u c_u equals the library's own embedding (fp32, rel. err ≤ 1e-5)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from tracing_models import HF_KINDS, KIND_FAMILY, OPEN_CLIP_VARIANTS, POOLED_KINDS, TIMM_VARIANTS
from resi_dual import list_models, load_model
from resi_dual.errors import ResiDualError
from resi_dual.core.units import block_share, head_share

ALL_KINDS = HF_KINDS + POOLED_KINDS + [f"open_clip_{v}" for v in OPEN_CLIP_VARIANTS] + [f"timm_{v}" for v in TIMM_VARIANTS]
TOL = 1e-5


def _load(spec, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # local dirs without an image processor warn about the fallback
        return load_model(spec, **kw)


def _pixels(model, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, model.image_size, model.image_size, generator=g)


def _rel(a, b):
    a, b = a.double(), b.double()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


@pytest.mark.parametrize("convention", ["paper", "centred"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_contributions_sum_to_library_embedding(saved_models, kind, convention):
    spec, lib, own = saved_models[kind]
    model = _load(spec, convention=convention)
    px = _pixels(model)
    enc = model.trace(px)
    with torch.no_grad():
        ref = own(px)
    c = enc.contributions()
    comp = model.composition
    L, H = comp.n_layers, comp.n_heads
    assert c.shape == (5, 1 + L * (H + 1) + int(comp.pooled), comp.d_out) == (5, len(enc.units), ref.shape[-1])
    assert _rel(c.sum(1), ref) <= TOL
    assert _rel(model.embed(px), ref) <= TOL  # the plain forward is the library's
    assert _rel(model.summed_contributions(enc), ref) <= TOL  # the fused runtime check agrees
    if comp.pooled:  # pooled contributions (emb, MLPs, pool; heads), each unit checked in test_pooled.py
        assert enc.heads.shape == (5, L, H, comp.d_out) and enc.dense.shape == (5, 2 + L, comp.d_out)
    else:  # per-head raw outputs are d_head wide; counts were read from the model
        assert float(model.residual_error(enc, _resid(model, px)).max()) <= TOL
        assert enc.heads.shape == (5, L, H, comp.d_head) and comp.d_head * H == comp.d_model
        assert enc.dense.shape == (5, 1 + L, comp.d_model)
    assert comp.convention == convention and comp.model_id == spec
    assert comp.family == KIND_FAMILY[kind]


def test_the_table_covers_every_registered_family():
    assert set(KIND_FAMILY) == set(ALL_KINDS)
    assert {f.name for f in list_models()} == set(KIND_FAMILY.values()) | {"demo"}


def _resid(model, px):
    """The pre-LN CLS residual, captured independently with a plain hook on the final norm."""
    seen = []
    h = model.layout.final_norm.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            model.embed(px)
    finally:
        h.remove()
    x = seen[0]
    return (x[:, 0] if x.dim() == 3 else x).double()


def test_unit_layout_and_labels(saved_models):
    model = _load(saved_models["clip"][0])
    comp = model.composition
    assert (comp.n_layers, comp.n_heads, comp.d_model, comp.d_head, comp.d_out) == (2, 4, 48, 12, 24)
    assert comp.labels == ["emb", "L0H0", "L0H1", "L0H2", "L0H3", "L0.mlp", "L1H0", "L1H1", "L1H2", "L1H3", "L1.mlp"]
    assert {u.kind for u in comp.units} == {"emb", "head", "mlp"}
    oc = _load(saved_models["open_clip_mha_quickgelu_ls"][0]).composition
    assert (oc.n_layers, oc.n_heads, oc.d_head, oc.d_out) == (3, 2, 16, 24)


def test_vit_classifier_reads_the_traced_embedding(saved_models):
    spec, lib, _ = saved_models["vit_cls"]
    model = _load(spec)
    px = _pixels(model)
    enc = model.trace(px)
    with torch.no_grad():
        logits = lib(pixel_values=px).logits
        ours = lib.classifier(enc.contributions().sum(1))
    assert _rel(ours, logits) <= TOL


def test_paper_shares_and_centred_units(saved_models):
    spec, lib, _ = saved_models["vit"]  # no projection: output = post-LN CLS, so P = I
    paper, centred = _load(spec), _load(spec, convention="centred")
    gamma, beta = lib.layernorm.weight.detach(), lib.layernorm.bias.detach()
    comp = paper.composition
    L, H = comp.n_layers, comp.n_heads
    # β is spread: 1/(2L+1) per embedding/MLP, 1/((2L+1)H) per head; the shares sum to β
    torch.testing.assert_close(paper.readout.const.sum(0), beta, rtol=1e-5, atol=1e-6)
    emb = comp.index("emb")
    torch.testing.assert_close(paper.readout.const[emb], beta * block_share(L), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(paper.readout.const[comp.index("L0H1")], beta * head_share(L, H), rtol=1e-5, atol=1e-7)
    # paper: each head carries b_o/H of its layer's output bias
    b_o = lib.layers[0].attention.o_proj.bias.detach()
    torch.testing.assert_close(paper.readout.inv_sigma[comp.index("L0H2")], gamma * b_o / H, rtol=1e-5, atol=1e-6)
    # centred: every unit's term before β is γ ⊙ (centred vector) / σ
    enc = centred.trace(_pixels(centred))
    c = enc.contributions() - centred.readout.const[None]
    assert float(((c / gamma).mean(-1)).abs().max()) < 1e-5
    assert float(centred.readout.mu_over_sigma.abs().max()) == 0.0
    # both conventions split the same total
    penc = paper.trace(_pixels(paper))
    assert _rel(penc.contributions().sum(1), enc.contributions().sum(1)) <= TOL
    assert not torch.allclose(penc.contributions()[:, emb], enc.contributions()[:, emb], atol=1e-3)


def test_dinov2_layer_scale_is_folded_into_heads(saved_models):
    spec, lib, _ = saved_models["dinov2"]
    model = _load(spec)
    lam = lib.encoder.layer[1].layer_scale1.lambda1.detach().double()
    w_o = lib.encoder.layer[1].attention.o_proj.weight.detach().double()
    gamma = lib.layernorm.weight.detach().double()
    dh = model.composition.d_head
    expected = (gamma[:, None] * lam[:, None] * w_o)[:, 2 * dh:3 * dh]  # head 2 of layer 1, paper convention
    torch.testing.assert_close(model.readout.head_weight[1, 2].double(), expected, rtol=1e-5, atol=1e-6)


def test_hooks_and_instance_forwards_are_removed(saved_models):
    for kind in ("clip", "open_clip_mha"):
        model = _load(saved_models[kind][0])
        model.trace(_pixels(model, n=2))
        for mod in model.library_model.modules():
            assert not mod._forward_hooks and not mod._forward_pre_hooks, type(mod).__name__
            assert "forward" not in mod.__dict__, type(mod).__name__
        # also after a failing forward
        with pytest.raises(ResiDualError):
            model.trace(torch.zeros(2, 3, 5, 5))
        assert all(not m._forward_pre_hooks for m in model.library_model.modules())


def test_a_hook_that_never_fires_raises(saved_models):
    model = _load(saved_models["vit"][0])
    model.layout.mlp_out[1] = nn.Identity()  # not on the forward path
    with pytest.raises(ResiDualError, match=r"never fired for L1 MLP"):
        model.trace(_pixels(model, n=2))


def test_check_catches_a_wrong_readout(saved_models):
    model = _load(saved_models["blip"][0])
    model.readout.const[0] += 1.0
    with pytest.raises(ResiDualError, match="decomposition of .* is off"):
        model.trace(_pixels(model, n=2))
    enc = model.trace(_pixels(model, n=2), check=False)
    assert float(enc.relative_error().max()) > 1e-3


def test_weights_hash(saved_models):
    spec = saved_models["open_clip_mha"][0]
    a, b = _load(spec), _load(spec)
    assert a.weights_hash() == b.weights_hash() and len(a.weights_hash()) == 64
    with torch.no_grad():
        b.library_model.visual.proj.mul_(1.01)
    b._hash = None
    assert a.weights_hash() != b.weights_hash()
    assert _load(saved_models["clip"][0]).weights_hash() != a.weights_hash()


def test_dinov2_accepts_other_patch_multiples(saved_models):
    spec, _, own = saved_models["dinov2"]
    model = _load(spec)
    px = torch.randn(2, 3, 21, 35)  # patch 7
    with torch.no_grad():
        ref = own(px)
    assert _rel(model.trace(px).contributions().sum(1), ref) <= TOL
    with pytest.raises(ResiDualError, match=r"H, W multiples of 7"):
        model.trace(torch.randn(2, 3, 22, 28))


def test_dinov2_registers_are_tokens_not_units(saved_models):
    spec, lib, own = saved_models["dinov2_registers"]
    model = _load(spec)
    assert model.family == "dinov2-registers" and lib.config.num_register_tokens == 4
    comp = model.composition
    assert (comp.n_layers, comp.n_heads, comp.d_head) == (2, 5, 8)  # units as DINOv2's: registers add none
    px = torch.randn(2, 3, 21, 42)  # patch 7: position embeddings interpolate
    with torch.no_grad():
        ref = own(px)
    assert _rel(model.trace(px).contributions().sum(1), ref) <= TOL
