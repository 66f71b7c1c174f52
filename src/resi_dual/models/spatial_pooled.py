"""Exact spatial maps of the heads of attention-pooled towers (SigLIP; docs/DESIGN.md §10–11).

The pooled readout (``tracing/pooled.py``) is linear in every token's residual stream given the probe's
attention b_{jt} and each token's final-LayerNorm statistics (μ_t, σ_t). Head (l, h) writes
``W_o[:, h] z_{l,h,t} + b_o/H`` into the stream of token t, and the probe reads that token with weight
``w_{jt} = b_{jt}/σ_t`` in its head j. So the head's pooled contribution along a direction u splits
exactly over the tokens the probe pools from:

    m_h(t) = Σ_j w_{jt} ⟨u, P W_O,j V_j (W_o[:, h] z_{l,h,t} + b_o/H − s_h μ_t 1)⟩     (μ term: ``paper`` only)
    m_h(∅) = s_h ⟨u, P K + b_P⟩                                                    (the constant share)

The map's token axis is therefore *where the probe reads the head's output* (a token's own stream), not
the source tokens of the head's own attention. The bias b_o/H and the LayerNorm-μ share are per token and
stay on their token; only the head's constant share (β, b_V, b_O and b_P, independent of the image) has no
token: it sits in a slot placed before the tokens (``SpatialMaps.prefix`` = 1 + any register tokens),
which ``patches()`` drops, as the CLS slot of the CLS families. The embedding, the MLPs and the pooling
MLP's ``pool`` unit (nonlinear in y) are the non-spatial remainder.
"""

from __future__ import annotations

import torch

from resi_dual.core.encodings import relative_error
from resi_dual.core.units import head_share
from resi_dual.errors import ResiDualError


def _pooled_head_maps(model, st: dict, dirs: torch.Tensor) -> torch.Tensor:
    """(n, K, L, H, 1 + T) float64 maps (slot 0: the constant shares) from a :meth:`capture_tokens` store."""
    lay, maps = model.layout, model._maps
    L, H, dh = lay.n_layers, lay.n_heads, lay.d_head
    J, dj = maps.value_sum.shape
    resid = st["resid"].double().cpu()
    eps = float(getattr(lay.final_norm, "eps", 1e-5))
    mu = resid.mean(dim=-1)
    sigma = (resid.var(dim=-1, unbiased=False) + eps).sqrt()  # (n, T)
    w = st["probe"].double().cpu()[:, :, 0, :] / sigma[:, None, :]  # (n, J, T)
    n, _, T = w.shape
    s_h = head_share(L, H)
    paper = model.convention == "paper"
    out = maps.out.view(-1, J, dj)  # (d_out, J, d_j)
    layers = []
    for layer in range(L):
        u = dirs if dirs.dim() == 2 else dirs[layer]  # (K, d_out) or (H, K, d_out)
        ou = torch.einsum("ojd,ko->kjd", out, u) if u.dim() == 2 else torch.einsum("ojd,hko->hkjd", out, u)
        ou = ou if u.dim() == 3 else ou[None].expand(H, *ou.shape)  # (H, K, J, d_j)
        g = torch.einsum("jhde,hkjd->hkje", maps.heads[layer], ou)  # (H, K, J, d_head): pulled back to z
        z = st["z"][layer].double().cpu().reshape(n, T, H, dh)
        m = torch.einsum("nthe,hkje,njt->nkht", z, g, w)  # (n, K, H, T)
        bias = torch.einsum("hkjd,jd->hkj", ou, maps.head_bias[layer])  # b_o/H through V_j, W_O,j
        m += torch.einsum("hkj,njt->nkht", bias, w)
        if paper:  # the head's share of the LayerNorm mean, read at each token with that token's μ_t
            mean = torch.einsum("hkjd,jd->hkj", ou, maps.value_sum)
            m -= s_h * torch.einsum("hkj,njt->nkht", mean, w * mu[:, None, :])
        const = s_h * (u @ maps.const)  # (K,) or (H, K)
        slot = const[None, :, None].expand(n, -1, H) if const.dim() == 1 else const.T[None].expand(n, -1, -1)
        layers.append(torch.cat([slot[..., None], m], dim=-1))
    return torch.stack(layers, dim=2)


@torch.no_grad()
def pooled_spatial_maps(model, pixels: torch.Tensor, dirs: torch.Tensor, check: bool = True):
    """:func:`resi_dual.models.spatial.spatial_maps` for a :class:`PooledTracedModel` (module docstring);
    ``dirs`` (K, d_out) or (L, H, K, d_out) float64."""
    from resi_dual.models.spatial import SpatialMaps, map_sum_errors, patch_grid

    pixels = model.check_pixels(pixels)
    st, dense, heads, enc = model.capture_pooled(pixels)
    maps = _pooled_head_maps(model, st, dirs)
    if dirs.dim() == 2:
        cls = torch.einsum("nlho,ko->nklh", heads, dirs)
        remainder, score = dense.sum(1) @ dirs.T, enc.output.double() @ dirs.T
    else:
        cls, remainder, score = torch.einsum("nlho,lhko->nklh", heads, dirs), None, None
    grid, prefix = patch_grid(model, pixels, maps.shape[-1])
    if check:
        serr, terr = map_sum_errors(maps, cls, remainder, score)
        err = float(relative_error(model.summed_contributions(enc), enc.output).max())
        if not (serr <= model.tolerance and terr <= model.tolerance and err <= model.tolerance):
            raise ResiDualError(f"spatial decomposition of {model.spec} is off: Σ_t maps vs pooled heads {serr:.2e}, "
                                f"heads + remainder vs score {terr:.2e}, units vs embedding {err:.2e} "
                                f"(tolerance {model.tolerance:.0e})")
    return SpatialMaps(maps.float(), cls.float(), None if remainder is None else remainder.float(),
                       None if score is None else score.float(), grid, prefix, enc)
