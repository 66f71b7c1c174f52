"""Datasets: labelled images from folders, torchvision, Hugging Face and the bundled offline sets.

``load_dataset(spec, split)`` is the one entry point (see :mod:`resi_dual.data.specs`); splits follow
the paper (:mod:`resi_dual.data.splits`); raw offline arrays live in :mod:`resi_dual.data.bundled`.
"""

from resi_dual.data.base import BadImageError, ImageDataset, SubsetDataset, open_image, to_rgb
from resi_dual.data.specs import load_dataset
from resi_dual.data.splits import stratified_limit, stratified_split, three_way_split

__all__ = [
    "BadImageError", "ImageDataset", "SubsetDataset", "load_dataset", "open_image", "to_rgb",
    "stratified_limit", "stratified_split", "three_way_split",
]
