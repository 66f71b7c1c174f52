"""Exact spatial decomposition of the heads along given directions (docs/DESIGN.md §10).

At layer l, head h's output at the CLS token is ``z_h = s_h Σ_t a_t (W_V,h x̂_t + b_V,h)`` (``a`` the
CLS row of its attention, ``s_h`` an optional per-head scale), and its contribution in output space
is ``c_h = (A_h z_h + a_h)/σ + m_h μ/σ + k_h`` (``core.encodings``). So along a direction u,

    m_h(t) = a_t ⟨A_h s_h (W_V,h x̂_t + b_V,h), u⟩ / σ            for every token t,
    m_h(0) += ⟨a_h/σ + m_h μ/σ + k_h, u⟩                           (bias, LayerNorm-μ and β/b_P shares)

and ``Σ_t m_h(t) = ⟨c_h, u⟩`` exactly. The bias, μ and constant shares of the tracer's convention
are placed on the CLS token (position 0). The directions are pulled back through the readout and
W_V *before* touching the tokens (``W_V,hᵀ A_hᵀ u``, D wide), so a block costs one (T × D) · (D × H·K)
product and (n, heads, T, d_out) is never formed. The embedding and MLP units are not token sums (the
MLP is nonlinear): they are the non-spatial ``remainder``, so ``Σ_heads Σ_t m + remainder`` is the
model's own score ``⟨embedding, u⟩``.

The attention row is recomputed from x̂ and the block's q/k weights (the family's
:class:`~resi_dual.models.tracing.layout.AttnSpec`); ``check`` verifies it against the tracer's own
captured head outputs, so a family whose attention is computed differently fails loudly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from resi_dual.core.encodings import UnitEncodings, relative_error
from resi_dual.errors import ResiDualError
from resi_dual.models.tracing.base import TracedModel, _first_tensor
from resi_dual.models.tracing.layout import norm_eps


@dataclass
class SpatialMaps:
    """Token maps of every head along K directions, for a batch of n images.

    Attributes:
        heads: (n, K, L, H, T) float32; ``heads[..., t]`` is m_h(t) (shares on t = 0).
        cls: (n, K, L, H) each head's CLS contribution along its direction, from the tracer's readout.
        remainder: (n, K) embedding + MLP contributions along each direction (None for per-head directions).
        score: (n, K) ``⟨model embedding, u⟩`` (None for per-head directions).
        grid: (rows, cols) of the patch grid; prefix: tokens before it (CLS and any registers).
        encodings: the unit encodings of the same forward pass.
    """

    heads: torch.Tensor
    cls: torch.Tensor
    remainder: torch.Tensor | None
    score: torch.Tensor | None
    grid: tuple[int, int]
    prefix: int
    encodings: UnitEncodings

    def patches(self) -> torch.Tensor:
        """(n, K, L, H, rows, cols) the patch-token part of the maps (CLS and registers dropped)."""
        n, K, L, H, _ = self.heads.shape
        return self.heads[..., self.prefix:].reshape(n, K, L, H, *self.grid)

    def image_map(self, heads: torch.Tensor | None = None) -> torch.Tensor:
        """(n, K, rows, cols) Σ over heads of the patch maps; ``heads`` an optional (L, H) bool mask."""
        p = self.patches()
        if heads is not None:
            p = p * heads.to(p.dtype)[None, None, :, :, None, None]
        return p.sum(dim=(2, 3))


def _pulled_back(model: TracedModel, dirs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer ``(w, veff, beff)``: w (H, K, d_head) = A_hᵀ u (readout side), veff (H·K, D) =
    s_h W_V,hᵀ w and beff (H, K) = s_h b_V,h · w, all float64 on the CPU."""
    lay = model.layout
    H, dh, D = lay.n_heads, lay.d_head, lay.d_model
    out = []
    for layer, spec in enumerate(lay.attention):
        a = model.readout.head_weight[layer].double()  # (H, d_out, dh)
        u = dirs if dirs.dim() == 2 else dirs[layer]  # (K, d_out) or (H, K, d_out)
        w = torch.einsum("hod,ko->hkd", a, u) if u.dim() == 2 else torch.einsum("hod,hko->hkd", a, u)
        weight, bias = spec.qkv()
        wv = weight.detach()[2 * H * dh:].double().cpu().view(H, dh, D)
        bv = torch.zeros(H, dh, dtype=torch.float64) if bias is None else bias.detach()[2 * H * dh:].double().cpu().view(H, dh)
        hs = spec.head_scale() if spec.head_scale is not None else None
        ws = w if hs is None else w * hs.detach().double().cpu()[:, None, None]
        veff = torch.einsum("hkd,hde->hke", ws, wv).reshape(-1, D)
        out.append((w, veff, torch.einsum("hkd,hd->hk", ws, bv)))
    return out


