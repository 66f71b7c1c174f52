"""Tracer for ``BlipForImageTextRetrieval`` (BLIP ITM checkpoints, e.g. Salesforce/blip-itm-large-flickr).

BLIP's vision tower has no pre-LN: block 0's input is the patch+position embedding. The image–text
embedding is ``vision_proj(post_layernorm(encoder output)[:, 0])`` (``vision_proj`` has a bias, shared
like β). ``BlipVisionModel`` applies ``post_layernorm`` a second time to its pooler output; the
retrieval head reads the single-LN sequence, and so does the tracer (the first call of the norm).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from resi_dual.errors import ResiDualError
from resi_dual.models import hf
from resi_dual.models.tracing.base import TracedModel, prefixed_state
from resi_dual.models.tracing.layout import AttnSpec, Layout


def _library_class(config, archs: list[str], spec: str):
    import transformers

    other = [a for a in archs if a != "BlipForImageTextRetrieval"]
    if other and "BlipForImageTextRetrieval" not in archs:
        raise ResiDualError(
            f"{spec!r} is a {other[0]} checkpoint; only BlipForImageTextRetrieval (image–text space via vision_proj) is supported"
        )
    return transformers.BlipForImageTextRetrieval


def text_encoder(model, tokenizer) -> tuple[Callable[[list[str]], torch.Tensor], float]:
    """(texts -> (b, d_out) ITC text embeddings, logit scale): the text encoder without image
    cross-attention and ``text_proj`` on the CLS token, as the model does with ``use_itm_head=False``."""
    from resi_dual.models.text import hf_tokenize

    tokenize = hf_tokenize(model, tokenizer, "BLIP")

    def encode(batch: list[str]) -> torch.Tensor:
        ids, mask = tokenize(batch)
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return model.text_proj(hidden[:, 0, :])

    # HF's retrieval model has no learned temperature; BLIP's is initialised at the config value
    return encode, math.exp(float(model.config.logit_scale_init_value))


@hf.register_hf_family(
    "blip", ("blip",), _library_class, hf.CLIP_MEAN_STD, text=text_encoder, text_class="BlipForImageTextRetrieval",
    short_names={"blip_l": "hf:Salesforce/blip-itm-large-flickr"},
    summary="Hugging Face BlipForImageTextRetrieval (BLIP ITM checkpoints), image–text space via vision_proj")
class BlipTraced(TracedModel):

    def _layout(self) -> Layout:
        m = self.library_model
        blocks = list(m.vision_model.encoder.layers)
        attn = [b.self_attn for b in blocks]
        return Layout(
            blocks=blocks,
            attn_out=[a.projection for a in attn],
            mlp_out=[b.mlp for b in blocks],
            final_norm=m.vision_model.post_layernorm,
            n_heads=attn[0].num_heads,
            proj_weight=m.vision_proj.weight,
            proj_bias=m.vision_proj.bias,
            # one packed qkv Linear, reshaped (T, 3, H, d_head): rows q, k, v, head-major
            attention=[AttnSpec(a, lambda a=a: (a.qkv.weight, a.qkv.bias), a.scale) for a in attn],
        )

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.library_model
        seq = m.vision_model(pixel_values=pixels).last_hidden_state  # post-LN tokens
        return m.vision_proj(seq[:, 0, :])  # what the ITC head normalises

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return prefixed_state(vision_model=self.library_model.vision_model, vision_proj=self.library_model.vision_proj)
