"""Spec parsing, preprocessing, and one-line errors for bad input (library and CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resi_dual import load_model
from resi_dual.cli import main as cli_main
from resi_dual.errors import ResiDualError
from resi_dual.models.loading import resolve_spec
from resi_dual.models.registry import short_names
from tracing_models import build_hf, open_clip_cfg, save_open_clip_dir


def _load(spec, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(spec, **kw)


def test_short_names_resolve_to_the_paper_checkpoints():
    assert resolve_spec("clip_b") == "hf:openai/clip-vit-base-patch16"
    assert resolve_spec("openclip_l") == "open_clip:ViT-L-14@laion2b_s32b_b82k"
    assert resolve_spec("blip_l") == "hf:Salesforce/blip-itm-large-flickr"
    assert {"clip_b", "clip_l", "openclip_b", "openclip_l", "vit_l", "dinov2_l", "blip_l"} <= set(short_names())
    assert resolve_spec("hf:some/dir") == "hf:some/dir"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("foo:bar", "unknown model spec 'foo:bar'"),
        ("resnet50", "unknown model spec"),
        ("", "empty model spec"),
        ("hf:", "names no checkpoint"),
        ("open_clip:", "names no architecture"),
        ("open_clip:No-Such-Arch", "unknown open_clip architecture 'No-Such-Arch'"),
        ("open_clip:ViT-B-32@not-a-tag", "neither a checkpoint file nor a pretrained tag of ViT-B-32"),
        ("hf:/no/such/dir", "no such checkpoint directory /no/such/dir"),
        ("open_clip:/no/such/dir", "no such directory /no/such/dir"),
    ],
)
def test_bad_specs_give_one_line_errors(spec, message):
    with pytest.raises(ResiDualError, match=message) as info:
        load_model(spec)
    assert "\n" not in str(info.value)


def test_non_vit_and_attention_pool_hf_checkpoints_are_refused(tmp_path):
    import transformers as tf

    tf.ResNetConfig(num_channels=3).save_pretrained(tmp_path / "resnet")
    tf.Siglip2Config().save_pretrained(tmp_path / "siglip2")
    tf.BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(ResiDualError, match="resnet model, not a vision transformer"):
        load_model(f"hf:{tmp_path / 'resnet'}")
    with pytest.raises(ResiDualError, match="siglip2 model: an attention-pooled tower .* supported hf families: .*hf-siglip"):
        load_model(f"hf:{tmp_path / 'siglip2'}")
    with pytest.raises(ResiDualError, match="model type 'bert'"):
        load_model(f"hf:{tmp_path / 'bert'}")
    with pytest.raises(ResiDualError, match="could not load"):
        load_model(f"hf:{tmp_path}")  # a directory without a config


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"layers": [1, 1, 1, 1], "width": 16, "image_size": 32}, "ModifiedResNet image tower, not a VisionTransformer"),
        ({"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}, "attentional pooling"),
        ({"pool_type": "avg"}, "pools with 'avg'"),
        ({"block_type": "custom", "scale_attn_inner": True}, "LayerNorm across heads"),
        ({"block_type": "custom", "scale_attn": True}, "normalises the attention output"),
    ],
)
def test_untraceable_open_clip_towers_are_refused(tmp_path, extra, message):
    cfg = open_clip_cfg(extra, False)
    if isinstance(extra.get("layers"), list):
        cfg["vision_cfg"] = {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 8}
    save_open_clip_dir(tmp_path / "m", cfg)
    with pytest.raises(ResiDualError, match=message) as info:
        _load(f"open_clip:{tmp_path / 'm'}")
    assert "\n" not in str(info.value)


def test_open_clip_arch_at_checkpoint_file(tmp_path, monkeypatch):
    """``open_clip:<arch>@<file>``: a registered architecture plus a safetensors state dict."""
    import open_clip
    from safetensors.torch import save_file

    cfg = open_clip_cfg({}, True)
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "Tiny-ViT-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    model = save_open_clip_dir(tmp_path / "m", cfg, seed=3)
    ckpt = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    traced = _load(f"open_clip:Tiny-ViT-test@{ckpt}")
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(px)
    got = traced.trace(px).contributions().sum(1)
    assert float(((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max()) <= 1e-5


@pytest.mark.parametrize("shape", [(2, 3, 31, 31), (3, 32, 32), (2, 1, 32, 32), (0, 3, 32, 32)])
def test_wrong_pixel_shapes_are_refused(saved_models, shape):
    model = _load(saved_models["open_clip_mha"][0])
    with pytest.raises(ResiDualError, match=r"pixel tensor has shape .* expects \(n, 3, 32, 32\)"):
        model.trace(torch.zeros(shape))
    with pytest.raises(ResiDualError, match="dtype"):
        model.trace(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ResiDualError, match="must be a torch tensor"):
        model.trace(np.zeros((2, 3, 32, 32), dtype=np.float32))


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), mode="L")]  # grayscale -> RGB


def test_preprocessing_is_the_checkpoints_own(tmp_path, saved_models):
    import transformers as tf

    m, _ = build_hf("clip_vision_proj")
    m.save_pretrained(tmp_path / "with_proc")
    proc = tf.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                 image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    proc.save_pretrained(tmp_path / "with_proc")
    model = load_model(f"hf:{tmp_path / 'with_proc'}")
    px = model.preprocess(_images())
    assert px.shape == (2, 3, 28, 28) and px.dtype == torch.float32
    ref = proc(images=[im.convert("RGB") for im in _images()], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(px, ref)
    assert float(px.min()) >= -2.0 - 1e-6 and float(px.max()) <= 2.0 + 1e-6  # mean .5 / std .25
    # without a processor config: warn and fall back to the config's image size
    with pytest.warns(UserWarning, match="no image processor config"):
        bare = load_model(saved_models["vit"][0])
    assert bare.preprocess(_images()).shape == (2, 3, 32, 32)
    # open_clip: the validation transform from create_model_and_transforms
    oc = _load(saved_models["open_clip_mha"][0])
    assert oc.preprocess(_images()).shape == (2, 3, 32, 32)
    assert oc.tokenizer is not None and model.tokenizer is None


def test_hf_hub_id_offline_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = "from resi_dual import load_model\nload_model('clip_b')"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "ResiDualError: could not fetch the weights of 'clip_b'" in r.stderr
    assert "offline" in r.stderr


def test_cli_bad_spec_exits_2_with_one_line(tmp_path):
    exe = Path(sys.executable).parent / "resi-dual"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "resi_dual"]
    r = subprocess.run([*cmd, "trace", "--model", "nonsense:spec"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model spec 'nonsense:spec'")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_trace_prints_units_and_error(saved_models, capsys):
    spec = saved_models["dinov2"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_main(["trace", "--model", spec, "--batch", "3", "--units", "L1H0,L1.mlp,emb"]) == 0
    out = capsys.readouterr().out
    assert "family=dinov2" in out and "L1H0" in out and "L1.mlp" in out
    worst = float(out.split("‖/‖y‖ = ")[1].split()[0])
    assert 0 <= worst <= 1e-5
    assert cli_main(["trace", "--model", saved_models["vit"][0], "--batch", "0"]) == 2


def test_demo_specs_pass_folder_and_convention(monkeypatch):
    import resi_dual.models.demo as demo

    calls = []
    monkeypatch.setattr(demo, "load_demo", lambda path=None, convention="paper", device="cpu":
                        calls.append((path, convention, device)) or "m")
    assert load_model("demo") == "m" and load_model("demo:/some/ckpt", convention="centred") == "m"
    assert calls == [(None, "paper", torch.device("cpu")), ("/some/ckpt", "centred", torch.device("cpu"))]
