"""Spatial maps drawn over images: signed heatmap overlays and thumbnails (PNG).

A map is the (rows, cols) patch grid of :mod:`resi_dual.models.spatial`. It is upsampled bilinearly
to the displayed square and drawn red where positive and blue where negative, with opacity growing
with |value| / max |value|, so the image stays visible where the map is near zero. The displayed
square is the image's centre crop, the region CLIP-style preprocessing (shortest-edge resize, centre
crop) feeds the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: colours of positive and negative map values (RGB)
POSITIVE, NEGATIVE = np.array([230.0, 30.0, 30.0]), np.array([40.0, 90.0, 230.0])


def center_square(img: Image.Image, side: int) -> Image.Image:
    """The centre square crop of ``img`` resized to ``side`` × ``side`` (RGB)."""
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return img.crop(box).resize((side, side), Image.Resampling.BICUBIC)


def upsample(grid: np.ndarray, side: int) -> np.ndarray:
    """(side, side) float32 bilinear upsampling of a (rows, cols) map."""
    g = np.asarray(grid, dtype=np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay(img: Image.Image, grid: np.ndarray, side: int = 224, max_alpha: float = 0.7,
            scale: float | None = None) -> Image.Image:
    """``img`` (centre square, ``side`` px) with the signed map ``grid`` (rows, cols) drawn over it.

    ``scale`` fixes the |value| that gets full opacity (default: the map's own max |value|)."""
    base = np.asarray(center_square(img, side), dtype=np.float32)
    m = upsample(grid, side)
    s = float(scale) if scale else float(np.abs(m).max())
    a = np.clip(np.abs(m) / s, 0.0, 1.0)[..., None] * max_alpha if s > 0 else np.zeros((side, side, 1), np.float32)
    colour = np.where(m[..., None] >= 0, POSITIVE, NEGATIVE)
    out = base * (1.0 - a) + colour * a
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` as an optimised PNG at ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)
    return path
