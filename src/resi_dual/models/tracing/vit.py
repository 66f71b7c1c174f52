"""Tracer for Hugging Face ``ViTModel`` / ``ViTForImageClassification`` (e.g. google/vit-large-patch16-224).

Pre-LN blocks (``layernorm_before`` → attention → residual, ``layernorm_after`` → MLP → residual).
There is no projection: the output is the post-LN CLS token, ``layernorm(sequence)[:, 0]`` — the
input of the classifier, and not the tanh ``pooler_output`` (that pooler is not linear).
Module names differ between transformers 4.x (``encoder.layer[i].attention.output.dense``,
``output.dense``) and 5.x (``layers[i].attention.o_proj``, ``mlp``); both are looked up.
"""

from __future__ import annotations

import torch

from resi_dual.errors import ResiDualError
from resi_dual.models import hf
from resi_dual.models.tracing.base import TracedModel
from resi_dual.models.tracing.layout import AttnSpec, Layout, packed_qkv


def attr_path(obj, *paths: str):
    """The first of the dotted attribute ``paths`` that exists on ``obj``."""
    for path in paths:
        cur = obj
        try:
            for name in path.split("."):
                cur = getattr(cur, name)
        except AttributeError:
            continue
        return cur
    raise ResiDualError(f"{type(obj).__name__} has none of {', '.join(paths)} (unsupported transformers version?)")


def hf_attention(attn) -> AttnSpec:
    """The :class:`AttnSpec` of a transformers 5.x (``q_proj``…) or 4.x (``attention.query``…) ViT/DINOv2 attention."""
    q, k, v = (attr_path(attn, f"{a}_proj", f"attention.{b}") for a, b in (("q", "query"), ("k", "key"), ("v", "value")))
    n_heads = int(attr_path(attn, "num_attention_heads", "attention.num_attention_heads"))
    return AttnSpec(attn, packed_qkv(q, k, v), (q.weight.shape[0] // n_heads) ** -0.5)


def vit_layout(model, blocks: list, mlp_out: list, attn_scale: list | tuple = ()) -> Layout:
    """The :class:`Layout` of a ViT-style HF encoder (``blocks`` with an ``attention``, then ``layernorm``):
    the output is the post-LN CLS token; ``mlp_out`` / ``attn_scale`` are per block (see :class:`Layout`)."""
    attn = [b.attention for b in blocks]
    return Layout(
        blocks=blocks,
        attn_out=[attr_path(a, "o_proj", "output.dense") for a in attn],
        mlp_out=mlp_out,
        attn_scale=attn_scale,
        final_norm=model.layernorm,
        n_heads=int(attr_path(attn[0], "num_attention_heads", "attention.num_attention_heads")),
        attention=[hf_attention(a) for a in attn],
    )


def _library_class(config, archs: list[str], spec: str):
    import transformers

    return transformers.ViTForImageClassification if "ViTForImageClassification" in archs else transformers.ViTModel


@hf.register_hf_family("vit", ("vit",), _library_class, hf.IMAGENET_MEAN_STD,
                       short_names={"vit_l": "hf:google/vit-large-patch16-224"},
                       summary="Hugging Face ViTModel / ViTForImageClassification (supervised ViTs); output = post-LN CLS")
class ViTTraced(TracedModel):

    @property
    def _vit(self):
        m = self.library_model
        return m.vit if hasattr(m, "vit") else m

    def _layout(self) -> Layout:
        blocks = list(attr_path(self._vit, "layers", "encoder.layer"))
        return vit_layout(self._vit, blocks, [attr_path(b, "mlp", "output.dense") for b in blocks])

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._vit(pixel_values=pixels).last_hidden_state[:, 0]  # post-LN CLS

    def _hashed_state(self) -> dict[str, torch.Tensor]:
        v = self._vit
        return {k: t for k, t in v.state_dict().items() if not k.startswith("pooler.")}
