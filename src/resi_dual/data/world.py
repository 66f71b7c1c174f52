"""A world with ground truth (docs/DESIGN.md §13): seeded images of known attributes.

Every image is an object — a Fashion-MNIST garment, a scikit-learn digit or an Animal-MNIST
silhouette — drawn in one of :data:`COLOURS` at one of :data:`POSITIONS` and :data:`SIZES` on a
:data:`CANVAS`-pixel background of one of :data:`TEXTURES` in one of :data:`BACKGROUNDS`. The
attributes are drawn independently, and the generator keeps them: :class:`World` holds the images
and one integer array per attribute, so every pixel's cause is known.

The object is the source glyph cropped to its ink, scaled so its longer side is the size in pixels,
and used as an alpha mask: inside the stroke the pixel *is* the named colour (no background colour
equals an object colour), at its edges it blends into the background.

Held out of :func:`generate`'s ``combos="seen"`` (the pretraining world): the Animal-MNIST classes of
:data:`UNSEEN_ANIMALS` (zero-shot transfer, adaptation) and one colour per seen class
(:func:`heldout_colour`, composition). Splits draw their objects from disjoint source images: train
from the sources' train parts, val and test from the held-out parts.

Dataset specs (:mod:`resi_dual.data.specs`): ``world`` or ``world:attr=colour,objects=unseen,n=2000,seed=0``
labels each image by one attribute.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resi_dual.errors import ResiDualError

CANVAS = 32
#: object colours (RGB); all bright, so none equals a background shade
COLOURS = {
    "red": (230, 30, 30), "green": (40, 200, 40), "blue": (40, 90, 255), "yellow": (250, 225, 30),
    "magenta": (235, 40, 235), "cyan": (30, 220, 230), "orange": (255, 140, 0), "white": (255, 255, 255),
}
#: background colours (RGB); all dark
BACKGROUNDS = {
    "black": (0, 0, 0), "gray": (110, 110, 110), "navy": (20, 30, 140), "maroon": (130, 20, 30),
    "dark green": (20, 100, 30), "purple": (100, 30, 130),
}
#: background textures, named as captions say them
TEXTURES = ("plain", "striped", "dotted", "checkered")
#: named places (captions say "at the <place>")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
#: size names and the object's longer side in pixels
SIZES = {"small": 10, "medium": 15, "large": 20}

FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
DIGITS = [f"digit {d}" for d in range(10)]
ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
#: every object class, in label order: garments, digits, animals
CLASSES = FASHION + DIGITS + ANIMALS
#: Animal-MNIST classes never shown in pretraining
UNSEEN_ANIMALS = ("bird", "cow", "elephant", "horse", "sheep")
SEEN_CLASSES = [c for c in CLASSES if c not in UNSEEN_ANIMALS]

#: attribute name -> value names, in label order
ATTRIBUTES: dict[str, list[str]] = {
    "class": CLASSES, "colour": list(COLOURS), "texture": list(TEXTURES), "background": list(BACKGROUNDS),
    "position": list(POSITIONS), "size": list(SIZES),
}
#: zero-shot prompt templates per attribute (``{}`` is the value's name)
ATTRIBUTE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "class": ("a {}.", "a picture of a {}.", "a {} on a background."),
    "colour": ("something {}.", "a {} object.", "a {} thing on a background."),
    "texture": ("an object on a {} background.", "a {} background."),
    "background": ("an object on a {} background.", "a {} background."),
    "position": ("an object at the {}.", "something at the {}."),
    "size": ("a {} object.", "something {}."),
}
OBJECTS = ("seen", "unseen", "all")
COMBOS = ("seen", "heldout", "all")
SPLIT_SEED = 42  # source images' train/held-out split (data.splits)


def heldout_colour(class_index: np.ndarray | int) -> np.ndarray | int:
    """The colour index never paired with object class ``class_index`` in the pretraining world."""
    return (np.asarray(class_index) * 3 + 1) % len(COLOURS)


@dataclass
class World:
    """Images and their ground truth.

    Attributes:
        images: (n, CANVAS, CANVAS, 3) uint8.
        attrs: attribute name -> (n,) int64 value index into :data:`ATTRIBUTES`.
        source: (n,) int64 index of the glyph in its source pool (for provenance).
        jitter, phase: (n, 2) int64 layout details (the place's offset, the texture's phase).
        seed, split: how it was made.
    """

    images: np.ndarray
    attrs: dict[str, np.ndarray]
    source: np.ndarray
    jitter: np.ndarray
    phase: np.ndarray
    seed: int
    split: str

    def __len__(self) -> int:
        return len(self.images)

    def values(self, i: int) -> dict[str, str]:
        """Image ``i``'s attributes as names."""
        return {a: ATTRIBUTES[a][int(v[i])] for a, v in self.attrs.items()}


