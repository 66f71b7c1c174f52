"""Tracer for Hugging Face SigLIP image towers: ``SiglipModel`` and ``SiglipVisionModel``.

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

from typing import Callable

import torch

from resi_dual.models import hf
from resi_dual.models.registry import local_weights, register_family
from resi_dual.models.tracing.base import AttnSpec, Layout, packed_qkv
from resi_dual.models.tracing.pooled import PooledTracedModel, PoolHead

#: SigLIP's image processor normalises to [-1, 1]
SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _library_class(config, archs: list[str], spec: str):
    import transformers

    return transformers.SiglipModel if config.model_type == "siglip" else transformers.SiglipVisionModel


def _text_types() -> tuple[type, ...]:
    from transformers import SiglipModel

    return (SiglipModel,)


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


@register_family(
    name="hf-siglip",
    summary="Hugging Face SigLIP (SiglipModel, SiglipVisionModel; SigLIP 2 FixRes): attention-pooled, no CLS",
    scheme="hf",
    load=hf.load_hf,
    model_types=("siglip", "siglip_vision_model"),
    library_class=_library_class,
    mean_std=SIGLIP_MEAN_STD,
    text=text_encoder,
    text_types=_text_types,
    library_module="transformers",
    short_names={"siglip_b": "hf:google/siglip-base-patch16-224", "siglip2_b": "hf:google/siglip2-base-patch16-224"},
    weights_path=local_weights,
)
class HFSiglipTraced(PooledTracedModel):

    @property
    def _vision(self):
        m = self.library_model
        return m.vision_model if hasattr(m, "vision_model") else m

    def _layout(self) -> Layout:
        v = self._vision
        blocks = list(v.encoder.layers)
        return Layout(
            blocks=blocks,
            attn_out=[b.self_attn.out_proj for b in blocks],
            mlp_out=[b.mlp for b in blocks],
            attn_scale=[None] * len(blocks),
            final_norm=v.post_layernorm,
            proj_weight=None,
            proj_bias=None,
            n_heads=blocks[0].self_attn.num_heads,
            attention=[AttnSpec(a, packed_qkv(a.q_proj, a.k_proj, a.v_proj), a.scale) for a in (b.self_attn for b in blocks)],
        )

    def _pool_head(self) -> PoolHead:
        head = self._vision.head
        return PoolHead(head.attention, head.mlp)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._vision(pixel_values=pixels).pooler_output

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return {f"vision.{k}": t for k, t in self._vision.state_dict().items()}
