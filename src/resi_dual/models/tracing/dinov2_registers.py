"""Tracer for Hugging Face ``Dinov2WithRegistersModel`` (e.g. facebook/dinov2-with-registers-large).

The same blocks as DINOv2 (layer scale, MLP or SwiGLU, post-LN CLS output), with ``num_register_tokens``
extra learned tokens after the CLS token. Registers are tokens like the patches: they enter the
heads' attention, not the residual stream of the CLS token, so the CLS decomposition is DINOv2's.
"""

from __future__ import annotations

from resi_dual.models import hf
from resi_dual.models.registry import local_weights, register_family
from resi_dual.models.tracing.dinov2 import Dinov2Traced


def _library_class(config, archs: list[str], spec: str):
    import transformers

    return transformers.Dinov2WithRegistersModel


@register_family(
    name="dinov2-registers",
    summary="Hugging Face Dinov2WithRegistersModel (DINOv2 with register tokens); output = post-LN CLS",
    scheme="hf",
    load=hf.load_hf,
    model_types=("dinov2_with_registers",),
    library_class=_library_class,
    mean_std=(hf.IMAGENET_MEAN, hf.IMAGENET_STD),
    short_names={"dinov2reg_b": "hf:facebook/dinov2-with-registers-base",
                 "dinov2reg_l": "hf:facebook/dinov2-with-registers-large"},
    weights_path=local_weights,
)
class Dinov2RegistersTraced(Dinov2Traced):
    pass