# -- source glyphs ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _pools(split: str) -> tuple[list[np.ndarray], ...]:
    """Per object class, the grey source glyphs (k, h, w) uint8 of one split's part of the sources."""
    from resi_dual.data.bundled import load_raw
    from resi_dual.data.splits import stratified_split

    fashion, digits, animals = load_raw("fashion-mnist"), load_raw("digits"), load_raw("animal-mnist")
    parts = []
    if split == "train":
        parts.append(fashion["train"])
    else:
        x, y = fashion["test"]
        half = np.arange(len(y)) % 2 == (0 if split == "val" else 1)
        parts.append((x[half], y[half]))
    for raw in (digits, animals):
        x, y = raw["train"]
        keep, held = stratified_split(y, 0.2, seed=SPLIT_SEED)
        if split != "train":
            held = held[(np.arange(len(held)) % 2) == (0 if split == "val" else 1)]
        idx = keep if split == "train" else held
        parts.append((x[idx], y[idx]))
    pools = []
    for offset, (x, y) in zip((0, 10, 20), parts):
        pools += [x[y == c] for c in range(10)]
    return tuple(pools)


def glyph_alpha(grey: np.ndarray, size: int) -> np.ndarray:
    """(h, w) float alpha in [0, 1], longer side ``size``: the glyph cropped to its ink, scaled, sharpened.

    Alpha is 1 over the stroke's body (where the image gets the exact colour) and ramps at its edges.
    """
    from PIL import Image

    ink = grey > 40
    if not ink.any():
        ink = grey >= grey.max()
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = np.asarray(Image.fromarray(crop).resize(new, Image.BILINEAR), dtype=np.float64)
    img /= max(img.max(), 1.0)
    return np.clip((img - 0.15) / 0.35, 0.0, 1.0)


