"""Tracers for SigLIP image towers: Hugging Face ``SiglipModel`` / ``SiglipVisionModel``, and open_clip's
SigLIP models (a timm ViT trunk whose ``attn_pool`` is a MAP probe, e.g. ``ViT-B-16-SigLIP``).

Covers SigLIP and the fixed-resolution SigLIP 2 checkpoints (``google/siglip2-*-patch16-224`` are
``SiglipModel`` with a Gemma tokenizer). Pre-LN blocks (``layer_norm1`` → ``self_attn`` → residual,
``layer_norm2`` → ``mlp`` → residual) straight after the patch + position embedding (no CLS, no
pre-LN); the output is the attention-pooling head's ``pooler_output`` on ``post_layernorm`` of all
tokens, with no projection. The decomposition is the pooled one (``tracing/pooled.py``).

Text side: SigLIP's text tower pools the *last* position of a ``max_length``-padded sequence
without a padding mask, so texts are padded to the full context (never trimmed), and the model
scores ``logit_scale.exp() · cos + logit_bias`` through a sigmoid.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from resi_dual.errors import ResiDualError
from resi_dual.models import hf
from resi_dual.models.tracing import openclip, timm_vit
from resi_dual.models.tracing.base import prefixed_state
from resi_dual.models.tracing.hf_clip import ClipEncoderTower
from resi_dual.models.tracing.layout import Layout
from resi_dual.models.tracing.pooled import PooledTracedModel, PoolHead

#: SigLIP's image processor normalises to [-1, 1]
SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _library_class(config, archs: list[str], spec: str):
    import transformers

    return transformers.SiglipModel if config.model_type == "siglip" else transformers.SiglipVisionModel


def text_encoder(model, tokenizer) -> tuple[Callable[[list[str]], torch.Tensor], float, float]:
    """(texts -> (b, d_out) text embeddings, logit scale, logit bias) of an HF ``SiglipModel``;
    every text padded to the full context, as the model was trained (module docstring)."""
    from resi_dual.models.text import hf_tokenize

    tokenize = hf_tokenize(model, tokenizer, "SigLIP", padding="max_length")

    def encode(batch: list[str]) -> torch.Tensor:
        ids, _ = tokenize(batch)
        out = model.get_text_features(input_ids=ids)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    return encode, float(model.logit_scale.detach().exp()), float(model.logit_bias.detach())


@hf.register_hf_family(
    "hf-siglip", ("siglip", "siglip_vision_model"), _library_class, SIGLIP_MEAN_STD, text=text_encoder, text_class="SiglipModel",
    short_names={"siglip_b": "hf:google/siglip-base-patch16-224", "siglip2_b": "hf:google/siglip2-base-patch16-224"},
    summary="Hugging Face SigLIP (SiglipModel, SiglipVisionModel; SigLIP 2 FixRes): attention-pooled, no CLS")
class HFSiglipTraced(ClipEncoderTower, PooledTracedModel):

    def _pool_head(self) -> PoolHead:
        head = self._vision.head
        mha = head.attention
        d = mha.embed_dim
        return PoolHead(head.mlp, mha.num_heads, lambda: (mha.in_proj_weight[2 * d:], None if mha.in_proj_bias is None
                                                          else mha.in_proj_bias[2 * d:]), mha.out_proj, attention=mha)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._vision(pixel_values=pixels).pooler_output

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return prefixed_state(vision=self._vision)


@openclip.register_open_clip_family(
    "open_clip-siglip", partial(timm_vit.is_timm_tower, pooled=True),
    summary="open_clip SigLIP (timm ViT trunk pooled by a MAP attention probe, e.g. ViT-B-16-SigLIP): no CLS")
class OpenClipSiglipTraced(openclip.OpenClipImage, PooledTracedModel):
    """timm ``VisionTransformer`` blocks (as in ``timm_vit``), the final ``norm`` over all tokens, then
    timm's ``AttentionPoolLatent`` (one latent query) and the trunk's / open_clip's linear heads."""

    @property
    def _trunk(self):
        return self._visual.trunk

    def _layout(self) -> Layout:
        from timm.models.vision_transformer import VisionTransformer

        trunk, name = self._trunk, self.spec
        pool = trunk.attn_pool
        if not isinstance(trunk, VisionTransformer) or not isinstance(trunk.norm, torch.nn.LayerNorm):
            raise ResiDualError(f"{name!r}: an attention-pooled timm trunk must be a VisionTransformer with a final LayerNorm")
        if pool.pos_embed is not None or pool.latent_len != 1 or pool.pool != "token" or pool.mlp is None \
                or not isinstance(trunk.fc_norm, torch.nn.Identity):
            raise ResiDualError(f"{name!r}: only a one-query MAP head without position embedding or fc_norm is traced")
        return timm_vit.blocks_layout(name, trunk, self._visual, trunk.norm)

    def _pool_head(self) -> PoolHead:
        pool = self._trunk.attn_pool
        d, J, dh = pool.kv.in_features, pool.num_heads, pool.head_dim

        def weights(x: torch.Tensor) -> torch.Tensor:
            """Final-LayerNorm tokens (n, T, D) -> the latent query's attention (n, J, T), as timm computes it."""
            q = pool.q_norm(pool.q(pool.latent).reshape(1, 1, J, dh).transpose(1, 2))  # (1, J, 1, dh)
            k = pool.k_norm(pool.kv(x)[..., :d].reshape(x.shape[0], x.shape[1], J, dh).transpose(1, 2))
            return ((q * pool.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0]

        return PoolHead(pool.mlp, J, lambda: (pool.kv.weight[d:], None if pool.kv.bias is None else pool.kv.bias[d:]),
                        pool.proj, module=pool, weights=weights)

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return prefixed_state(visual=self._visual)
