"""Exact tracing of attention-pooled towers (SigLIP, SigLIP 2 FixRes): docs/DESIGN.md §11.

There is no CLS token. After the last block every token goes through the final LayerNorm, then a
multi-head attention probe (one learned query, J heads of width d_j) reads all tokens, and a pooling
MLP adds its own residual: ``p = y + MLP(LN(y))`` with

    y = W_O · concat_j Σ_t b_{jt} (W_{V,j} (γ ⊙ (r_t − μ_t)/σ_t + β) + b_{V,j}) + b_O.

Given the attention weights b (taken from the library's own forward) and each token's μ_t, σ_t,
this is linear in the tokens, and ``r_t = Σ_u c_{u,t}``. With ``w_{jt} = b_{jt}/σ_t`` and the
weighted sums ``a_{u,j} = Σ_t w_{jt} c_{u,t}``, ``m_j = Σ_t w_{jt} μ_t``:

* ``paper``: ``y_u = W_O · concat_j V_j (a_{u,j} − s_u m_j 1) + s_u K``;
* ``centred``: ``y_u = W_O · concat_j V_j (I − 11ᵀ/D) a_{u,j} + s_u K``;

where ``V_j = W_{V,j} diag(γ)``, ``K = W_O (W_V β + b_V) + b_O`` (Σ_t b_{jt} = 1) and s_u the
paper's shares (they sum to one over the residual units). Heads enter as ``c_{(l,h),t} = W_o[:, h]
z_{l,h,t} + b_o/H``, so only ``Σ_t w_{jt} z_{l,h,t}`` (d_head wide) is formed and ``V_j W_o[:, h]``
is folded once per layer. The pooling MLP's term is the ``pool`` unit (nonlinear, not split).
``Σ_u y_u + pool = p`` exactly; the units are stored as these pooled contributions (the per-token
σ_t leaves no per-sample affine map to store instead: docs/STORE.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator

import torch
from torch import nn

from resi_dual.core.encodings import UnitEncodings, relative_error
from resi_dual.core.units import block_share, head_share
from resi_dual.errors import ResiDualError
from resi_dual.models.tracing.base import TracedModel, _first_tensor


@dataclass
class PoolHead:
    """The attention-pooling head of a tower.

    Attributes:
        mlp: the pooling MLP, whose output is added to the probe's output (the ``pool`` unit).
        n_heads: the probe's heads J.
        value: () -> (W_V (D, D), b_V (D,) or None), the probe's value projection.
        out: the probe's output projection W_O (nn.Linear).
        attention: the probe's ``nn.MultiheadAttention``, whose per-head weights are read from the
            library's own call; or None, and then ``weights`` computes them.
        module: (with ``weights``) the head module whose first input is the final-LayerNorm tokens.
        weights: (with ``module``) those tokens (n, T, D) -> the probe's attention weights (n, J, T).
    """

    mlp: nn.Module
    n_heads: int
    value: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    out: nn.Linear
    attention: nn.MultiheadAttention | None = None
    module: nn.Module | None = None
    weights: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class _Maps:
    """Float64 maps of the pooled readout (module docstring), built once from the weights."""

    value: torch.Tensor  # (J, d_j, D): V_j, centred on the right under ``centred``
    value_sum: torch.Tensor  # (J, d_j): V_j 1 (the μ direction; zero under ``centred``)
    heads: list[torch.Tensor]  # per layer (J, H, d_j, d_head): V_j W_o[:, h] (with layer scale)
    head_bias: list[torch.Tensor]  # per layer (J, d_j): V_j b_o / H
    out: torch.Tensor  # (d_out, J·d_j): P·W_O (P the final projection, identity without one)
    const: torch.Tensor  # (d_out,): P·K + b_P
    proj: torch.Tensor | None  # (d_out, D) P, applied to the pool unit too


def _tokens(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """(n, T, D) detached copy of a block-level activation."""
    return (x if batch_first else x.transpose(0, 1)).detach().clone()


class PooledTracedModel(TracedModel):
    """A :class:`TracedModel` whose output is an attention-pooled embedding (``geometry = "pooled"``).

    Families implement ``_layout`` (blocks, final LayerNorm; no projection), ``_pool_head`` and
    ``_forward`` (the library's pooled embedding); units are stored as pooled contributions."""

    geometry = "pooled"

    def _pool_head(self) -> PoolHead:
        raise NotImplementedError

    @cached_property
    def _maps(self) -> _Maps:
        lay, head = self.layout, self._pool_head()
        if any(n is not None for n in lay.head_norm) or any(s is not None for s in lay.mlp_scale):
            # a LayerNorm over the heads is affine only given each token's own σ: not folded here
            raise ResiDualError(f"{self.spec!r}: an attention-pooled tower with a LayerNorm over the heads or an MLP "
                                "layer scale is not supported")
        f64 = dict(dtype=torch.float64, device="cpu")
        D, J, H, dh = lay.d_model, head.n_heads, lay.n_heads, lay.d_head
        dj = D // J
        ln = lay.final_norm
        gamma = ln.weight.detach().to(**f64) if getattr(ln, "weight", None) is not None else torch.ones(D, **f64)
        beta = ln.bias.detach().to(**f64) if getattr(ln, "bias", None) is not None else torch.zeros(D, **f64)
        w_v, b_v = head.value()
        w_v = w_v.detach().to(**f64)
        b_v = b_v.detach().to(**f64) if b_v is not None else torch.zeros(D, **f64)
        w_out = head.out.weight.detach().to(**f64)
        b_out = head.out.bias.detach().to(**f64) if head.out.bias is not None else torch.zeros(D, **f64)
        const = w_out @ (w_v @ beta + b_v) + b_out
        proj = None
        if lay.proj_weight is not None:
            proj = lay.proj_weight.detach().to(**f64)
            b_p = lay.proj_bias.detach().to(**f64) if lay.proj_bias is not None else 0.0
            w_out, const = proj @ w_out, proj @ const + b_p
        value = w_v * gamma[None, :]
        if self.convention == "centred":
            value = value - value.mean(dim=1, keepdim=True)  # V·(I − 11ᵀ/D)
        value_sum = torch.zeros(D, **f64) if self.convention == "centred" else value.sum(dim=1)
        heads, head_bias = [], []
        for layer in range(lay.n_layers):
            w_o = lay.attn_out[layer].weight.detach().to(**f64)  # (D, H·dh)
            b = lay.attn_out[layer].bias
            b_o = b.detach().to(**f64) if b is not None else torch.zeros(D, **f64)
            if lay.attn_scale[layer] is not None:
                s = lay.attn_scale[layer].detach().to(**f64)
                w_o, b_o = s[:, None] * w_o, s * b_o
            heads.append((value @ w_o).view(J, dj, H, dh).permute(0, 2, 1, 3).contiguous())
            head_bias.append((value @ b_o / H).view(J, dj))
        return _Maps(value.view(J, dj, D), value_sum.view(J, dj), heads, head_bias, w_out, const, proj)

    @contextmanager
    def capture_tokens(self) -> Iterator[dict]:
        """Hooks that record every token of every residual term, the final residual, the probe's
        per-head attention weights and the pooling MLP's output; all removed on exit."""
        lay, head = self.layout, self._pool_head()
        bf = lay.batch_first
        st: dict = {"emb": None, "z": [None] * lay.n_layers, "mlp": [None] * lay.n_layers, "resid": None,
                    "probe": None, "pool": None}

        def put(key, layer=None):
            def hook(_mod, args, output=None):
                x = (output[0] if isinstance(output, tuple) else output) if output is not None else args[0]
                x = x.detach().clone() if key == "z" else _tokens(x, bf)
                if layer is None:
                    if key != "resid" or st[key] is None:
                        st[key] = x
                else:
                    st[key][layer] = x

            return hook

        def emb_hook(_mod, args, kwargs):
            st["emb"] = _tokens(_first_tensor(args, kwargs), bf)

        def weights_pre(_mod, args, kwargs):
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

        def weights_hook(_mod, _args, output):
            st["probe"] = output[1].detach().clone()  # (n, J, 1, T)

        def tokens_hook(_mod, args, kwargs):
            st["probe"] = head.weights(_first_tensor(args, kwargs)).detach()[:, :, None, :]  # (n, J, 1, T)

        handles = [lay.blocks[0].register_forward_pre_hook(emb_hook, with_kwargs=True)]
        try:
            for layer in range(lay.n_layers):
                handles.append(lay.attn_out[layer].register_forward_pre_hook(lambda m, a, layer=layer: put("z", layer)(m, a)))
                handles.append(lay.mlp_out[layer].register_forward_hook(put("mlp", layer)))
            handles.append(lay.final_norm.register_forward_pre_hook(lambda m, a: put("resid")(m, a)))
            if head.attention is not None:
                handles.append(head.attention.register_forward_pre_hook(weights_pre, with_kwargs=True))
                handles.append(head.attention.register_forward_hook(weights_hook))
            else:
                handles.append(head.module.register_forward_pre_hook(tokens_hook, with_kwargs=True))
            handles.append(head.mlp.register_forward_hook(lambda m, a, o: put("pool")(m, a, o)))
            yield st
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def trace(self, pixels: torch.Tensor, check: bool = True) -> UnitEncodings:
        """Pooled unit encodings of a preprocessed batch: dense (n, 2+L, d_out) = emb, MLPs, pool;
        heads (n, L, H, d_out); μ = 0, σ = 1 (the identity readout). ``check`` verifies Σ_u y_u = p."""
        enc = self.capture_pooled(pixels)[3]
        if check:
            err = float(relative_error(self.summed_contributions(enc), enc.output).max())
            if not err <= self.tolerance:
                raise ResiDualError(f"decomposition of {self.spec} is off: relative error {err:.2e} in output "
                                    f"space (tolerance {self.tolerance:.0e})")
        return enc

    @torch.no_grad()
    def capture_pooled(self, pixels: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor, UnitEncodings]:
        """One hooked forward of a preprocessed batch: (the filled :meth:`capture_tokens` store, the pooled
        units' dense (n, 2+L, d_out) and heads (n, L, H, d_out) as computed, and their float32
        :class:`UnitEncodings`, unchecked). Raises if a hook never fired."""
        pixels = self.check_pixels(pixels)
        with self.capture_tokens() as st:
            output = self._forward(pixels).float().cpu()
        missing = [k for k in ("emb", "resid", "probe", "pool") if st[k] is None]
        missing += [f"L{i} attention output" for i, v in enumerate(st["z"]) if v is None]
        missing += [f"L{i} MLP" for i, v in enumerate(st["mlp"]) if v is None]
        if missing:
            raise ResiDualError(f"{self.family} tracer: hooks never fired for {', '.join(missing[:4])} "
                                "(unsupported library version or model variant)")
        dense, heads = self._pooled_units(st)
        n = output.shape[0]
        enc = UnitEncodings(self.composition, self.readout, dense.float(), heads.float(), torch.zeros(n),
                            torch.ones(n), output)
        return st, dense, heads, enc

    def _pooled_units(self, st: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(dense (n, 2+L, d_out), heads (n, L, H, d_out)) float64 from the captured tokens."""
        lay, maps = self.layout, self._maps
        L, H = lay.n_layers, lay.n_heads
        J, dj = maps.head_bias[0].shape if L else maps.value_sum.shape
        resid = st["resid"].double().cpu()
        eps = float(getattr(lay.final_norm, "eps", 1e-5))
        mu = resid.mean(dim=-1)
        sigma = (resid.var(dim=-1, unbiased=False) + eps).sqrt()  # (n, T)
        w = st["probe"].double().cpu()[:, :, 0, :] / sigma[:, None, :]  # (n, J, T)
        s_sum, m = w.sum(-1), (w * mu[:, None, :]).sum(-1)  # (n, J)
        paper = self.convention == "paper"

        def finish(v: torch.Tensor, share: float) -> torch.Tensor:
            """(n, …, J, d_j) probe-value terms -> (n, …, d_out) with the unit's μ and K shares."""
            if paper:
                v = v - share * m.view(m.shape[0], *([1] * (v.dim() - 3)), J, 1) * maps.value_sum
            return v.flatten(-2) @ maps.out.T + share * maps.const

        def pooled(x: torch.Tensor) -> torch.Tensor:  # (n, T, D) tokens -> (n, J, d_j)
            a = torch.bmm(w, x.double().cpu())  # (n, J, D)
            return torch.einsum("njd,jed->nje", a, maps.value)

        s_b, s_h = block_share(L), head_share(L, H)
        dense = [finish(pooled(st["emb"]), s_b)]
        heads = []
        for layer in range(L):
            z = torch.bmm(w, st["z"][layer].double().cpu()).view(w.shape[0], J, H, -1)  # (n, J, H, d_head)
            v = torch.einsum("njhk,jhek->nhje", z, maps.heads[layer]) + s_sum[:, None, :, None] * maps.head_bias[layer]
            heads.append(finish(v, s_h))
            dense.append(finish(pooled(st["mlp"][layer]), s_b))
        pool = st["pool"].double().cpu().reshape(w.shape[0], -1, lay.d_model)[:, 0]
        dense.append(pool if maps.proj is None else pool @ maps.proj.T)
        return torch.stack(dense, dim=1), torch.stack(heads, dim=1)

    @torch.no_grad()
    def summed_contributions(self, enc: UnitEncodings) -> torch.Tensor:
        """(n, d_out) Σ_u c_u in float64 (the pooled units are output-space values already)."""
        return enc.dense.double().sum(dim=1) + enc.heads.double().sum(dim=(1, 2))
