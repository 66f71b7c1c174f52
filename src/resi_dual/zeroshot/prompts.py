"""Class names and prompt templates for zero-shot classification, written for this project.

Keys are canonical dataset names (``ImageDataset.name``). ``{}`` in a template is replaced by the
class name. Every dataset of the paper has a class-name list shipped with the project: the small
label sets are spelled out here (:data:`CLASS_NAMES`); ImageNet (and ImageNet-Sketch, same 1000
labels), SUN397 and Stanford Cars are package data in ``resi_dual/assets/classnames/*.json``
(curated MIT lists, sources in the README there; :data:`CURATED`), each stored with the dataset's
raw label names (WordNet ids and synonyms, SUN397's ``ClassName.txt`` entries, ``cars_meta.mat``
names) in the label order of our torchvision loaders. When the dataset's own label names are known
(a torchvision, HF or folder dataset) the list is aligned to them through those raw names, so a
different order or a subset of the labels still gets the right names; names that match none of them (a
``--class-names FILE`` of the user's, another label set) are used as given, cleaned by
:func:`clean_class_name`, as are the names of datasets without a list here (bundled ``textiles``,
folders of other data).
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

from resi_dual.data.names import canonical_dataset
from resi_dual.errors import ResiDualError

GENERIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a drawing of a {}.",
    "a sketch of the {}.",
    "a painting of a {}.",
    "a rendering of a {}.",
    "art of the {}.",
    "a black and white photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a toy {}.",
    "a cartoon {}.",
    "itap of a {}.",
    "a {} in a video game.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "imagenet": GENERIC_TEMPLATES,
    "imagenet-sketch": (
        "a sketch of a {}.",
        "a pencil sketch of the {}.",
        "a black and white drawing of a {}.",
        "a rough sketch of a {}.",
        "a line drawing of the {}.",
        "a doodle of a {}.",
        "a hand-drawn {}.",
        "a sketch of the small {}.",
        "a sketch of the large {}.",
    ),
    "cifar10": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a low resolution photo of the {}.",
        "a pixelated photo of a {}.",
        "a tiny photo of the {}.",
        "a small photo of a {}.",
        "a bright photo of the {}.",
        "a dark photo of a {}.",
        "a cropped photo of the {}.",
        "a good photo of a {}.",
        "a drawing of a {}.",
        "art of the {}.",
    ),
    "mnist": (
        'a photo of the number: "{}".',
        'a handwritten digit "{}".',
        'the digit {} written by hand.',
        'a white digit {} on a black background.',
        'a scanned image of the number {}.',
    ),
    "svhn": (
        'a photo of the number: "{}".',
        'a house number "{}".',
        'the digit {} on a building.',
        'a street view photo of the number {}.',
        'a cropped photo of the house number digit {}.',
    ),
    "eurosat": (
        "a centered satellite photo of {}.",
        "a satellite image of {}.",
        "an aerial view of {}.",
        "a satellite photo of an area of {}.",
        "a multispectral satellite image of {}.",
    ),
    "gtsrb": (
        'a zoomed in photo of a "{}" traffic sign.',
        'a centered photo of a "{}" traffic sign.',
        'a close up photo of a "{}" traffic sign.',
        'a photo of the road sign "{}".',
        'a blurry photo of a "{}" traffic sign.',
    ),
    "dtd": (
        "a photo of a {} texture.",
        "a photo of a {} pattern.",
        "a photo of a {} thing.",
        "a photo of a {} object.",
        "a close-up photo of a {} surface.",
        "a {} material.",
    ),
    "resisc45": (
        "satellite imagery of {}.",
        "aerial imagery of {}.",
        "a satellite photo of the {}.",
        "an aerial photo of a {}.",
        "a remote sensing image of {}.",
        "an overhead view of the {}.",
    ),
    "sun397": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo taken in a {}.",
        "a wide photo of the {}.",
        "a scene of a {}.",
        "an image of the {} scene.",
    ),
    "stanford-cars": (
        "a photo of a {}.",
        "a photo of the {}, a type of car.",
        "a photo of my {}.",
        "a photo of my old {}.",
        "a photo of my new {}.",
        "a close-up photo of a {}.",
        "a {} parked on the street.",
    ),
    "pacs": (
        "a photo of a {}.",
        "an art painting of a {}.",
        "a cartoon of a {}.",
        "a sketch of a {}.",
        "a drawing of the {}.",
        "an image of a {}.",
    ),
    "fashion-mnist": (
        "a photo of a {}.",
        "a grayscale photo of a {}.",
        "a low resolution image of a {}.",
        "a product photo of a {}.",
        "a white {} on a black background.",
        "a piece of clothing: a {}.",
    ),
    "digits": (
        'a photo of the number: "{}".',
        "a handwritten digit {}.",
        "a tiny pixelated digit {}.",
        "the number {} written by hand.",
        "a low resolution scan of the digit {}.",
    ),
    "animal-mnist": (
        "a silhouette of a {}.",
        "a photo of a {}.",
        "a white shape of a {} on a black background.",
        "a low resolution image of a {}.",
        "an outline of a {}.",
        "a drawing of a {}.",
    ),
    "textiles": (
        "a photo of a {} textile.",
        "a close-up photo of {} fabric.",
        "a photo of a piece of {} cloth.",
        "a macro photo of {} woven material.",
        "a texture of {} fabric.",
    ),
}
TEMPLATES["cifar100"] = TEMPLATES["cifar10"]

_WNID = re.compile(r"^n\d{8}$")

_DIGITS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar100": (
        "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
        "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
        "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
        "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
        "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
        "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
        "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
        "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
        "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
        "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
    ),
    "mnist": _DIGITS,
    "svhn": _DIGITS,
    "digits": _DIGITS,
    "eurosat": (
        "annual crop land", "forest", "brushland or shrubland", "highway or road", "industrial buildings",
        "pasture land", "permanent crop land", "residential buildings", "river", "sea or lake",
    ),
    "gtsrb": (
        "speed limit 20 km/h", "speed limit 30 km/h", "speed limit 50 km/h", "speed limit 60 km/h",
        "speed limit 70 km/h", "speed limit 80 km/h", "end of speed limit 80 km/h", "speed limit 100 km/h",
        "speed limit 120 km/h", "no overtaking", "no overtaking by trucks", "right of way at the next intersection",
        "priority road", "yield", "stop", "no vehicles", "no trucks", "no entry", "general caution",
        "dangerous curve to the left", "dangerous curve to the right", "double curve", "bumpy road",
        "slippery road", "road narrows on the right", "road work", "traffic signals", "pedestrians",
        "children crossing", "bicycles crossing", "beware of ice or snow", "wild animals crossing",
        "end of all speed and overtaking limits", "turn right ahead", "turn left ahead", "ahead only",
        "go straight or right", "go straight or left", "keep right", "keep left", "roundabout mandatory",
        "end of no overtaking", "end of no overtaking by trucks",
    ),
    "dtd": (
        "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
        "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved",
        "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley",
        "perforated", "pitted", "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled",
        "sprinkled", "stained", "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven",
        "wrinkled", "zigzagged",
    ),
    "resisc45": (
        "airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral", "church",
        "circular farmland", "cloud", "commercial area", "dense residential area", "desert", "forest", "freeway",
        "golf course", "ground track field", "harbor", "industrial area", "intersection", "island", "lake",
        "meadow", "medium residential area", "mobile home park", "mountain", "overpass", "palace", "parking lot",
        "railway", "railway station", "rectangular farmland", "river", "roundabout", "runway", "sea ice", "ship",
        "snowberg", "sparse residential area", "stadium", "storage tank", "tennis court", "terrace",
        "thermal power station", "wetland",
    ),
    "pacs": ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
    "fashion-mnist": (
        "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
    ),
    # labels 0-9 are alphabetical in the animal-mnist package (docs/DESIGN.md §9)
    "animal-mnist": ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"),
}

#: datasets whose own label names are used (after cleaning) rather than a list shipped with the project
DATASET_NAMED: tuple[str, ...] = ("textiles",)

#: canonical dataset name -> its class-name file in ``resi_dual/assets/classnames`` (without ``.json``)
CURATED: dict[str, str] = {
    "imagenet": "imagenet", "imagenet-sketch": "imagenet", "sun397": "sun397", "stanford-cars": "stanford-cars",
}


@dataclass(frozen=True)
class CuratedNames:
    """A shipped class-name list: ``names[i]`` names label ``i``; ``keys[kind][i]`` is that label's raw name."""

    dataset: str
    names: tuple[str, ...]
    keys: dict[str, tuple[str, ...]]


