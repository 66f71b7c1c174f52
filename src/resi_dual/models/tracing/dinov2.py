"""Tracer for Hugging Face ``Dinov2Model`` (e.g. facebook/dinov2-large).

Pre-LN blocks with layer scale: ``x + λ₁ ⊙ attn(norm1(x))``, ``x + λ₂ ⊙ mlp(norm2(x))`` (MLP or
SwiGLU). λ₁ is folded into the head readout; the MLP term is captured after ``layer_scale2``.
Output: the post-LN CLS token (``pooler_output``). Position embeddings interpolate, so any input
side that is a multiple of the patch size is accepted.
"""

from __future__ import annotations

import torch

from resi_dual.models import hf
from resi_dual.models.registry import local_weights, register_family
from resi_dual.models.tracing.base import TracedModel
from resi_dual.models.tracing.layout import Layout
from resi_dual.models.tracing.vit import attr_path, hf_attention


def _library_class(config, archs: list[str], spec: str):
    import transformers

    return transformers.Dinov2Model


@register_family(
    name="dinov2",
    summary="Hugging Face Dinov2Model (self-supervised, layer scale, MLP or SwiGLU); output = post-LN CLS",
    scheme="hf",
    load=hf.load_hf,
    model_types=("dinov2",),
    library_class=_library_class,
    mean_std=(hf.IMAGENET_MEAN, hf.IMAGENET_STD),
    short_names={"dinov2_l": "hf:facebook/dinov2-large"},
    weights_path=local_weights,
)
class Dinov2Traced(TracedModel):
    flexible_size = True

    def _layout(self) -> Layout:
        m = self.library_model
        blocks = list(m.encoder.layer)
        attn = [b.attention for b in blocks]
        return Layout(
            blocks=blocks,
            attn_out=[attr_path(a, "o_proj", "output.dense") for a in attn],
            mlp_out=[b.layer_scale2 for b in blocks],
            attn_scale=[b.layer_scale1.lambda1 for b in blocks],
            final_norm=m.layernorm,
            proj_weight=None,
            proj_bias=None,
            n_heads=int(attr_path(attn[0], "num_attention_heads", "attention.num_attention_heads")),
            attention=[hf_attention(a) for a in attn],
        )

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.library_model(pixel_values=pixels).pooler_output  # post-LN CLS

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return {k: t for k, t in self.library_model.state_dict().items() if k != "embeddings.mask_token"}
