"""Tracer for Hugging Face CLIP image towers: ``CLIPModel``, ``CLIPVisionModelWithProjection``, ``CLIPVisionModel``.

OpenAI and LAION CLIP in HF format. Pre-LN blocks (``layer_norm1`` → ``self_attn`` → residual,
``layer_norm2`` → ``mlp`` → residual) after ``pre_layrnorm``; the output is
``visual_projection(post_layernorm(CLS))`` (no projection for a bare ``CLIPVisionModel``, whose
output is then ``pooler_output``).
"""

from __future__ import annotations

from typing import Callable

import torch

from resi_dual.models import hf
from resi_dual.models.registry import local_weights, register_family
from resi_dual.models.tracing.base import TracedModel
from resi_dual.models.tracing.layout import AttnSpec, Layout, packed_qkv


def _library_class(config, archs: list[str], spec: str):
    import transformers

    if config.model_type == "clip":
        return transformers.CLIPModel
    return transformers.CLIPVisionModel if "CLIPVisionModel" in archs else transformers.CLIPVisionModelWithProjection


def _text_types() -> tuple[type, ...]:
    from transformers import CLIPModel

    return (CLIPModel,)


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


@register_family(
    name="hf-clip",
    summary="Hugging Face CLIP (CLIPModel, CLIPVisionModelWithProjection, CLIPVisionModel): OpenAI and LAION weights",
    scheme="hf",
    load=hf.load_hf,
    model_types=("clip", "clip_vision_model"),
    library_class=_library_class,
    mean_std=(hf.CLIP_MEAN, hf.CLIP_STD),
    text=text_encoder,
    text_types=_text_types,
    library_module="transformers",
    short_names={"clip_b": "hf:openai/clip-vit-base-patch16", "clip_l": "hf:openai/clip-vit-large-patch14"},
    weights_path=local_weights,
)
class HFClipTraced(TracedModel):

    @property
    def _vision(self):
        m = self.library_model
        return m.vision_model if hasattr(m, "vision_model") else m  # a bare CLIPVisionModel is the tower

    @property
    def _projection(self):
        return getattr(self.library_model, "visual_projection", None)

    def _layout(self) -> Layout:
        v = self._vision
        blocks = list(v.encoder.layers)
        proj = self._projection
        return Layout(
            blocks=blocks,
            attn_out=[b.self_attn.out_proj for b in blocks],
            mlp_out=[b.mlp for b in blocks],
            attn_scale=[None] * len(blocks),
            final_norm=v.post_layernorm,
            proj_weight=None if proj is None else proj.weight,
            proj_bias=None if proj is None else proj.bias,
            n_heads=blocks[0].self_attn.num_heads,
            attention=[AttnSpec(a, packed_qkv(a.q_proj, a.k_proj, a.v_proj), a.scale) for a in (b.self_attn for b in blocks)],
        )

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self._vision(pixel_values=pixels).pooler_output  # post-LN CLS
        proj = self._projection
        return pooled if proj is None else proj(pooled)

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        state = {f"vision.{k}": t for k, t in self._vision.state_dict().items()}
        if self._projection is not None:
            state.update({f"visual_projection.{k}": t for k, t in self._projection.state_dict().items()})
        return state
