"""Tracer for ``BlipForImageTextRetrieval`` (BLIP ITM checkpoints, e.g. Salesforce/blip-itm-large-flickr).

BLIP's vision tower has no pre-LN: block 0's input is the patch+position embedding. The image–text
embedding is ``vision_proj(post_layernorm(encoder output)[:, 0])`` (``vision_proj`` has a bias, shared
like β). ``BlipVisionModel`` applies ``post_layernorm`` a second time to its pooler output; the
retrieval head reads the single-LN sequence, and so does the tracer (the first call of the norm).
"""

from __future__ import annotations

import torch

from resi_dual.models.tracing.base import AttnSpec, Layout, TracedModel


class BlipTraced(TracedModel):
    family = "blip"

    def _layout(self) -> Layout:
        m = self.library_model
        blocks = list(m.vision_model.encoder.layers)
        return Layout(
            blocks=blocks,
            attn_out=[b.self_attn.projection for b in blocks],
            mlp_out=[b.mlp for b in blocks],
            attn_scale=[None] * len(blocks),
            final_norm=m.vision_model.post_layernorm,
            proj_weight=m.vision_proj.weight,
            proj_bias=m.vision_proj.bias,
            n_heads=blocks[0].self_attn.num_heads,
            # one packed qkv Linear, reshaped (T, 3, H, d_head): rows q, k, v, head-major
            attention=[AttnSpec(a, lambda a=a: (a.qkv.weight, a.qkv.bias), a.scale) for a in (b.self_attn for b in blocks)],
        )

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.library_model
        seq = m.vision_model(pixel_values=pixels).last_hidden_state  # post-LN tokens
        return m.vision_proj(seq[:, 0, :])  # what the ITC head normalises

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        m = self.library_model
        state = {f"vision_model.{k}": t for k, t in m.vision_model.state_dict().items()}
        state.update({f"vision_proj.{k}": t for k, t in m.vision_proj.state_dict().items()})
        return state
