"""LoRA through peft on real towers: zero-initialised B leaves the embedding unchanged, only LoRA trains."""

import pytest
import torch

from resi_dual.adapters.finetune import vision_parameters
from resi_dual.adapters.lora import RANK, add_lora, lora_targets
from resi_dual.errors import ResiDualError
from resi_dual.models.loading import load_model
from tests.models.tracing_models import OPEN_CLIP_VARIANTS, open_clip_cfg, save_open_clip_dir


@pytest.mark.parametrize("variant", ["mha", "custom_attention"])
def test_lora_on_open_clip_starts_at_the_model_and_adapts_every_attention(tmp_path, variant):
    extra, quick = OPEN_CLIP_VARIANTS[variant]
    save_open_clip_dir(tmp_path / "oc", open_clip_cfg(extra, quick), seed=3)
    model = load_model(f"open_clip:{tmp_path / 'oc'}")
    px = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model._forward(model.check_pixels(px)).clone()
    vision = vision_parameters(model, px)
    targets = lora_targets(model.library_model, vision)
    assert targets and all(t.startswith("visual.") for t in targets)  # never the text tower
    # nn.MultiheadAttention is adapted whole; open_clip's own Attention (bare in_proj_weight) at its out_proj
    assert all(t.endswith("attn" if variant == "mha" else "attn.out_proj") for t in targets)
    params = add_lora(model, vision)
    with torch.no_grad():
        assert torch.allclose(model._forward(model.check_pixels(px)), before, atol=1e-6)
    trainable = [p for p in model.library_model.parameters() if p.requires_grad]
    # an A and a B per adapted projection (peft adapts both of a MultiheadAttention's projections)
    assert {id(p) for p in trainable} == {id(p) for p in params} and len(params) >= 2 * len(targets)
    assert all(min(p.shape) == RANK for p in params)
    model._forward(model.check_pixels(px)).sum().backward()
    assert all(p.grad is not None for p in params)


def test_lora_refuses_a_tower_without_attention_projections():
    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

    class Wrapped:
        library_model = Tower()

    with pytest.raises(ResiDualError, match="no attention projection"):
        add_lora(Wrapped(), list(Wrapped.library_model.parameters()))
