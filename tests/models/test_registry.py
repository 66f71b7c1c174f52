"""The model-family registry: lookup, short names, spec dispatch, fingerprints, one-line refusals."""

from __future__ import annotations

import os

import pytest
import torch

import resi_dual
from resi_dual.errors import ResiDualError
from resi_dual.models import registry
from resi_dual.models.demo import DEMO_DIR


def test_list_models_names_each_family_once_with_its_spec_form():
    fams = resi_dual.list_models()
    names = [f.name for f in fams]
    assert len(names) == len(set(names))
    assert names[:4] == ["hf-clip", "blip", "vit", "dinov2"] and names[-1] == "demo"  # FAMILY_MODULES order
    by = {f.name: f for f in fams}
    assert by["hf-clip"].short_names["clip_b"] == "hf:openai/clip-vit-base-patch16"
    assert by["demo"].spec_form == "demo | demo:<folder>" and by["vit"].spec_form.startswith("hf:")
    assert all(f.tracer.family == f.name for f in fams)  # the tracer's Composition.family is the family
    assert registry.get_family("open_clip").scheme == "open_clip"
    assert repr(by["vit"]) == "Family('vit', hf:<hub id or dir>; vit_l=hf:google/vit-large-patch16-224)"
    with pytest.raises(ResiDualError, match="unknown model family 'nope'; registered: hf-clip, blip"):
        registry.get_family("nope")


def test_every_short_name_resolves_to_a_spec_of_its_family():
    for fam in registry.families():
        for short, spec in fam.short_names.items():
            assert registry.resolve_spec(f"  {short} ") == spec
            assert spec.startswith(fam.scheme + ":")
            assert registry.split_spec(spec)[0].load is fam.load


def test_unknown_spec_lists_the_spec_forms_and_short_names():
    with pytest.raises(ResiDualError) as info:
        registry.split_spec("nonsense:spec")
    msg = str(info.value)
    assert msg.startswith("unknown model spec 'nonsense:spec': expected ")
    assert "hf:<hub id or dir>" in msg and "demo | demo:<folder>" in msg and "clip_b" in msg
    with pytest.raises(ResiDualError, match="unknown model spec 'hf'"):
        registry.split_spec("hf")  # a scheme without its colon


def test_a_clashing_short_name_or_a_second_loader_is_refused():
    with pytest.raises(ResiDualError, match="short name 'clip_b' of other is already taken by hf-clip"):
        registry.register_family(name="other", summary="", scheme="x", load=print,
                                 short_names={"clip_b": "x:y"})(type("T", (), {}))
    with pytest.raises(ResiDualError, match="family other loads hf: specs differently from hf-clip"):
        registry.register_family(name="other", summary="", scheme="hf", load=print)(type("T", (), {}))
    assert "other" not in {f.name for f in registry.families()}


def test_weights_fingerprint_follows_local_files(tmp_path):
    assert registry.weights_fingerprint("clip_b") == "hf:openai/clip-vit-base-patch16"  # a hub id: the spec
    (tmp_path / "config.json").write_text("{}")
    first = registry.weights_fingerprint(f"hf:{tmp_path}")
    assert first.startswith(f"hf:{tmp_path}#")
    os.utime(tmp_path / "config.json", ns=(1, 1))
    assert registry.weights_fingerprint(f"hf:{tmp_path}") != first
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"x")
    assert registry.weights_fingerprint(f"open_clip:ViT-B-32@{ckpt}").startswith(f"open_clip:ViT-B-32@{ckpt}#")
    demo = registry.weights_fingerprint("demo")
    assert demo.startswith("demo#") and registry.weights_fingerprint(f"demo:{DEMO_DIR}") != demo


def test_library_objects_find_their_text_family():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    m = open_clip.CLIP(embed_dim=8, vision_cfg=CLIPVisionCfg(layers=1, width=16, head_width=8, patch_size=8, image_size=16),
                       text_cfg=CLIPTextCfg(context_length=16, vocab_size=64, width=16, heads=2, layers=1))
    assert registry.library_family(m).name == "open_clip"
    assert registry.library_family(torch.nn.Linear(2, 2)) is None


def test_demo_is_loaded_by_its_family_without_patching():
    from resi_dual.models.demo import DemoTraced

    model = resi_dual.load_model("demo", convention="centred")
    assert type(model) is DemoTraced and model.family == "demo"
    assert model.spec == model.composition.model_id == "demo" and model.convention == "centred"
    assert model.text_tower.d_out == model.composition.d_out == 384


def test_grid_loads_demo_checkpoints_with_its_convention(monkeypatch, tmp_path):
    """A ``demo:<folder>`` model in a grid follows the grid's convention like every other spec."""
    import resi_dual.models.demo as demo
    from resi_dual.experiments.config import ModelEntry
    from resi_dual.experiments.grid import Grid

    calls = []
    monkeypatch.setattr(demo, "load_demo", lambda path=None, convention="paper", device="cpu":
                        calls.append((path, convention)) or "m")
    cfg = type("Cfg", (), {"convention": "centred"})()
    grid = Grid(cfg, tmp_path, progress=False)
    assert grid.model(ModelEntry("d", f"demo:{DEMO_DIR}")) == "m"
    assert calls == [(str(DEMO_DIR), "centred")]
