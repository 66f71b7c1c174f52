"""Where a family's residual terms live (:class:`Layout`, :class:`AttnSpec`) and the exact per-unit readout
built from those weights.

Built once from the weights (:func:`build_readout`), float64 then stored float32.
  With ``G = P·diag(γ)`` (P: the final projection, identity without one):

  ============  ==========================  ==========================================
  term          ``paper`` (default)          ``centred``
  ============  ==========================  ==========================================
  dense_weight  ``G``                       ``G·(I − 11ᵀ/D)``
  head_weight   ``G·diag(λ₁)·W_o[:, h]``    ``G·(I − 11ᵀ/D)·diag(λ₁)·W_o[:, h]``
  inv_sigma     heads: ``G·diag(λ₁)·b_o/H`` heads: the same, centred
  mu_over_sigma ``−s_u·G·1``                 0
  const         ``s_u·(P·β + b_P)``         ``s_u·(P·β + b_P)``
  ============  ==========================  ==========================================

  ``λ₁`` is DINOv2's (or open_clip's) attention layer scale (ones otherwise); the MLP layer scale is
  already in the captured MLP term. ``s_u`` is the paper's share: ``1/(2L+1)`` for the embedding and
  each MLP, ``1/((2L+1)H)`` for each head (``units.block_share`` / ``units.head_share``).
  The ``paper`` convention is the one of Basile et al. (each head gets ``b_o/H``, the LayerNorm mean
  and β spread evenly over the 2L+1 blocks); ``centred`` removes each unit's own feature mean instead,
  which is also exact because LayerNorm centring is the linear map ``I − 11ᵀ/D``.

"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from resi_dual.core.encodings import Readout
from resi_dual.core.units import CONVENTIONS, Composition, block_share, head_share
from resi_dual.errors import ResiDualError


@dataclass
class AttnSpec:
    """How one block's attention reads its tokens, for the spatial decomposition (``resi_dual.models.spatial``).

    Attributes:
        module: the module whose first input (positional or ``hidden_states``/``x``/``query``) is the
            block's normalised tokens x̂ (n, T, D), or (T, n, D) when the layout is not batch-first.
        qkv: returns the packed projection at call time: weight (3·H·d_head, D) with rows q, k, v,
            each head-major, and bias (3·H·d_head,) or None (called late so ``.to(device)`` is seen).
        scale: the logit scale (d_head^-0.5 for every supported family).
        head_scale: returns a (H,) per-head scale applied to the attention output before W_o, or None.
        logits: optional ``(q0 (n, H, d_head), k (n, H, T, d_head)) -> (n, H, T)`` for attentions whose
            logits are not ``scale·q·k`` (open_clip's qk-norm or scaled cosine); q0, k are raw projections.
        cls_logits: optional ``(x̂ (n, T, D), the call's keyword arguments) -> (n, H, T)`` the CLS
            query's logits, for attentions that need the call itself (timm/EVA rotary embeddings).
    """

    module: nn.Module
    qkv: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    scale: float
    head_scale: Callable[[], torch.Tensor | None] | None = None
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    cls_logits: Callable[[torch.Tensor, dict], torch.Tensor] | None = None


def packed_qkv(q: nn.Linear, k: nn.Linear, v: nn.Linear) -> Callable[[], tuple[torch.Tensor, torch.Tensor | None]]:
    """An :attr:`AttnSpec.qkv` for three separate projections (zero biases where one has none)."""

    def get():
        w = torch.cat([q.weight, k.weight, v.weight])
        if q.bias is None and k.bias is None and v.bias is None:
            return w, None
        zeros = torch.zeros(q.weight.shape[0], dtype=w.dtype, device=w.device)
        return w, torch.cat([zeros if m.bias is None else m.bias for m in (q, k, v)])

    return get


@dataclass(kw_only=True)
class Layout:
    """Where the residual terms of one ViT live in the library's module tree.

    Attributes:
        blocks: the L transformer blocks in order (block 0's input is the embedding term).
        attn_out: per block, the attention output projection (nn.Linear, weight (D, H·d_head));
            its input is the concatenation of the heads' outputs.
        mlp_out: per block, the module whose output is the MLP term *after* any layer scale.
        final_norm: the final LayerNorm (weight, bias, eps) whose input is the pre-LN residual.
        n_heads: heads per block.
        attn_scale: per block, the attention layer-scale vector λ₁ (D,), or None; empty means none anywhere.
        proj_weight: (d_out, D) final projection, or None (output = post-LN CLS).
        proj_bias: (d_out,) projection bias, or None.
        batch_first: whether block inputs / MLP outputs are (n, T, D) (else (T, n, D)).
        instance_forwards: (module, forward) pairs installed on those module *instances* during
            capture (e.g. an explicit attention that calls ``out_proj`` as a module).
        attention: per block, an :class:`AttnSpec` (empty: the family has no spatial decomposition).
        head_norm: per block, a LayerNorm over the concatenated heads just before ``attn_out``
            (timm's ``scale_norm``, EVA-CLIP's ``scale_attn_inner``), or None. Given the token's own
            σ it is affine, so the captured head outputs are ``z/σ`` and the out-projection becomes
            ``W_o·diag(γ)·(I − 11ᵀ/(H·d_head))`` with bias ``W_o·β + b_o`` (see :func:`head_projection`).
        mlp_scale: per block, a layer scale multiplied onto the ``mlp_out`` output by the block
            itself (EVA's ``gamma_2``), or None; empty means none anywhere.
    """

    blocks: Sequence[nn.Module]
    attn_out: Sequence[nn.Linear]
    mlp_out: Sequence[nn.Module]
    final_norm: nn.Module
    n_heads: int
    attn_scale: Sequence[torch.Tensor | None] = ()
    proj_weight: torch.Tensor | None = None
    proj_bias: torch.Tensor | None = None
    batch_first: bool = True
    instance_forwards: Sequence[tuple[nn.Module, Callable]] = field(default_factory=tuple)
    attention: Sequence[AttnSpec] = field(default_factory=tuple)
    head_norm: Sequence[nn.Module | None] = field(default_factory=tuple)
    mlp_scale: Sequence[torch.Tensor | None] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.attn_scale:
            self.attn_scale = [None] * len(self.blocks)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.attn_out[0].weight.shape[0])

    @property
    def d_head(self) -> int:
        return int(self.attn_out[0].weight.shape[1]) // self.n_heads

    @property
    def d_out(self) -> int:
        return self.d_model if self.proj_weight is None else int(self.proj_weight.shape[0])


def norm_eps(norm: nn.Module) -> float:
    return float(getattr(norm, "eps", 1e-5))


def head_projection(layout: Layout, layer: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (D, H·d_head), b (D,)) on the CPU: the affine map from the captured heads of ``layer`` to
    its residual term, before the attention layer scale (which :func:`build_readout` folds in)."""
    lin = layout.attn_out[layer]
    norm = layout.head_norm[layer] if layout.head_norm else None
    if norm is None:
        w = lin.weight.detach().to("cpu", dtype)
        b = lin.bias.detach().to("cpu", dtype) if lin.bias is not None else torch.zeros(w.shape[0], dtype=dtype)
        return w, b
    f64 = dict(dtype=torch.float64, device="cpu")
    w_o = lin.weight.detach().to(**f64)
    b_o = lin.bias.detach().to(**f64) if lin.bias is not None else torch.zeros(w_o.shape[0], **f64)
    width = w_o.shape[1]
    gamma = norm.weight.detach().to(**f64) if getattr(norm, "weight", None) is not None else torch.ones(width, **f64)
    beta = norm.bias.detach().to(**f64) if getattr(norm, "bias", None) is not None else torch.zeros(width, **f64)
    wg = w_o * gamma[None, :]
    w = wg - wg.mean(dim=1, keepdim=True)  # W_o·diag(γ)·(I − 11ᵀ/width): the norm's centring
    return w.to(dtype), (w_o @ beta + b_o).to(dtype)


def build_readout(layout: Layout, convention: str = "paper") -> Readout:
    """Per-unit readout (float32) of a layout under a convention; see the module docstring."""
    if convention not in CONVENTIONS:
        raise ResiDualError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    f64 = dict(dtype=torch.float64, device="cpu")
    L, H, D, dh, d_out = layout.n_layers, layout.n_heads, layout.d_model, layout.d_head, layout.d_out
    ln = layout.final_norm
    gamma = ln.weight.detach().to(**f64) if getattr(ln, "weight", None) is not None else torch.ones(D, **f64)
    beta = ln.bias.detach().to(**f64) if getattr(ln, "bias", None) is not None else torch.zeros(D, **f64)
    P = layout.proj_weight.detach().to(**f64) if layout.proj_weight is not None else torch.eye(D, **f64)
    b_p = layout.proj_bias.detach().to(**f64) if layout.proj_bias is not None else torch.zeros(d_out, **f64)
    G = P * gamma[None, :]  # (d_out, D)
    Gc = G - G.mean(dim=1, keepdim=True) if convention == "centred" else G  # G·(I − 11ᵀ/D)
    const_total = P @ beta + b_p  # (d_out,)
    mean_dir = G.sum(dim=1)  # G·1: how the LayerNorm mean enters the output
    s_b, s_h = block_share(L), head_share(L, H)

    head_weight = torch.empty(L, H, d_out, dh, **f64)
    head_bias = torch.empty(L, d_out, **f64)
    for layer in range(L):
        w_o, b_o = head_projection(layout, layer)  # (D, H·dh), (D,)
        scale = layout.attn_scale[layer]
        if scale is not None:
            w_o = scale.detach().to(**f64)[:, None] * w_o
            b_o = scale.detach().to(**f64) * b_o
        # (d_out, H·dh) -> (H, d_out, dh): column block h belongs to head h
        head_weight[layer] = (Gc @ w_o).view(d_out, H, dh).permute(1, 0, 2)
        head_bias[layer] = Gc @ b_o / H

    comp_units = Composition("", "", L, H, D, dh, d_out).units
    U = len(comp_units)
    inv_sigma = torch.zeros(U, d_out, **f64)
    mu_over_sigma = torch.zeros(U, d_out, **f64)
    const = torch.empty(U, d_out, **f64)
    for i, u in enumerate(comp_units):
        share = s_h if u.kind == "head" else s_b
        const[i] = share * const_total
        if convention == "paper":
            mu_over_sigma[i] = -share * mean_dir
        if u.kind == "head":
            inv_sigma[i] = head_bias[u.layer]
    return Readout(Gc, head_weight, inv_sigma, mu_over_sigma, const).to(torch.float32)
