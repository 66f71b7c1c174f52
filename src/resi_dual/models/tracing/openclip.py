"""Tracer for open_clip ``VisionTransformer`` image towers (OpenAI and LAION CLIP weights).

Blocks are pre-LN: ``x + ls_1(attn(ln_1(x)))``, ``x + ls_2(mlp(ln_2(x)))`` after ``ln_pre``; the
output is ``ln_post(x)[:, 0] @ proj`` (``pool_type='tok'``).

Two attention implementations exist:

* ``ResidualAttentionBlock`` (PyPI open_clip 2.x/3.x) uses ``nn.MultiheadAttention``, which applies
  its ``out_proj`` *functionally*, so no module hook can see the per-head outputs. During capture the
  tracer installs, on each of those MHA **instances** only, an explicit forward that computes the
  same attention (``F.scaled_dot_product_attention`` on the packed ``in_proj``) and then calls
  ``out_proj`` as a module. The instance attribute is removed in ``finally``; torch is not patched.
  The cost equals the fused path's (the same matrix products), see ``bench/bench_tracing.py``.
* ``CustomResidualAttentionBlock`` with open_clip's own ``Attention`` has a plain ``out_proj``
  module; its input (after any per-head ``head_scale``) is hooked directly.

Refused, because they break the sum over units: attentional pooling (``attn_pool``, CoCa),
non-CLS pooling (``avg``/``none``), a LayerNorm mixing heads before ``out_proj`` (``ln_inner``,
``scale_attn_inner``) or after attention (``ln_attn``, ``scale_attn``), and non-ViT towers
(``ModifiedResNet``; timm towers are the ``open_clip-timm`` family, see ``timm_vit``).

This module also holds the ``open_clip:`` loader shared by every open_clip family: it builds the
model with open_clip's own factory and hands it to the first family that accepts its image tower.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resi_dual.errors import ResiDualError
from resi_dual.models import registry
from resi_dual.models.tracing.base import TracedModel
from resi_dual.models.tracing.layout import AttnSpec, Layout


def _mha_forward(mha: nn.MultiheadAttention):
    """An explicit self-attention forward for one ``nn.MultiheadAttention`` instance that calls
    ``mha.out_proj`` as a module (so its pre-hook sees the concatenated heads)."""
    H = mha.num_heads

    def forward(query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ResiDualError("open_clip tracer: cross-attention in the vision tower is not supported")
        if key_padding_mask is not None:
            raise ResiDualError("open_clip tracer: key padding masks are not supported in the vision tower")
        x = query if mha.batch_first else query.transpose(0, 1)  # (n, T, D)
        n, T, D = x.shape
        qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)  # (n, T, 3D)
        q, k, v = qkv.view(n, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # each (n, H, T, dh)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # nn.MultiheadAttention: True = masked out; SDPA: True = attend
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)  # (n, H, T, dh)
        o = o.transpose(1, 2).reshape(n, T, D)  # heads concatenated, as nn.MultiheadAttention does
        out = mha.out_proj(o)
        return (out if mha.batch_first else out.transpose(0, 1)), None

    return forward


def _attn_spec(attn: nn.Module) -> AttnSpec:
    """The :class:`AttnSpec` of an ``nn.MultiheadAttention`` or open_clip ``Attention`` (packed ``in_proj``)."""
    H = attn.num_heads
    dh = attn.in_proj_weight.shape[1] // H
    qkv = lambda: (attn.in_proj_weight, attn.in_proj_bias)  # noqa: E731
    if isinstance(attn, nn.MultiheadAttention):
        return AttnSpec(attn, qkv, dh ** -0.5)
    head_scale = None if attn.head_scale is None else (lambda: attn.head_scale.reshape(H))
    logits = None
    if attn.logit_scale is not None:  # scaled cosine attention, as open_clip's Attention.forward
        def logits(q, k):
            scale = torch.clamp(attn.logit_scale, max=attn.logit_scale_max).exp().reshape(1, H, 1)
            return torch.einsum("nhd,nhtd->nht", F.normalize(q, dim=-1), F.normalize(k, dim=-1)) * scale
    elif not isinstance(attn.ln_q, nn.Identity) or not isinstance(attn.ln_k, nn.Identity):
        def logits(q, k):  # qk-norm, then SDPA's default d_head^-0.5
            return torch.einsum("nhd,nhtd->nht", attn.ln_q(q), attn.ln_k(k)) * dh ** -0.5
    return AttnSpec(attn, qkv, dh ** -0.5, head_scale, logits)


def text_types() -> tuple[type, ...]:
    import open_clip

    return (open_clip.CLIP, open_clip.CustomTextCLIP)


def _open_clip_trimmed_forward(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``ids -> embeddings`` that runs open_clip's text tower on the batch's real tokens only, when that
    is exact: a causal mask (no position reads a later one) and pooling at the end-of-text or first
    token, no appended class token. None otherwise (SigLIP's bidirectional towers pool the last
    padded position, so they run at their full context)."""
    from open_clip.transformer import TextTransformer, text_global_pool

    tower = model.text if isinstance(getattr(model, "text", None), TextTransformer) else model
    pool = getattr(tower, "pool_type", None) or getattr(tower, "text_pool_type", None)
    eos = getattr(tower, "eos_id", None) if tower is not model else getattr(model, "text_eos_id", None)
    mask = getattr(tower, "attn_mask", None)
    if getattr(tower, "cls_emb", None) is not None or pool not in ("argmax", "eos", "first") or mask is None:
        return None
    pad = int(getattr(tower, "pad_id", 0))

    def forward(ids: torch.Tensor) -> torch.Tensor:
        real = (ids != pad).any(0).nonzero()
        n = int(real[-1]) + 1 if real.numel() else 1
        ids = ids[:, :n]
        cast = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(ids).to(cast) + tower.positional_embedding[:n].to(cast)
        x = tower.ln_final(tower.transformer(x, attn_mask=mask[:n, :n]))
        x = text_global_pool(x, ids, pool, eos_token_id=eos)
        proj = tower.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    return forward