@contextmanager
def _attention_hooks(model: TracedModel, pulled: list, store: dict) -> Iterator[None]:
    """Pre-hooks on every attention module: the CLS attention row, the raw maps (n, K, H, T)
    before 1/σ, and the head outputs rebuilt from them (n, H, d_head) for the check."""
    lay = model.layout
    H, dh, D = lay.n_heads, lay.d_head, lay.d_model
    handles = []

    def hook(layer):
        spec = lay.attention[layer]
        _w, veff, beff = pulled[layer]

        def fn(_mod, args, kwargs):
            x = _first_tensor(args, kwargs).detach()
            x = (x if lay.batch_first else x.transpose(0, 1)).float()  # (n, T, D)
            n, T, _ = x.shape
            weight, bias = (t.detach().float() if t is not None else None for t in spec.qkv())
            b = torch.zeros(3 * H * dh, device=x.device) if bias is None else bias
            wq, wk, wv = weight.split(H * dh)
            q0 = F.linear(x[:, 0], wq, b[: H * dh]).view(n, H, dh)
            if spec.cls_logits is not None:
                logits = spec.cls_logits(x, kwargs).float()
            elif spec.logits is None:
                # q0·(W_K x_t + b_K): the b_K term is constant over t and cancels in the softmax
                qk = torch.einsum("nhd,hde->nhe", q0, wk.view(H, dh, D))
                logits = torch.einsum("ntd,nhd->nht", x, qk) * spec.scale
            else:
                k = F.linear(x, wk, b[H * dh: 2 * H * dh]).view(n, T, H, dh).transpose(1, 2)
                logits = spec.logits(q0, k).float()
            att = logits.softmax(dim=-1)  # (n, H, T)
            K = beff.shape[1]
            proj = (x @ veff.to(x.device, torch.float32).T).view(n, T, H, K) + beff.to(x.device, torch.float32)
            maps = proj.permute(0, 3, 2, 1) * att[:, None]  # (n, K, H, T)
            xbar = torch.einsum("nht,ntd->nhd", att, x)
            z = torch.einsum("nhd,hed->nhe", xbar, wv.view(H, dh, D)) + b[2 * H * dh:].view(H, dh)
            hs = spec.head_scale() if spec.head_scale is not None else None
            z = z if hs is None else z * hs.detach().float()[:, None]
            norm = lay.head_norm[layer] if lay.head_norm else None
            if norm is not None:  # the LayerNorm over the heads is affine given the CLS token's own σ (tracing/base.py)
                sz = (z.flatten(1).double().var(dim=-1, unbiased=False) + norm_eps(norm)).sqrt().float()
                z, maps = z / sz[:, None, None], maps / sz[:, None, None, None]
            store["maps"][layer] = maps.cpu()
            store["z_rebuilt"][layer] = z.cpu()

        return fn

    try:
        for layer, spec in enumerate(lay.attention):
            handles.append(spec.module.register_forward_pre_hook(hook(layer), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _as_directions(model: TracedModel, directions) -> torch.Tensor:
    c = model.composition
    dirs = torch.as_tensor(directions).detach().double().cpu()
    if dirs.dim() == 1:
        dirs = dirs[None]
    ok = dirs.dim() == 2 or (dirs.dim() == 4 and tuple(dirs.shape[:2]) == (c.n_layers, c.n_heads))
    if not ok or dirs.shape[-1] != c.d_out or dirs.shape[-2] == 0:
        raise ResiDualError(
            f"directions have shape {tuple(dirs.shape)}; {model.spec} needs (K, {c.d_out}) shared by all heads "
            f"or ({c.n_layers}, {c.n_heads}, K, {c.d_out}) per head"
        )
    return dirs


@torch.no_grad()
def spatial_maps(model: TracedModel, pixels: torch.Tensor, directions, check: bool = True) -> SpatialMaps:
    """Token maps of every head of ``model`` along ``directions`` for a pixel batch (n, 3, H, W).

    Args:
        directions: (K, d_out) shared by all heads (text embeddings, class rows), or (L, H, K, d_out)
            one set per head (e.g. each head's own principal components).
        check: verify the rebuilt attention against the captured head outputs, Σ_t maps against the
            heads' CLS contributions and (shared directions) heads + remainder against the model's
            score, all within ``model.tolerance``; raises ResiDualError otherwise.
    Returns:
        :class:`SpatialMaps` (maps (n, K, L, H, T), never (n, heads, T, d_out)).
    """
    lay = model.layout
    if model.composition.pooled:
        from resi_dual.models.spatial_pooled import pooled_spatial_maps

        return pooled_spatial_maps(model, pixels, _as_directions(model, directions), check)
    if len(lay.attention) != lay.n_layers:
        raise ResiDualError(f"{model.family} tracer has no spatial decomposition (no attention layout)")
    dirs = _as_directions(model, directions)
    pixels = model.check_pixels(pixels)
    pulled = _pulled_back(model, dirs)
    sp = {"maps": [None] * lay.n_layers, "z_rebuilt": [None] * lay.n_layers}
    with model.capture() as store, _attention_hooks(model, pulled, sp):
        output = model._forward(pixels)
    if any(m is None for m in sp["maps"]):
        raise ResiDualError(f"{model.family} tracer: attention hooks never fired (unsupported model variant)")
    enc = model.encodings_from(store, output, check)
    sigma, mu = enc.sigma.double(), enc.mu.double()
    maps = torch.stack(sp["maps"], dim=2).double() / sigma[:, None, None, None, None]  # (n, K, L, H, T)
    shares, w = _head_shares(model, dirs, pulled)  # (3, K, L, H), (L, H, K, dh)
    maps[..., 0] += (shares[0] / sigma[:, None, None, None] + shares[1] * (mu / sigma)[:, None, None, None]
                     + shares[2])
    cls = torch.einsum("nlhd,lhkd->nklh", enc.heads.double(), w) / sigma[:, None, None, None]
    cls += shares[0] / sigma[:, None, None, None] + shares[1] * (mu / sigma)[:, None, None, None] + shares[2]
    remainder = score = None
    if dirs.dim() == 2:
        dense = [i for i, u in enumerate(enc.units) if u.kind != "head"]
        remainder = (enc.contributions(dense).double().sum(1) @ dirs.T)
        score = enc.output.double() @ dirs.T
    grid, prefix = patch_grid(model, pixels, maps.shape[-1])
    if check:
        _check(model, torch.stack(sp["z_rebuilt"], dim=1), enc, maps, cls, remainder, score)
    return SpatialMaps(maps.float(), cls.float(), None if remainder is None else remainder.float(),
                       None if score is None else score.float(), grid, prefix, enc)


def patch_grid(model: TracedModel, pixels: torch.Tensor, n_pos: int) -> tuple[tuple[int, int], int]:
    """((rows, cols) patch grid of ``pixels``, positions before it) for maps with ``n_pos`` positions:
    the CLS slot (or a pooled tower's shares slot) and any register tokens come first."""
    p = model.patch_size or 1
    grid = (pixels.shape[2] // p, pixels.shape[3] // p)
    prefix = n_pos - grid[0] * grid[1]
    if prefix < 1:
        raise ResiDualError(f"{model.spec}: {n_pos} map positions do not hold a {grid[0]}×{grid[1]} patch grid "
                            "after the CLS (or shares) slot")
    return grid, prefix


def _head_shares(model: TracedModel, dirs: torch.Tensor, pulled: list) -> tuple[torch.Tensor, torch.Tensor]:
    """((3, K, L, H) the heads' inv_sigma, mu_over_sigma and const rows along the directions,
    (L, H, K, d_head) the pulled-back directions)."""
    c, r = model.composition, model.readout
    L, H = c.n_layers, c.n_heads
    idx = torch.tensor([i for i, u in enumerate(c.units) if u.kind == "head"]).view(L, H)
    rows = torch.stack([r.inv_sigma, r.mu_over_sigma, r.const]).double()[:, idx]  # (3, L, H, d_out)
    if dirs.dim() == 2:
        shares = torch.einsum("slho,ko->sklh", rows, dirs)
    else:
        shares = torch.einsum("slho,lhko->sklh", rows, dirs)
    return shares, torch.stack([w for w, _, _ in pulled])


def map_sum_errors(maps, cls, remainder, score) -> tuple[float, float]:
    """(Σ_t maps vs the heads' pooled/CLS contributions, heads + remainder vs the model's score): the
    largest relative errors of the two sums every spatial decomposition must satisfy (0.0 for the second
    when there is no score, i.e. per-head directions)."""
    serr = float(relative_error(maps.sum(-1).flatten(2), cls.flatten(2)).max())
    terr = 0.0
    if score is not None:
        total = maps.sum(dim=(2, 3, 4)) + remainder
        terr = float(((total - score).abs() / (cls.abs().sum(dim=(2, 3)) + remainder.abs()).clamp_min(1e-30)).max())
    return serr, terr


def _check(model, z_rebuilt, enc, maps, cls, remainder, score) -> None:
    tol = model.tolerance
    z = enc.heads.double()
    zerr = float(relative_error(z_rebuilt.flatten(2), z.flatten(2)).max())
    serr, terr = map_sum_errors(maps, cls, remainder, score)
    if not (zerr <= tol and serr <= tol and terr <= tol):
        raise ResiDualError(
            f"spatial decomposition of {model.spec} is off: rebuilt heads {zerr:.2e}, Σ_t maps vs CLS {serr:.2e}, "
            f"heads + remainder vs score {terr:.2e} (tolerance {tol:.0e})"
        )


def head_mask(model: TracedModel, units: Sequence[str] | None) -> torch.Tensor | None:
    """(L, H) bool mask of the heads among ``units`` (labels like ``L3H5``; None: every head)."""
    if units is None:
        return None
    c = model.composition
    mask = torch.zeros(c.n_layers, c.n_heads, dtype=torch.bool)
    for label in units:
        u = c.units[c.index(label)]
        if u.kind != "head":
            raise ResiDualError(f"unit {label!r} is not a head; spatial maps exist for heads only")
        mask[u.layer, u.head] = True
    return mask


@torch.no_grad()
def text_maps(model: TracedModel, pixels: torch.Tensor, texts: Sequence[str], heads: torch.Tensor | None = None):
    """Zero-shot localisation (Gandelsman et al.): Σ over ``heads`` (an (L, H) mask, None: all) of the
    patch maps along each text's unit-norm embedding. Returns ((n, K, rows, cols) maps, SpatialMaps)."""
    from resi_dual.models.text import get_text_tower, has_text_tower

    if not has_text_tower(model):
        raise ResiDualError(f"model {model.spec} has no text tower, so there is no text embedding to locate; "
                            "use a model with a text tower (hf CLIP or SigLIP, open_clip incl. EVA-02 and SigLIP, "
                            "BLIP, demo)")
    emb = get_text_tower(model).encode(list(texts)).double()
    sm = spatial_maps(model, pixels, emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return sm.image_map(heads), sm
