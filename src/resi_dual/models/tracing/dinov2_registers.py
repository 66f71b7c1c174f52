"""Tracer for Hugging Face ``Dinov2WithRegistersModel`` (e.g. facebook/dinov2-with-registers-large).

The same blocks as DINOv2 (layer scale, MLP or SwiGLU, post-LN CLS output), with ``num_register_tokens``
extra learned tokens after the CLS token. Registers are tokens like the patches: they enter the
heads' attention, not the residual stream of the CLS token, so the CLS decomposition is DINOv2's.
"""

from __future__ import annotations

from resi_dual.models import hf
from resi_dual.models.tracing.dinov2 import Dinov2Traced


@hf.register_hf_family(
    "dinov2-registers", ("dinov2_with_registers",), "Dinov2WithRegistersModel", hf.IMAGENET_MEAN_STD,
    short_names={"dinov2reg_b": "hf:facebook/dinov2-with-registers-base", "dinov2reg_l": "hf:facebook/dinov2-with-registers-large"},
    summary="Hugging Face Dinov2WithRegistersModel (DINOv2 with register tokens); output = post-LN CLS")
class Dinov2RegistersTraced(Dinov2Traced):
    pass