@functools.lru_cache(maxsize=None)
def curated_names(dataset: str | None) -> CuratedNames | None:
    """The shipped class-name list of ``dataset`` (aliases folded), or None when it has none."""
    stem = CURATED.get(canonical(dataset))
    if stem is None:
        return None
    path = resources.files("resi_dual") / "assets" / "classnames" / f"{stem}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        names = tuple(doc["names"])
        keys = {k: tuple(v) for k, v in doc["keys"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResiDualError(f"class-name list {path} of the package is missing or broken ({e})") from None
    bad = [k for k, v in keys.items() if len(v) != len(names)]
    if bad or not names:
        raise ResiDualError(f"class-name list {path} is inconsistent: {len(names)} names, keys {bad} of other lengths")
    return CuratedNames(canonical(dataset), names, keys)


def _match_key(raw) -> str:
    """What two spellings of one raw label name have in common (case, ``_``, ``/``, synonyms after the first)."""
    return re.sub(r"[\s_/]+", " ", clean_class_name(raw)).strip().lower()


def align_curated(curated: CuratedNames, dataset_class_names: Sequence) -> list[str] | None:
    """The shipped names in the order of ``dataset_class_names``, or None when those are not its labels.

    Tries each kind of raw key (then the shipped names themselves) on its own; a kind fits when every
    dataset name matches one of its keys. A key that names several labels (ImageNet's two ``crane``
    and two ``maillot`` synsets share their first synonym) is taken in order of occurrence when the
    dataset has all of them; when it has fewer, which one it has is unknown and such a label keeps the
    dataset's own (cleaned) name.
    """
    wanted = [_match_key(c) for c in dataset_class_names]
    counts = Counter(wanted)
    for keys in (*curated.keys.values(), curated.names):
        where: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            where.setdefault(_match_key(k), []).append(i)
        total = {k: len(v) for k, v in where.items()}
        out: list[str] = []
        for raw, k in zip(dataset_class_names, wanted):
            hits = where.get(k)
            if not hits:
                break
            i = hits.pop(0)
            out.append(curated.names[i] if total[k] == 1 or counts[k] == total[k] else clean_class_name(raw))
        else:
            return out
    return None


canonical = canonical_dataset  # the data stage owns dataset names


def templates_for(dataset: str | None) -> tuple[str, ...]:
    """Prompt templates for ``dataset``; the generic photo set when the dataset is unknown.

    The generated world (``world-<attribute>``) uses the templates its generator defines per attribute.
    """
    key = canonical(dataset)
    if key.startswith("world-"):
        from resi_dual.data.world import ATTRIBUTE_TEMPLATES

        if key[6:] in ATTRIBUTE_TEMPLATES:
            return ATTRIBUTE_TEMPLATES[key[6:]]
    return TEMPLATES.get(key, GENERIC_TEMPLATES)


def clean_class_name(raw: str) -> str:
    """A readable class name from a dataset's raw label name.

    Synonym lists keep the first synonym (``"tench, Tinca tinca"`` or torchvision's
    ``("tench", "Tinca tinca")`` → ``tench``);
    SUN397 paths drop their prefix and reorder qualifiers (``/b/bedroom`` → ``bedroom``,
    ``/a/apartment_building/outdoor`` → ``apartment building outdoor``); underscores become spaces.
    """
    if isinstance(raw, (tuple, list)) and raw:  # torchvision ImageNet: a tuple of synonyms
        raw = raw[0]
    name = str(raw).strip()
    if name.startswith(("(", "[")):  # the str() of such a tuple
        name = name.lstrip("([").split(",")[0].strip().strip("'\"")
    if "," in name:
        name = name.split(",")[0]
    if name.startswith("/"):
        parts = [p for p in name.split("/") if p]
        name = " ".join(parts[1:] if len(parts) > 1 and len(parts[0]) == 1 else parts)
    name = re.sub(r"[_]+", " ", name)
    return re.sub(r"\s+", " ", name).strip()


def class_names_for(dataset: str | None, dataset_class_names: Sequence[str] | None, n_classes: int | None = None) -> list[str]:
    """Class names used in prompts, one per label.

    Args:
        dataset: canonical dataset name (``source.meta.dataset_name``); may be None.
        dataset_class_names: the dataset's own label names (``source.class_names``).
        n_classes: number of labels that must be named (max label + 1); checked when given.
    Raises:
        ResiDualError: a label has no name.
    """
    key = canonical(dataset)
    own = list(dataset_class_names or [])
    curated = curated_names(key)
    if key in CLASS_NAMES:
        names = list(CLASS_NAMES[key])
        if own and len(own) != len(names):
            # a subset or re-ordering of the dataset: trust the dataset's own names
            names = [clean_class_name(c) for c in own]
    elif curated is not None and own:
        # the shipped list, aligned to the dataset's labels; else (a names file, another label set) its own
        names = align_curated(curated, own) or [clean_class_name(c) for c in own]
    elif curated is not None:
        if n_classes is not None and n_classes != len(curated.names):
            raise ResiDualError(
                f"dataset {dataset} has {n_classes} labels but no label names, and the project's {key} list names "
                f"{len(curated.names)}: encode it with `resi-dual encode --class-names FILE` (one name per line)"
            )
        names = list(curated.names)
    else:
        names = [clean_class_name(c) for c in own]
    if n_classes is not None and len(names) < n_classes:
        raise ResiDualError(
            f"class name missing for label {len(names)} of dataset {dataset or '?'}: {len(names)} names for {n_classes} labels"
        )
    if names and all(_WNID.match(n) for n in names):
        raise ResiDualError(
            f"the class names of {dataset or 'this dataset'} are WordNet ids ({names[0]} …), not words: "
            "encode it with `resi-dual encode --class-names FILE` (one readable name per line, in label order)"
        )
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ResiDualError(f"class name missing for label {empty[0]} of dataset {dataset or '?'}")
    return names
