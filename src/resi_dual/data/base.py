"""Labelled image datasets: one small interface over folders, arrays, torchvision and HF datasets.

An :class:`ImageDataset` is a ``torch.utils.data.Dataset`` whose items are ``(PIL RGB image, int
label)``. It also knows every label without decoding a single image (``labels``), which is what the
seeded stratified splits and the stratified ``--limit`` need, the class names, and a stable string id
per sample (a relative path where there is one) that the store records next to each row.

Images that cannot be decoded raise :class:`BadImageError`, whose message names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import numpy as np
import torch
from PIL import Image

from resi_dual.core.images import BadImageError, open_image, to_rgb  # noqa: F401 - re-exported for data users
from resi_dual.errors import ResiDualError

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)


class ImageDataset(torch.utils.data.Dataset):
    """Base class. Subclasses set ``spec``, ``name``, ``split``, ``class_names``, ``labels`` and implement
    ``_image(i)`` (a PIL image, any mode) and optionally ``sample_id(i)``.

    Attributes:
        spec: the dataset spec string it was loaded from (``folder:/data/pets``, ``cifar10`` …).
        name: canonical short key (``cifar10``, ``fashion-mnist``, ``textiles`` …).
        split: ``train``, ``val`` or ``test``.
        class_names: list of C names; label ``k`` is ``class_names[k]``.
        labels: (n,) int64, all labels, known without decoding images.
    """

    spec: str
    name: str
    split: str
    class_names: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return int(len(self.labels))

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.image(i), int(self.labels[i])

    def image(self, i: int) -> Image.Image:
        """Image ``i`` as RGB; raises :class:`BadImageError` naming the sample when it cannot be read."""
        try:
            return to_rgb(self._image(i))
        except BadImageError:
            raise
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImageError(self.describe(i), str(e) or type(e).__name__) from None

    def _image(self, i: int) -> Image.Image:
        raise NotImplementedError

    def sample_id(self, i: int) -> str:
        """A stable id for sample ``i`` (relative path, or ``<split>/<index>``)."""
        return f"{self.split}/{i}"

    def describe(self, i: int) -> str:
        """Where sample ``i`` comes from, for error messages (a full path when there is one)."""
        return f"{self.spec} [{self.split}] sample {self.sample_id(i)}"

    def subset(self, indices: Sequence[int] | np.ndarray, split: str | None = None) -> "SubsetDataset":
        return SubsetDataset(self, indices, split)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, split={self.split!r}, n={len(self)}, classes={len(self.class_names)})"


class SubsetDataset(ImageDataset):
    """Rows ``indices`` of another dataset, in that order (how derived splits are made)."""

    def __init__(self, base: ImageDataset, indices: Sequence[int] | np.ndarray, split: str | None = None) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.spec, self.name, self.class_names = base.spec, base.name, base.class_names
        self.split = split or base.split
        self.labels = np.asarray(base.labels)[self.indices]

    def _image(self, i: int) -> Image.Image:
        return self.base.image(int(self.indices[i]))

    def sample_id(self, i: int) -> str:
        return self.base.sample_id(int(self.indices[i]))

    def describe(self, i: int) -> str:
        return self.base.describe(int(self.indices[i]))


class ArrayDataset(ImageDataset):
    """Images held as a uint8 array (n, H, W) or (n, H, W, 3) (the bundled sets)."""

    def __init__(self, spec: str, name: str, split: str, images: np.ndarray, labels: np.ndarray,
                 class_names: Sequence[str], id_prefix: str | None = None) -> None:
        if len(images) != len(labels):
            raise ResiDualError(f"{spec}: {len(images)} images but {len(labels)} labels")
        self.spec, self.name, self.split = spec, name, split
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.id_prefix = id_prefix if id_prefix is not None else split

    def _image(self, i: int) -> Image.Image:
        a = np.asarray(self.images[i], dtype=np.uint8)
        return Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB")

    def sample_id(self, i: int) -> str:
        return f"{self.id_prefix}/{i}"


class FileDataset(ImageDataset):
    """Image files with labels; ids are paths relative to ``root``."""

    def __init__(self, spec: str, name: str, split: str, root: Path, paths: Sequence[Path],
                 labels: Sequence[int], class_names: Sequence[str]) -> None:
        self.spec, self.name, self.split = spec, name, split
        self.root = Path(root)
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)

    def image(self, i: int) -> Image.Image:
        return open_image(self.paths[i])

    def sample_id(self, i: int) -> str:
        try:
            return self.paths[i].relative_to(self.root).as_posix()
        except ValueError:
            return self.paths[i].as_posix()

    def describe(self, i: int) -> str:
        return str(self.paths[i])


class CallableDataset(ImageDataset):
    """Images fetched by a function ``get(i) -> PIL image`` (torchvision and HF wrappers)."""

    def __init__(self, spec: str, name: str, split: str, get: Callable[[int], Image.Image], labels: np.ndarray,
                 class_names: Sequence[str], ids: Callable[[int], str] | None = None,
                 where: Callable[[int], str] | None = None) -> None:
        self.spec, self.name, self.split = spec, name, split
        self._get, self._ids, self._where = get, ids, where
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)

    def _image(self, i: int) -> Image.Image:
        return self._get(i)

    def sample_id(self, i: int) -> str:
        return self._ids(i) if self._ids else f"{self.split}/{i}"

    def describe(self, i: int) -> str:
        return self._where(i) if self._where else super().describe(i)
