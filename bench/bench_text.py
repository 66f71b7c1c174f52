"""Text towers at the cost of their real tokens: the bundled dictionary (4,325 lines) through an
open_clip ViT-B/32 text tower (random weights: the cost depends on the shapes only), trimmed to each
sorted batch's longest real sequence vs. the full 77-token context, with the two embeddings compared.
"""

from __future__ import annotations

import time

import torch

TITLE = "Text towers: the bundled dictionary through an open_clip ViT-B/32 text tower, trimmed vs 77 tokens"


def _tower_pair():
    import open_clip

    from resi_dual.models.text import TextTower, get_text_tower

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    trimmed = get_text_tower(model)
    tok = open_clip.get_tokenizer("ViT-B-32")
    full = TextTower(lambda b: model.encode_text(tok(b), normalize=False), trimmed.logit_scale, "full-context")
    return trimmed, full


def run(limit: int | None = None, every: int = 8) -> list[dict]:
    """The trimmed tower on every line; the full-context tower on every ``every``-th line, scaled to
    the whole dictionary (at 77 tokens a text costs the same whatever its length, and the whole
    dictionary would take tens of minutes); equality is checked on that subset."""
    from resi_dual.interpret.units import load_dictionary
    from resi_dual.models.text import clear_cache

    texts = load_dictionary()[:limit]
    subset = texts[::every]
    trimmed, full = _tower_pair()
    trimmed.encode(texts[:8]), full.encode(texts[:8])  # first-call costs are not timed
    clear_cache()
    t0 = time.perf_counter()
    a = trimmed.encode(texts)
    t_trim = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = full.encode(subset)
    t_full = (time.perf_counter() - t0) * len(texts) / len(subset)
    rel = float((a[::every] - b).norm() / b.norm())
    ratio = t_full / t_trim
    return [dict(what=f"{len(texts)} dictionary lines, batch 256", ours=t_trim, baseline=t_full,
                 baseline_name=f"77 tokens, timed on {len(subset)} lines and scaled", unit="s", ratio=ratio,
                 target="≥ 3×", met=bool(ratio >= 3 and rel <= 1e-6),
                 note=f"relative error of the embeddings {rel:.1e}; {torch.get_num_threads()} torch threads")]


if __name__ == "__main__":  # pragma: no cover
    import sys

    for row in run(int(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(row)
