"""The one way an image file or PIL image becomes the 8-bit RGB every model sees.

Every command (``encode`` through the datasets, ``apply``, ``trace``) and every tracer's
``preprocess`` go through :func:`to_rgb`, so an adapter is applied to exactly the pixels it was
trained on, whatever the file's mode (RGBA, palette with transparency, 16-bit, CMYK …).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from resi_dual.errors import ResiDualError


class BadImageError(ResiDualError):
    """An image that cannot be read (corrupt, truncated, zero bytes); ``where`` names it (a path)."""

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"cannot read image {where}: {reason}")

    def __reduce__(self):
        # rebuilt from (where, reason) when it crosses from a DataLoader worker process
        return type(self), (self.where, self.reason)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grayscale, 16-bit/float grayscale, palette, CMYK, LA/RGBA.

    Transparent pixels are composited on black (the bundled sets are white on black); 16-bit and float
    grayscale are scaled by their own range, because ``convert("RGB")`` would clip them at 255.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.rint(a).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file fully (so truncation is caught here) and return it as RGB.

    Raises:
        BadImageError: naming the file (missing, zero bytes, corrupt, truncated, decompression bomb).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(str(path), "zero-byte file")
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(str(path), "no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(str(path), str(e) or type(e).__name__) from None