def background(texture: int, colour: int, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(CANVAS, CANVAS, 3) uint8 background: the colour, patterned with a darker shade of it (grey on black)."""
    base = np.asarray(list(BACKGROUNDS.values())[colour], dtype=np.float64)
    shade = np.full(3, 60.0) if not base.any() else np.round(base * 0.45)
    y, x = np.mgrid[:CANVAS, :CANVAS]
    y, x = y + phase[0], x + phase[1]
    name = list(TEXTURES)[texture]
    if name == "plain":
        mask = np.zeros((CANVAS, CANVAS), bool)
    elif name == "striped":
        mask = ((x + y) // 3) % 2 == 1
    elif name == "dotted":
        mask = (x % 5 < 2) & (y % 5 < 2)
    else:
        mask = ((x // 4) + (y // 4)) % 2 == 1
    out = np.where(mask[..., None], shade, base)
    return out.astype(np.uint8)


def _box_origin(position: int, extent: tuple[int, int], jitter: tuple[int, int]) -> tuple[int, int]:
    """Top-left (row, col) of an object of (h, w) pixels at a named place, moved by up to 2 px."""
    name = list(POSITIONS)[position]
    h, w = extent
    jy, jx = jitter
    if name == "center":
        return (CANVAS - h) // 2 + jy - 1, (CANVAS - w) // 2 + jx - 1
    top = jy if name.startswith("top") else CANVAS - h - jy
    left = jx if name.endswith("left") else CANVAS - w - jx
    return top, left


def render(grey: np.ndarray, colour: int, texture: int, bg: int, position: int, size: int,
           jitter: tuple[int, int] = (0, 0), phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One (CANVAS, CANVAS, 3) uint8 image of the glyph ``grey`` with the given attribute indices."""
    alpha = glyph_alpha(grey, list(SIZES.values())[size])
    h, w = alpha.shape
    # the glyph's centre of mass goes to the centre of its size × size box (so the named place holds for
    # lopsided shapes too), the box sits at the place; the glyph stays on the canvas
    s = list(SIZES.values())[size]
    top, left = _box_origin(position, (s, s), jitter)
    ys, xs = np.mgrid[:h, :w]
    cy, cx = (ys * alpha).sum() / alpha.sum(), (xs * alpha).sum() / alpha.sum()
    top = int(np.clip(round(top + (s - 1) / 2 - cy), 0, CANVAS - h))
    left = int(np.clip(round(left + (s - 1) / 2 - cx), 0, CANVAS - w))
    out = background(texture, bg, phase).astype(np.float64)
    colour_rgb = np.asarray(list(COLOURS.values())[colour], dtype=np.float64)
    region = out[top:top + h, left:left + w]
    out[top:top + h, left:left + w] = alpha[..., None] * colour_rgb + (1 - alpha[..., None]) * region
    return np.rint(out).clip(0, 255).astype(np.uint8)


# -- the generator ----------------------------------------------------------------------------

def object_classes(objects: str) -> list[int]:
    """Class indices (into :data:`CLASSES`) of ``seen``, ``unseen`` or ``all`` objects."""
    if objects not in OBJECTS:
        raise ResiDualError(f"world objects must be one of {', '.join(OBJECTS)}, got {objects!r}")
    unseen = [CLASSES.index(a) for a in UNSEEN_ANIMALS]
    if objects == "unseen":
        return unseen
    return list(range(len(CLASSES))) if objects == "all" else [i for i in range(len(CLASSES)) if i not in unseen]


def generate(n: int, seed: int = 0, split: str = "train", objects: str = "seen", combos: str = "all") -> World:
    """``n`` world images, deterministic in (n, seed, split, objects, combos).

    Args:
        split: which part of the source images the objects come from (``train``, ``val``, ``test``).
        objects: ``seen`` (pretraining classes), ``unseen`` (:data:`UNSEEN_ANIMALS`) or ``all``.
        combos: ``seen`` drops each class's :func:`heldout_colour`, ``heldout`` keeps only it, ``all`` both.
    """
    if split not in ("train", "val", "test"):
        raise ResiDualError(f"world split must be train, val or test, got {split!r}")
    if combos not in COMBOS:
        raise ResiDualError(f"world combos must be one of {', '.join(COMBOS)}, got {combos!r}")
    if n < 0:
        raise ResiDualError(f"world size must be >= 0, got {n}")
    classes = np.asarray(object_classes(objects))
    pools = _pools(split)
    rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
    cls = classes[rng.integers(0, len(classes), n)]
    colour = rng.integers(0, len(COLOURS), n)
    if combos != "all":
        # redraw the colour among the allowed ones: uniform over the 7 others, or the held-out one
        held = heldout_colour(cls)
        if combos == "heldout":
            colour = held
        else:
            colour = (held + 1 + rng.integers(0, len(COLOURS) - 1, n)) % len(COLOURS)
    attrs = {
        "class": cls.astype(np.int64), "colour": colour.astype(np.int64),
        "texture": rng.integers(0, len(TEXTURES), n), "background": rng.integers(0, len(BACKGROUNDS), n),
        "position": rng.integers(0, len(POSITIONS), n), "size": rng.integers(0, len(SIZES), n),
    }
    jitter = rng.integers(0, 3, (n, 2))
    phase = rng.integers(0, 6, (n, 2))
    source = np.asarray([rng.integers(0, len(pools[c])) for c in cls], dtype=np.int64)
    images = np.empty((n, CANVAS, CANVAS, 3), np.uint8)
    for i in range(n):
        images[i] = render(pools[cls[i]][source[i]], int(colour[i]), int(attrs["texture"][i]), int(attrs["background"][i]),
                           int(attrs["position"][i]), int(attrs["size"][i]), tuple(jitter[i]), tuple(phase[i]))
    return World(images, {k: np.asarray(v, np.int64) for k, v in attrs.items()}, source, jitter, phase, seed, split)


def object_boxes(world: World) -> tuple[np.ndarray, np.ndarray]:
    """((n, CANVAS, CANVAS) bool object masks, (n, 4) boxes (top, left, bottom, right), ends exclusive): the
    object is where the image differs from its background (no background shade is an object colour)."""
    masks = np.zeros(world.images.shape[:3], bool)
    boxes = np.zeros((len(world), 4), np.int64)
    for i in range(len(world)):
        bg = background(int(world.attrs["texture"][i]), int(world.attrs["background"][i]), tuple(world.phase[i]))
        masks[i] = (world.images[i] != bg).any(-1)
        rows, cols = np.flatnonzero(masks[i].any(1)), np.flatnonzero(masks[i].any(0))
        boxes[i] = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
    return masks, boxes


# -- captions ---------------------------------------------------------------------------------

CAPTION_ORDER = ("size", "colour", "class", "position", "texture", "background")


def caption(values: dict[str, str]) -> str:
    """A caption naming exactly the attributes in ``values`` (any subset), e.g.
    ``a small red sneaker at the top left on a striped navy background``, ``something blue``, ``a digit 7``."""
    unknown = set(values) - set(ATTRIBUTES)
    if unknown:
        raise ResiDualError(f"unknown world attribute {sorted(unknown)[0]!r}")
    words = [values[a] for a in ("size", "colour") if a in values]
    if "class" in values:
        head = " ".join(words + [values["class"]])
        head = ("an " if head[0] in "aeiou" else "a ") + head
    elif words == [values.get("colour")]:
        head = f"something {values['colour']}"
    elif words:
        head = ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words + ["object"])
    else:
        head = "something"
    tail = []
    if "position" in values:
        tail.append(f"at the {values['position']}")
    if "texture" in values or "background" in values:
        bg = " ".join(([values["texture"]] if "texture" in values else [])
                      + ([values["background"]] if "background" in values else []))
        tail.append(f"on a {bg} background")
    return " ".join([head] + tail) + "."


