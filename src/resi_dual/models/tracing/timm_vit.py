"""Tracer for timm ViT towers inside open_clip (``TimmModel``): timm ``VisionTransformer`` and EVA / EVA-02 (``Eva``).

Blocks are pre-LN:

* timm ``Block``: ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))`` with timm's ``Attention``;
* EVA ``EvaBlock``: ``x + γ₁ ⊙ attn(norm1(x), rope)``, ``x + γ₂ ⊙ mlp(norm2(x))`` with ``EvaAttention``
  (fused or separate q/k/v, rotary embeddings on the patch tokens' q and k), and an MLP or a
  SwiGLU (with or without its inner LayerNorm) — all of it inside the MLP unit.

Rotary embeddings and q/k norms change only the attention weights: each head's output at the CLS
token is still its own weighted sum of values, and the heads meet only in ``proj``. EVA-CLIP's
``scale_attn_inner`` (timm's ``scale_norm``) puts a LayerNorm over the concatenated heads before
``proj``; given the CLS token's own σ it is affine, so it is folded exactly (``Layout.head_norm``).
γ₁ is folded into the head readout; γ₂ multiplies the captured MLP output (``Layout.mlp_scale``).

Output: the post-LN CLS token (``norm``, or ``fc_norm`` after token pooling), then the trunk's
``head`` (a Linear with bias) and open_clip's own ``head`` (an optional Linear), composed into one
projection. Refused, with the reason: post-norm or parallel blocks, other attention modules, gated
attention, pooling other than the class token (average, attention pooling), an MLP projection
head, two final LayerNorms, and trunks that are not ViTs (ConvNeXt and other CNNs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resi_dual.errors import ResiDualError
from resi_dual.models.tracing import openclip
from resi_dual.models.tracing.base import TracedModel
from resi_dual.models.tracing.layout import AttnSpec, Layout, packed_qkv


def is_timm_tower(model, pooled: bool = False) -> bool:
    """Whether an open_clip model's image tower is timm's, read at a token (``pooled=False``, this family)
    or through a MAP attention probe (``pooled=True``, the open_clip-siglip family)."""
    from open_clip.timm_model import TimmModel

    return isinstance(model.visual, TimmModel) and (getattr(model.visual.trunk, "attn_pool", None) is not None) == pooled


def _projection(name: str, visual) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(W (d_out, D), b (d_out,)) float64 of the trunk's ``head`` followed by open_clip's ``head``, or (None, None)."""
    w = b = None
    for mod in [visual.trunk.head, *visual.head]:
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            continue
        if not isinstance(mod, nn.Linear):
            raise ResiDualError(f"{name!r}: the image head has a {type(mod).__name__}, which is not linear")
        mw = mod.weight.detach().double()
        mb = mod.bias.detach().double() if mod.bias is not None else torch.zeros(mw.shape[0], dtype=torch.float64, device=mw.device)
        w, b = (mw, mb) if w is None else (mw @ w, mw @ b + mb)
    return w, b


def _final_norm(name: str, trunk) -> nn.Module:
    pool = getattr(trunk, "global_pool", None)
    if getattr(trunk, "attn_pool", None) is not None or pool == "map":
        raise ResiDualError(f"{name!r} pools with an attention probe (MAP head), which is not a sum over residual units")
    if pool != "token":
        raise ResiDualError(f"{name!r} pools with {pool!r}; only class-token pooling ('token') is traceable")
    norm, fc_norm = trunk.norm, trunk.fc_norm
    if not isinstance(norm, nn.Identity) and not isinstance(fc_norm, nn.Identity):
        raise ResiDualError(f"{name!r} applies two LayerNorms (norm and fc_norm) to the class token; only one is traceable")
    final = fc_norm if isinstance(norm, nn.Identity) else norm
    if not isinstance(final, nn.LayerNorm):
        raise ResiDualError(f"{name!r}: the final norm is a {type(final).__name__}, not a LayerNorm")
    return final


