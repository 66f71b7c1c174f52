"""Tracer for Hugging Face CLIP image towers: ``CLIPModel``, ``CLIPVisionModelWithProjection``, ``CLIPVisionModel``.

OpenAI and LAION CLIP in HF format. Pre-LN blocks (``layer_norm1`` → ``self_attn`` → residual,
``layer_norm2`` → ``mlp`` → residual) after ``pre_layrnorm``; the output is
``visual_projection(post_layernorm(CLS))`` (no projection for a bare ``CLIPVisionModel``, whose
output is then ``pooler_output``). SigLIP's towers have the same encoder (``siglip``).
"""

from __future__ import annotations

from typing import Callable

import torch

from resi_dual.models import hf
from resi_dual.models.tracing.base import TracedModel, prefixed_state
from resi_dual.models.tracing.layout import AttnSpec, Layout, packed_qkv


def _library_class(config, archs: list[str], spec: str):
    import transformers

    if config.model_type == "clip":
        return transformers.CLIPModel
    return transformers.CLIPVisionModel if "CLIPVisionModel" in archs else transformers.CLIPVisionModelWithProjection


def encoder_layout(vision, proj: torch.nn.Linear | None = None) -> Layout:
    """The :class:`Layout` of a CLIP-style HF vision tower (``encoder.layers`` of ``self_attn`` + ``mlp``,
    then ``post_layernorm``), read through the optional linear projection ``proj``."""
    blocks = list(vision.encoder.layers)
    attn = [b.self_attn for b in blocks]
    return Layout(
        blocks=blocks,
        attn_out=[a.out_proj for a in attn],
        mlp_out=[b.mlp for b in blocks],
        final_norm=vision.post_layernorm,
        n_heads=attn[0].num_heads,
        proj_weight=None if proj is None else proj.weight,
        proj_bias=None if proj is None else proj.bias,
        attention=[AttnSpec(a, packed_qkv(a.q_proj, a.k_proj, a.v_proj), a.scale) for a in attn],
    )


class ClipEncoderTower:
    """What the CLIP-style HF towers share (CLIP, SigLIP): the vision transformer of a two-tower model
    (``vision_model``; a bare vision model is the tower) and its :func:`encoder_layout`."""

    library_model: torch.nn.Module

    @property
    def _vision(self):
        m = self.library_model
        return m.vision_model if hasattr(m, "vision_model") else m

    @property
    def _projection(self) -> torch.nn.Linear | None:
        return None

    def _layout(self) -> Layout:
        return encoder_layout(self._vision, self._projection)


def text_encoder(model, tokenizer) -> tuple[Callable[[list[str]], torch.Tensor], float]:
    """(texts -> (b, d_out) projected text embeddings, logit scale) of an HF ``CLIPModel``."""
    from resi_dual.models.text import hf_tokenize

    tokenize = hf_tokenize(model, tokenizer, "HF CLIP")

    def encode(batch: list[str]) -> torch.Tensor:
        ids, mask = tokenize(batch)
        out = model.get_text_features(input_ids=ids, attention_mask=mask)
        # transformers ≥ 5 returns a model output whose pooler_output is the projected embedding
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    return encode, float(model.logit_scale.detach().exp())


@hf.register_hf_family(
    "hf-clip", ("clip", "clip_vision_model"), _library_class, hf.CLIP_MEAN_STD, text=text_encoder, text_class="CLIPModel",
    short_names={"clip_b": "hf:openai/clip-vit-base-patch16", "clip_l": "hf:openai/clip-vit-large-patch14"},
    summary="Hugging Face CLIP (CLIPModel, CLIPVisionModelWithProjection, CLIPVisionModel): OpenAI and LAION weights")
class HFClipTraced(ClipEncoderTower, TracedModel):

    @property
    def _projection(self):
        return getattr(self.library_model, "visual_projection", None)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self._vision(pixel_values=pixels).pooler_output  # post-LN CLS
        proj = self._projection
        return pooled if proj is None else proj(pooled)

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return prefixed_state(vision=self._vision, visual_projection=self._projection)
