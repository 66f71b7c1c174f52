"""Dataset names: one canonical spelling, so val fractions, prompts and class-name lists agree on it."""

from __future__ import annotations

import re

#: other spellings of a dataset (after lower-casing, separators as ``-``) -> its canonical name, the key
#: of val fractions (``splits.VAL_FRACTION``), prompt templates and class-name lists
DATASET_ALIASES = {
    "cifar-10": "cifar10", "cifar-100": "cifar100", "euro-sat": "eurosat", "sun-397": "sun397",
    "cars": "stanford-cars", "stanfordcars": "stanford-cars",
    "imagenet1k": "imagenet", "imagenet-1k": "imagenet", "imagenetsketch": "imagenet-sketch",
    "fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "animal": "animal-mnist", "animalmnist": "animal-mnist",
    "textile": "textiles", "sklearn-digits": "digits",
    "nwpu-resisc45": "resisc45", "resisc-45": "resisc45", "dtd-textures": "dtd",
}


def canonical_dataset(name: str | None) -> str:
    """A dataset's canonical name: lower case, each run of other characters than letters and digits
    as one ``-`` (``Stanford_Cars`` -> ``stanford-cars``), known aliases folded (``StanfordCars`` too)."""
    key = re.sub(r"[^a-z0-9]+", "-", (name or "").strip().lower()).strip("-")
    return DATASET_ALIASES.get(key, key)
