"""LoRA on the vision tower through peft (Hu et al., 2022; docs/DESIGN.md §12).

Low-rank updates ``ΔW = B A`` (rank r, scale α/r, B initialised to zero so training starts at the
zero-shot model) on the attention projections of the image encoder, injected in place with
``peft.inject_adapter_in_model``: the query and value projections of HF towers (``q_proj``/``v_proj``,
``query``/``value``), a fused ``qkv`` projection (timm, EVA), and ``nn.MultiheadAttention`` (open_clip)
through peft's own MultiheadAttention layer. open_clip's own ``Attention`` keeps its input projection as
a bare parameter, which peft cannot wrap: there LoRA adapts the output projections (``out_proj``)
instead. Only modules the image embedding depends on are adapted;
the text tower stays frozen. Training is :func:`resi_dual.adapters.finetune.finetune` on the LoRA
parameters alone.
"""

from __future__ import annotations

import torch
from torch import nn

from resi_dual.errors import ResiDualError

#: Rank and scale of the low-rank updates (the LoRA paper's and peft's common setting).
RANK = 8
ALPHA = 16
#: Names of the attention projections LoRA adapts, by how a family calls them.
_PROJECTIONS = ("q_proj", "v_proj", "query", "value", "qkv")


def lora_targets(lib: nn.Module, vision: list[nn.Parameter]) -> list[str]:
    """Full names of the modules to adapt: attention projections (or whole ``nn.MultiheadAttention``s)
    whose weights are among ``vision``, the parameters the image embedding depends on."""
    ids = {id(p) for p in vision}
    names, out_projs = [], []
    for name, mod in lib.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            if id(mod.in_proj_weight) in ids:
                names.append(name)
        elif isinstance(mod, nn.Linear) and id(mod.weight) in ids:
            last = name.split(".")[-1]
            if last in _PROJECTIONS:
                names.append(name)
            elif last == "out_proj" and not isinstance(lib.get_submodule(name.rsplit(".", 1)[0]), nn.MultiheadAttention):
                out_projs.append(name)
    return names or out_projs  # the output projections only where no input projection can be wrapped


def add_lora(model, vision: list[nn.Parameter], rank: int = RANK, alpha: int = ALPHA) -> list[nn.Parameter]:
    """Inject LoRA into ``model.library_model`` in place; freeze everything else; return the LoRA
    parameters (the trainable ones: ``2 · r · (d_in + d_out)`` per adapted projection)."""
    from peft import LoraConfig, inject_adapter_in_model

    lib = model.library_model
    targets = lora_targets(lib, vision)
    if not targets:
        raise ResiDualError(f"LoRA found no attention projection to adapt in {type(lib).__name__}")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets), lib)
    params = []
    for name, p in lib.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            params.append(p)
    return params


def lora_parameter_count(params: list[torch.Tensor]) -> int:
    """Trainable LoRA parameters."""
    return int(sum(p.numel() for p in params))