def _block_terms(name: str, i: int, block) -> tuple:
    """(attention, attention layer scale, MLP-term module, MLP layer scale) of one block."""
    from timm.layers import Attention, LayerScale
    from timm.models.eva import EvaAttention, EvaBlock
    from timm.models.vision_transformer import Block

    if type(block) is Block:
        attn, want = block.attn, Attention
        ls1 = block.ls1.gamma if isinstance(block.ls1, LayerScale) else None
        terms = (ls1, block.ls2, None)  # ls2 (Identity or LayerScale) outputs the scaled MLP term
    elif type(block) is EvaBlock:
        attn, want = block.attn, EvaAttention
        terms = (block.gamma_1, block.mlp, block.gamma_2)
    else:
        raise ResiDualError(
            f"{name!r}: block {i} is a timm {type(block).__name__}; only pre-LN Block and EvaBlock are sums of residual units"
        )
    if type(attn) is not want:
        raise ResiDualError(f"{name!r}: block {i} has an unknown attention module {type(attn).__name__}")
    if getattr(attn, "gate", None) is not None:
        raise ResiDualError(f"{name!r}: block {i} gates its heads with a token-dependent sigmoid, which is not linear")
    if not isinstance(attn.norm, (nn.Identity, nn.LayerNorm)):
        raise ResiDualError(f"{name!r}: block {i} normalises its heads with a {type(attn.norm).__name__}, not a LayerNorm")
    return (attn, *terms)


def attn_spec(attn: nn.Module) -> AttnSpec:
    """The :class:`AttnSpec` of a timm ``Attention`` or ``EvaAttention``: q/k norms, then rotary embeddings
    on the tokens after the prefix (the CLS query is never rotated), as their ``forward`` computes them."""
    H, dh = attn.num_heads, attn.head_dim
    if getattr(attn, "qkv", None) is None:
        qkv = packed_qkv(attn.q_proj, attn.k_proj, attn.v_proj)
    elif getattr(attn, "q_bias", None) is not None:  # EVA's fused qkv with q and v biases (k's is zero)
        qkv = lambda: (attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))  # noqa: E731
    else:
        qkv = lambda: (attn.qkv.weight, attn.qkv.bias)  # noqa: E731

    def cls_logits(x: torch.Tensor, kwargs: dict) -> torch.Tensor:
        from timm.layers import apply_rot_embed_cat

        w, b = qkv()
        w, b = w.float(), (None if b is None else b.float())
        n, T, _ = x.shape
        q0 = attn.q_norm(F.linear(x[:, 0], w[: H * dh], None if b is None else b[: H * dh]).view(n, H, dh))
        k = F.linear(x, w[H * dh: 2 * H * dh], None if b is None else b[H * dh: 2 * H * dh])
        k = attn.k_norm(k.view(n, T, H, dh).transpose(1, 2))
        rope = kwargs.get("rope")
        if rope is not None:
            npt = attn.num_prefix_tokens
            rot = apply_rot_embed_cat(k[:, :, npt:], rope, half=getattr(attn, "rotate_half", False))
            k = torch.cat([k[:, :, :npt], rot.type_as(k)], dim=2)
        return torch.einsum("nhd,nhtd->nht", q0, k) * attn.scale

    return AttnSpec(attn, qkv, attn.scale, cls_logits=cls_logits)


def blocks_layout(name: str, trunk, visual, final_norm: nn.Module) -> Layout:
    """The :class:`Layout` of a timm trunk's blocks, read through ``final_norm`` and the composed heads."""
    blocks = list(trunk.blocks)
    terms = [_block_terms(name, i, b) for i, b in enumerate(blocks)]
    proj_w, proj_b = _projection(name, visual)
    return Layout(
        blocks=blocks,
        attn_out=[t[0].proj for t in terms],
        mlp_out=[t[2] for t in terms],
        attn_scale=[t[1] for t in terms],
        final_norm=final_norm,
        proj_weight=proj_w,
        proj_bias=proj_b,
        n_heads=terms[0][0].num_heads,
        head_norm=[None if isinstance(t[0].norm, nn.Identity) else t[0].norm for t in terms],
        mlp_scale=[t[3] for t in terms],
        attention=[attn_spec(t[0]) for t in terms],
    )


@openclip.register_open_clip_family(
    "open_clip-timm", is_timm_tower,
    short_names={"eva02_b": "open_clip:EVA02-B-16@merged2b_s8b_b131k", "eva02_l": "open_clip:EVA02-L-14@merged2b_s4b_b131k"},
    summary="open_clip towers built on timm: EVA-02 / EVA-01 CLIP (rotary, SwiGLU, inner LayerNorm) and timm ViTs")
class TimmTraced(openclip.OpenClipImage, TracedModel):
    def _layout(self) -> Layout:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer

        trunk, name = self._visual.trunk, self.spec
        if not isinstance(trunk, (VisionTransformer, Eva)):
            raise ResiDualError(
                f"{name!r} has a timm {type(trunk).__name__} trunk, not a ViT (no residual units to trace; "
                "traceable timm trunks: VisionTransformer, Eva)"
            )
        return blocks_layout(name, trunk, self._visual, _final_norm(name, trunk))

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return dict(self._visual.state_dict())
