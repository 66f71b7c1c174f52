"""Tiny random-weight checkpoints of every traced family, saved with the library's own save function.

Every parameter is perturbed after construction so that LayerNorm γ/β, layer scales, head scales and
biases are all non-trivial (default inits of 1 and 0 would hide a missing term).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


# -- transformers ------------------------------------------------------------------------------
def _vision(d, layers, heads, image, patch, **kw):
    return dict(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=heads,
                image_size=image, patch_size=patch, **kw)


def build_hf(kind: str, seed: int = 0):
    """(model, own_embedding_fn) for a tiny random-weight transformers model of one kind."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "clip":  # CLIPModel, 2 layers × 4 heads, d 48
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                    max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        m = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=_vision(48, 2, 4, 32, 8), projection_dim=24))

        def own(px):
            out = m.get_image_features(pixel_values=px)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
    elif kind == "clip_vision_proj":  # 3 layers × 2 heads, d 32, QuickGELU (OpenAI CLIP's activation)
        m = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**_vision(32, 3, 2, 28, 7, hidden_act="quick_gelu"), projection_dim=20))

        def own(px):
            return m(pixel_values=px).image_embeds
    elif kind == "clip_vision":  # no projection: output = post-LN CLS, 1 layer × 3 heads
        m = tf.CLIPVisionModel(tf.CLIPVisionConfig(**_vision(24, 1, 3, 16, 8)))

        def own(px):
            return m(pixel_values=px).pooler_output
    elif kind == "blip":  # BlipForImageTextRetrieval: vision_proj with bias
        text = dict(vocab_size=64, hidden_size=32, encoder_hidden_size=40, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=16)
        vision = _vision(40, 2, 5, 32, 8)
        m = tf.BlipForImageTextRetrieval(tf.BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=16))

        def own(px):
            return m.vision_proj(m.vision_model(pixel_values=px).last_hidden_state[:, 0, :])
    elif kind == "vit":  # ViTModel with qkv bias, 2 × 4, d 32
        m = tf.ViTModel(tf.ViTConfig(**_vision(32, 2, 4, 32, 8), qkv_bias=True))

        def own(px):
            return m(pixel_values=px).last_hidden_state[:, 0]
    elif kind == "vit_cls":  # ViTForImageClassification without qkv bias, 3 × 2, d 24
        m = tf.ViTForImageClassification(tf.ViTConfig(**_vision(24, 3, 2, 24, 6), qkv_bias=False, num_labels=5))

        def own(px):
            return m.vit(pixel_values=px).last_hidden_state[:, 0]  # the classifier's input
    elif kind == "dinov2":  # layer scale, 2 × 4, d 32
        m = tf.Dinov2Model(tf.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                           image_size=28, patch_size=7, layerscale_value=0.5))

        def own(px):
            return m(pixel_values=px).pooler_output
    elif kind == "dinov2_swiglu":  # SwiGLU MLP, no qkv bias, 3 × 3, d 36
        m = tf.Dinov2Model(tf.Dinov2Config(hidden_size=36, num_hidden_layers=3, num_attention_heads=3, mlp_ratio=2,
                                           image_size=28, patch_size=7, use_swiglu_ffn=True, qkv_bias=False))

        def own(px):
            return m(pixel_values=px).pooler_output
    elif kind == "dinov2_registers":  # 4 register tokens, 5 heads, SwiGLU, 35 px (patch 7)
        m = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(
            hidden_size=40, num_hidden_layers=2, num_attention_heads=5, mlp_ratio=2, image_size=35, patch_size=7,
            num_register_tokens=4, use_swiglu_ffn=True, layerscale_value=0.5))

        def own(px):
            return m(pixel_values=px).pooler_output
    elif kind == "siglip":  # SiglipModel: attention-pooled, 2 layers × 3 heads (probe: 3 heads), 30 px / patch 8
        text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=16)
        m = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=_vision(36, 2, 3, 30, 8)))

        def own(px):
            out = m.get_image_features(pixel_values=px)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
    elif kind == "siglip_vision":  # SiglipVisionModel, 3 layers × 5 heads, d 40, 28 px / patch 6
        m = tf.SiglipVisionModel(tf.SiglipVisionConfig(**_vision(40, 3, 5, 28, 6)))

        def own(px):
            return m(pixel_values=px).pooler_output
    else:
        raise KeyError(kind)
    perturb(m, seed)
    return m, own


HF_KINDS = ["clip", "clip_vision_proj", "clip_vision", "blip", "vit", "vit_cls", "dinov2", "dinov2_swiglu", "dinov2_registers"]
#: attention-pooled towers (pooled geometry: no CLS token; spatial maps over the tokens the probe pools)
POOLED_KINDS = ["siglip", "siglip_vision"]

#: the registered family each row of the table must be traced by (the demo family has the
#: committed checkpoint, tests/models/test_demo.py)
KIND_FAMILY = {"clip": "hf-clip", "clip_vision_proj": "hf-clip", "clip_vision": "hf-clip", "blip": "blip",
               "vit": "vit", "vit_cls": "vit", "siglip": "hf-siglip", "siglip_vision": "hf-siglip", "dinov2": "dinov2", "dinov2_swiglu": "dinov2", "dinov2_registers": "dinov2-registers",
               "open_clip_mha": "open_clip", "open_clip_mha_quickgelu_ls": "open_clip",
               "open_clip_custom_attention": "open_clip", "open_clip_custom_no_ln_pre": "open_clip",
               "timm_eva02_clip": "open_clip-timm", "timm_eva_ls_fc_norm": "open_clip-timm",
               "timm_vit_registers": "open_clip-timm", "timm_siglip_map": "open_clip-siglip"}