def random_captions(world: World, rng: np.random.Generator, p: float = 0.5) -> tuple[list[str], np.ndarray]:
    """One caption per image naming a random subset of its attributes (each kept with probability ``p``;
    at least one). Returns (captions, named (n, len(ATTRIBUTES)) bool in :data:`ATTRIBUTES` order)."""
    names = list(ATTRIBUTES)
    named = rng.random((len(world), len(names))) < p
    empty = ~named.any(1)
    named[np.flatnonzero(empty), rng.integers(0, len(names), int(empty.sum()))] = True
    caps = []
    for i in range(len(world)):
        v = world.values(i)
        caps.append(caption({a: v[a] for j, a in enumerate(names) if named[i, j]}))
    return caps, named


# -- as a dataset -----------------------------------------------------------------------------

DEFAULT_N = {"train": 4000, "val": 1000, "test": 2000}


def parse_spec(arg: str) -> dict:
    """``attr=colour,objects=unseen,n=500,seed=1,combos=all`` -> settings (defaults filled in)."""
    out = {"attr": "class", "objects": "seen", "combos": "all", "seed": 0, "n": None}
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in out:
            raise ResiDualError(f"world spec: expected key=value with key in {', '.join(out)}, got {item!r}")
        out[key] = value
    if out["attr"] not in ATTRIBUTES:
        raise ResiDualError(f"world spec: attr must be one of {', '.join(ATTRIBUTES)}, got {out['attr']!r}")
    try:
        out["seed"] = int(out["seed"])
        out["n"] = None if out["n"] is None else int(out["n"])
    except ValueError:
        raise ResiDualError(f"world spec: seed and n must be integers ({arg!r})") from None
    object_classes(out["objects"])
    if out["combos"] not in COMBOS:
        raise ResiDualError(f"world spec: combos must be one of {', '.join(COMBOS)}, got {out['combos']!r}")
    return out


@functools.lru_cache(maxsize=8)
def cached_world(n: int, seed: int, split: str, objects: str, combos: str) -> World:
    """:func:`generate`, memoised (treat the arrays as read-only)."""
    return generate(n, seed, split, objects, combos)


def labels_and_names(world: World, attr: str, objects: str) -> tuple[np.ndarray, list[str]]:
    """(n,) labels of ``attr`` and its value names; ``class`` labels index the chosen objects only."""
    if attr != "class":
        return world.attrs[attr], list(ATTRIBUTES[attr])
    classes = object_classes(objects)
    remap = {c: i for i, c in enumerate(classes)}
    return np.asarray([remap[c] for c in world.attrs["class"]], np.int64), [CLASSES[c] for c in classes]


def write_folder(world: World, path: str | Path, attr: str = "class") -> Path:
    """Write the world as ``path/<value>/<index>.png`` plus ``path/attributes.tsv`` (every image's ground truth).

    Written under a temporary name and renamed, so the folder appears complete or not at all.
    """
    import os
    import shutil

    from PIL import Image

    if attr not in ATTRIBUTES:
        raise ResiDualError(f"unknown world attribute {attr!r}; choose one of {', '.join(ATTRIBUTES)}")
    path = Path(path)
    if path.exists():
        raise ResiDualError(f"{path} exists; choose a new folder")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = ["file\t" + "\t".join(ATTRIBUTES)]
    for i in range(len(world)):
        v = world.values(i)
        rel = f"{v[attr]}/{i:06d}.png"
        (tmp / v[attr]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(world.images[i]).save(tmp / rel)
        rows.append(rel + "\t" + "\t".join(v[a] for a in ATTRIBUTES))
    (tmp / "attributes.tsv").write_text("\n".join(rows) + "\n")
    tmp.rename(path)
    return path
