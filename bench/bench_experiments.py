"""Per-image costs behind docs/REPRODUCING.md: tracing and storing at the paper's model sizes.

Random-weight HF ``CLIPVisionModelWithProjection`` towers the size of ViT-B/16 (12 layers × 12 heads,
width 768, 224 px, output 512) and ViT-L/14 (24 × 16, width 1024, 224 px, output 768), traced on this
CPU. Rows:

* seconds per image of ``trace`` (ours) against the library's plain ``embed`` forward (baseline),
  same batch, same run: the ratio is the price of the decomposition;
* bytes per image of a store (float16 raw encodings, as written by ``encode_store``) against the
  float32 per-unit contributions ``(U, d_out)`` it replaces: the ratio is the saving on disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TITLE = "Per-image cost of tracing and storing at paper sizes (ViT-B/16, ViT-L/14; CPU)"

SIZES = {
    "ViT-B/16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     image_size=224, patch_size=16, projection_dim=512),
    "ViT-L/14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=14, projection_dim=768),
}


def _traced(cfg: dict):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from resi_dual.models.tracing.hf_clip import HFClipTraced

    torch.manual_seed(0)
    lib = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg)).eval()
    return HFClipTraced("bench", lib, _to_pixels, 224, patch_size=cfg["patch_size"])


def _to_pixels(images: list) -> torch.Tensor:
    """(n, 3, 224, 224) from PIL images (resized), scaled to [0, 1]."""
    arr = [np.asarray(im.convert("RGB").resize((224, 224)), dtype=np.float32).transpose(2, 0, 1) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arr))


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _store_bytes_per_image(model, n: int) -> float:
    """Bytes per image of a float16 store of ``n`` noise images (chunks + fixed files amortised away)."""
    from resi_dual.experiments.grid import noise_dataset
    from resi_dual.store.disk import CHUNKS
    from resi_dual.store.writer import EncodeConfig, encode_store

    with tempfile.TemporaryDirectory() as tmp:
        encode_store(model, noise_dataset(n, 224, 0), Path(tmp) / "s", EncodeConfig(batch_size=n, dtype="float16", progress=False))
        chunks = sum(p.stat().st_size for p in (Path(tmp) / "s" / CHUNKS).rglob("*") if p.is_file())
    return chunks / n


def run() -> list[dict]:
    rows = []
    for name, cfg in SIZES.items():
        model = _traced(cfg)
        batch = 8 if name == "ViT-B/16" else 4
        pixels = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            model.trace(pixels[:1])  # warm-up
            t_embed = _best(lambda: model.embed(pixels), 2) / batch
            t_trace = _best(lambda: model.trace(pixels), 2) / batch
        rows.append(dict(what=f"{name}: trace, seconds per image (batch {batch})", ours=t_trace, baseline=t_embed,
                         baseline_name="plain embed forward", unit="s", ratio=t_trace / t_embed, target="≤ 1.5",
                         met=t_trace / t_embed <= 1.5, note="REPRODUCING.md scales these to one GPU"))
        comp = model.composition
        per_image = _store_bytes_per_image(model, 8)
        contributions = len(comp.units) * comp.d_out * 4
        rows.append(dict(what=f"{name}: store bytes per image (float16)", ours=per_image, baseline=contributions,
                         baseline_name="float32 per-unit contributions (U × d_out)", unit="B",
                         ratio=contributions / per_image, target="≥ 5", met=contributions / per_image >= 5,
                         note=f"U = {len(comp.units)} units, d_out = {comp.d_out}"))
    return rows