# -- open_clip -----------------------------------------------------------------------------------
OPEN_CLIP_VARIANTS = {
    # name: (vision_cfg extras, quick_gelu)
    "mha": ({}, False),  # PyPI default: nn.MultiheadAttention blocks
    "mha_quickgelu_ls": ({"ls_init_value": 0.5, "layers": 3, "width": 32, "head_width": 16}, True),  # OpenAI-style
    "custom_attention": ({"block_type": "custom", "scale_heads": True, "qk_norm": True, "ls_init_value": 0.3}, False),
    "custom_no_ln_pre": ({"block_type": "custom", "no_ln_pre": True, "final_ln_after_pool": True, "layers": 1,
                          "width": 36, "head_width": 12}, True),
}


def open_clip_cfg(vision_extra: dict, quick_gelu: bool) -> dict:
    vision = {"image_size": 32, "layers": 2, "width": 48, "head_width": 12, "patch_size": 8}
    vision.update(vision_extra)
    return {"embed_dim": 24, "quick_gelu": quick_gelu, "vision_cfg": vision,
            "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


def save_open_clip_dir(directory: Path, cfg: dict, seed: int = 0):
    """Build an open_clip CLIP (CustomTextCLIP when ``cfg['custom_text']``) from ``cfg``, perturb it,
    save it in open_clip's local-dir layout (open_clip_config.json + open_clip_model.safetensors, as
    ``push_to_hf_hub`` writes it)."""
    from open_clip.model import CLIP, CustomTextCLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cls = CustomTextCLIP if cfg.get("custom_text") else CLIP
    kwargs = {k: v for k, v in json.loads(json.dumps(cfg)).items() if k != "custom_text"}
    model = perturb(cls(**kwargs), seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return model


# -- timm towers inside open_clip -------------------------------------------------------------------
#: tiny timm trunks: (timm class, its arguments, open_clip vision_cfg extras). Odd sizes on purpose:
#: 3 and 5 heads, images of 30, 21 and 20 px.
TIMM_VARIANTS = {
    # EVA-02-CLIP's block: separate q/k/v, rotary embeddings, SwiGLU with inner LN, LN over the heads
    "eva02_clip": ("eva", dict(img_size=30, patch_size=6, embed_dim=36, depth=2, num_heads=3, qkv_fused=False,
                               mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                               use_rot_pos_emb=True, ref_feat_shape=(5, 5)), {"timm_proj": None}),
    # EVA with layer scale γ₁/γ₂, fused qkv with q/v biases, packed SwiGLU, fc_norm after token pooling
    "eva_ls_fc_norm": ("eva", dict(img_size=21, patch_size=7, embed_dim=40, depth=3, num_heads=5, qkv_fused=True,
                                   swiglu_mlp=True, init_values=0.3, use_rot_pos_emb=True, ref_feat_shape=(3, 3),
                                   use_fc_norm=True), {"timm_proj": None}),
    # timm ViT: register tokens, pre-norm, qk-norm, LayerScale, LN over the heads; open_clip's linear proj with bias
    "vit_registers": ("vit", dict(img_size=20, patch_size=5, embed_dim=24, depth=2, num_heads=3, reg_tokens=2,
                                  pre_norm=True, qk_norm=True, init_values=0.4, scale_attn_norm=True),
                      {"timm_proj": "linear", "timm_proj_bias": True}),
    # open_clip SigLIP: no class token, a MAP attention probe (3 heads) over all tokens, the trunk's linear head
    "siglip_map": ("vit", dict(img_size=30, patch_size=8, embed_dim=36, depth=2, num_heads=3, class_token=False,
                               global_pool="map"), {"timm_pool": "map", "timm_proj": "none"}),
}


def register_timm_variant(name: str, kind: str | None = None, args: dict | None = None) -> str:
    """Register a tiny timm model ``resi_dual_test_<name>`` (once; default: the row of
    :data:`TIMM_VARIANTS`) and return its timm name."""
    import timm
    from timm.models import register_model

    if kind is None:
        kind, args, _ = TIMM_VARIANTS[name]
    timm_name = f"resi_dual_test_{name}"
    if timm_name in timm.list_models(timm_name):
        return timm_name

    def build(pretrained: bool = False, **kwargs):
        from timm.models import build_model_with_cfg

        if kind == "eva":
            from timm.models.eva import Eva as cls
        else:
            from timm.models.vision_transformer import VisionTransformer as cls
        kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or {"num_classes": 0}  # no hub weights: say so
        return build_model_with_cfg(cls, timm_name, pretrained, **dict(args, **kwargs))

    build.__name__ = timm_name
    register_model(build)
    return timm_name


def timm_clip_cfg(name: str, **vision_extra) -> dict:
    """An open_clip CustomTextCLIP config whose image tower is the tiny timm trunk ``name``
    (a row of :data:`TIMM_VARIANTS`, or any timm name with ``image_size`` in ``vision_extra``)."""
    _, args, extra = TIMM_VARIANTS.get(name, (None, {}, {}))
    timm_name = register_timm_variant(name) if name in TIMM_VARIANTS else name
    extra = {**extra, **vision_extra}
    vision = {"image_size": args.get("img_size"), "timm_model_name": timm_name,
              "timm_model_pretrained": False, "timm_pool": "token", **extra}
    return {"embed_dim": 20, "custom_text": True, "vision_cfg": vision,
            "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