def text_encoder(model, tokenizer) -> tuple[Callable[[list[str]], torch.Tensor], float, float]:
    """(texts -> (b, d_out) ``encode_text`` embeddings, logit scale, logit bias (SigLIP's; else 0))
    of an open_clip model."""
    from resi_dual.models.text import check_ids

    if tokenizer is None:
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))
    device = next(model.parameters()).device
    table = getattr(model, "token_embedding", None)
    vocab = int(table.num_embeddings) if isinstance(table, torch.nn.Embedding) else None
    trimmed = _open_clip_trimmed_forward(model)

    def encode(batch: list[str]) -> torch.Tensor:
        ids = check_ids(tokenizer(batch), vocab).to(device)
        return trimmed(ids) if trimmed is not None else model.encode_text(ids, normalize=False)

    bias = getattr(model, "logit_bias", None)
    return encode, float(model.logit_scale.detach().exp()), 0.0 if bias is None else float(bias.detach())


def _is_vit_tower(model) -> bool:
    from open_clip.transformer import VisionTransformer

    return isinstance(model.visual, VisionTransformer)


def load_open_clip(spec: str, rest: str, convention: str, device="cpu") -> TracedModel:
    """Build an open_clip model from ``<arch>[@<tag or file>]``, ``<dir>`` or ``hf-hub:<repo>`` and
    wrap it in the open_clip family that traces its image tower."""
    model, preprocess, tokenizer = _create(spec, rest)
    visual = model.visual
    size = visual.image_size if hasattr(visual, "image_size") else 224
    size = size[0] if isinstance(size, (tuple, list)) else size
    patch = getattr(visual, "patch_size", None)
    if patch is None and hasattr(visual, "trunk"):  # timm towers keep it on the trunk's patch embedding
        patch = getattr(getattr(visual.trunk, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    for fam in registry.families():
        if fam.scheme == "open_clip" and fam.accepts(model):
            return registry.build_tracer(fam, spec, model, preprocess, size, tokenizer, convention, patch_size=patch).to(device)
    raise ResiDualError(
        f"{spec!r} has a {type(visual).__name__} image tower, not a VisionTransformer or a timm ViT (no residual "
        f"units to trace; supported open_clip families: {registry.supported('open_clip')})"
    )


def register_open_clip_family(name: str, accepts: Callable[[nn.Module], bool], **fields) -> Callable[[type], type]:
    """:func:`~resi_dual.models.registry.register_family` for an ``open_clip:`` family that traces the built
    models ``accepts`` says it does: the shared loader, text tower and local weights are filled in."""
    return registry.register_family(name=name, scheme="open_clip", load=load_open_clip, accepts=accepts, text=text_encoder,
                                    text_types=text_types, library_module="open_clip", weights_path=registry.local_weights,
                                    **fields)


class OpenClipImage:
    """What every open_clip family shares: the image tower ``visual`` and ``encode_image`` as the plain forward."""

    library_model: nn.Module

    @property
    def _visual(self):
        return self.library_model.visual

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.library_model.encode_image(pixels)  # unnormalised


@register_open_clip_family(
    "open_clip", _is_vit_tower,
    short_names={"openclip_b": "open_clip:ViT-B-16@laion2b_s34b_b88k", "openclip_l": "open_clip:ViT-L-14@laion2b_s32b_b82k"},
    summary="open_clip VisionTransformer towers (OpenAI and LAION CLIP); both attention implementations")
class OpenClipTraced(OpenClipImage, TracedModel):
    def _layout(self) -> Layout:
        from open_clip.transformer import Attention, LayerScale, VisionTransformer

        v = self._visual
        name = self.spec
        if not isinstance(v, VisionTransformer):
            raise ResiDualError(f"{name!r} has a {type(v).__name__} image tower, not a VisionTransformer")
        if getattr(v, "attn_pool", None) is not None:
            raise ResiDualError(f"{name!r} uses attentional pooling (attn_pool), which breaks the sum over residual units")
        if getattr(v, "pool_type", "tok") != "tok":
            raise ResiDualError(f"{name!r} pools with {v.pool_type!r}; only CLS-token pooling ('tok') is traceable")
        blocks = list(v.transformer.resblocks)
        attn_out, attn_scale, mlp_out, swaps = [], [], [], []
        for i, b in enumerate(blocks):
            if not isinstance(getattr(b, "ln_attn", nn.Identity()), nn.Identity):
                raise ResiDualError(f"{name!r}: block {i} normalises the attention output (scale_attn), which breaks linearity")
            attn = b.attn
            if isinstance(attn, nn.MultiheadAttention):
                if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
                    raise ResiDualError(f"{name!r}: block {i} has an unsupported nn.MultiheadAttention variant")
                swaps.append((attn, _mha_forward(attn)))
                n_heads = attn.num_heads
            elif isinstance(attn, Attention):
                if not isinstance(attn.ln_inner, nn.Identity):
                    raise ResiDualError(
                        f"{name!r}: block {i} applies a LayerNorm across heads before out_proj (scale_attn_inner), "
                        "which mixes heads nonlinearly"
                    )
                n_heads = attn.num_heads
            else:
                raise ResiDualError(f"{name!r}: block {i} has an unknown attention module {type(attn).__name__}")
            attn_out.append(attn.out_proj)
            attn_scale.append(b.ls_1.gamma if isinstance(b.ls_1, LayerScale) else None)
            mlp_out.append(b.ls_2)  # Identity or LayerScale: its output is the MLP term after scaling
        proj = v.proj
        return Layout(
            blocks=blocks,
            attn_out=attn_out,
            mlp_out=mlp_out,
            attn_scale=attn_scale,
            final_norm=v.ln_post,
            proj_weight=None if proj is None else proj.T,  # pooled @ proj  ==  proj.T applied to pooled
            n_heads=n_heads,
            batch_first=getattr(v.transformer, "batch_first", True),
            instance_forwards=swaps,
            attention=[_attn_spec(b.attn) for b in blocks],
        )

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return dict(self._visual.state_dict())


def _create(spec: str, rest: str) -> tuple:
    """(model, preprocess(list of PIL) -> (n,3,S,S), tokenizer or None) from open_clip's factory."""
    if not rest:
        raise ResiDualError(f"model spec {spec!r} names no architecture after 'open_clip:'")
    import open_clip

    arch, _, pretrained = rest.partition("@")
    kwargs: dict = {}
    if Path(arch).is_dir():
        if not (Path(arch) / "open_clip_config.json").exists():
            raise ResiDualError(f"{spec!r}: directory {arch} has no open_clip_config.json")
        name, tokenizer_name = f"local-dir:{arch}", f"local-dir:{arch}"
    elif arch.startswith("hf-hub:"):
        name = tokenizer_name = arch
    else:
        if registry.looks_like_path(arch) and not Path(arch).exists():
            raise ResiDualError(f"{spec!r}: no such directory {arch}")
        if arch not in open_clip.list_models():
            raise ResiDualError(f"{spec!r}: unknown open_clip architecture {arch!r} (see open_clip.list_models())")
        name, tokenizer_name = arch, arch
        if pretrained:
            if os.path.isfile(pretrained):
                kwargs["pretrained"] = pretrained
            elif pretrained in open_clip.list_pretrained_tags_by_model(arch):
                kwargs["pretrained"] = pretrained
            else:
                raise ResiDualError(
                    f"{spec!r}: {pretrained!r} is neither a checkpoint file nor a pretrained tag of {arch} "
                    f"({', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})"
                )
        else:
            warnings.warn(f"{spec!r}: no pretrained weights given; the model has random weights", stacklevel=3)
    previous = logging.root.manager.disable
    try:
        # open_clip logs a failed download on the root logger before raising; the error below says it once
        logging.disable(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _, preprocess_val = open_clip.create_model_and_transforms(name, **kwargs)
    except ResiDualError:
        raise
    except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError/ValueError/OSError/HF errors
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if "download" in reason.lower() or "hub" in reason.lower() or "connect" in reason.lower() or "offline" in reason.lower():
            raise ResiDualError(f"could not fetch the weights of {spec!r} (offline?): {reason}") from None
        raise ResiDualError(f"could not load {spec!r}: {reason}") from None
    finally:
        logging.disable(previous)
    try:
        tokenizer = open_clip.get_tokenizer(tokenizer_name)
    except Exception:  # noqa: BLE001 - a missing tokenizer only disables text features
        tokenizer = None

    def preprocess(images: list) -> torch.Tensor:
        return torch.stack([preprocess_val(im) for im in images]).float()

    return model, preprocess, tokenizer
