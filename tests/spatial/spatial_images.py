"""Images whose object's place is known: digits drawn on one half of a black canvas."""

from __future__ import annotations

import numpy as np
from PIL import Image


def half_canvas_digits(n: int, seed: int = 0, side: int = 28, digit: int = 12):
    """``n`` (image, side, label) triples: a scikit-learn digit (``digit`` px) pasted at a random height
    on the left (side 0) or right (side 1) half of a black ``side`` px canvas."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(len(d.images)))
        glyph = Image.fromarray(np.rint(d.images[k] * 255 / 16).astype(np.uint8)).resize((digit, digit), Image.Resampling.BICUBIC)
        canvas = Image.new("L", (side, side), 0)
        half = int(rng.integers(2))
        x = int(rng.integers(0, side // 2 - digit + 1)) if half == 0 else int(rng.integers(side // 2, side - digit + 1))
        canvas.paste(glyph, (x, int(rng.integers(0, side - digit + 1))))
        out.append((canvas.convert("RGB"), half, int(d.target[k])))
    return out

