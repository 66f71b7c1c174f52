"""Tracer for Hugging Face ``Dinov2Model`` (e.g. facebook/dinov2-large).

Pre-LN blocks with layer scale: ``x + λ₁ ⊙ attn(norm1(x))``, ``x + λ₂ ⊙ mlp(norm2(x))`` (MLP or
SwiGLU). λ₁ is folded into the head readout; the MLP term is captured after ``layer_scale2``.
Output: the post-LN CLS token (``pooler_output``). Position embeddings interpolate, so any input
side that is a multiple of the patch size is accepted.
"""

from __future__ import annotations

import torch

from resi_dual.models import hf
from resi_dual.models.tracing.base import TracedModel
from resi_dual.models.tracing.layout import Layout
from resi_dual.models.tracing.vit import vit_layout


@hf.register_hf_family("dinov2", ("dinov2",), "Dinov2Model", hf.IMAGENET_MEAN_STD,
                       short_names={"dinov2_l": "hf:facebook/dinov2-large"},
                       summary="Hugging Face Dinov2Model (self-supervised, layer scale, MLP or SwiGLU); output = post-LN CLS")
class Dinov2Traced(TracedModel):
    flexible_size = True

    def _layout(self) -> Layout:
        blocks = list(self.library_model.encoder.layer)
        return vit_layout(self.library_model, blocks, [b.layer_scale2 for b in blocks],
                          [b.layer_scale1.lambda1 for b in blocks])

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.library_model(pixel_values=pixels).pooler_output  # post-LN CLS

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        return {k: t for k, t in self.library_model.state_dict().items() if k != "embeddings.mask_token"}
