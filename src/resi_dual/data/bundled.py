"""Real labelled images that are available offline (docs/DESIGN.md §9), as raw uint8 arrays.

``load_raw(name)`` returns ``dict(train=(images, labels), test=(images, labels) or None,
class_names=[...])`` with images uint8 ``(n, H, W)`` (grayscale) or ``(n, H, W, 3)`` (RGB) and labels
int64 ``(n,)``. Sources:

* ``fashion-mnist`` — Debian ``dataset-fashion-mnist`` (IDX ``.gz`` files in
  ``/usr/share/datasets/fashion-mnist``; ``RESI_DUAL_FASHION_MNIST`` points elsewhere). 60k/10k, 28×28.
* ``digits`` — scikit-learn ``load_digits``: 1,797 8×8 images with values 0–16, rescaled to 0–255.
  No test split.
* ``animal-mnist`` — PyPI ``animal-mnist`` (install with ``--no-deps``): 10,000 28×28 silhouettes,
  1,000 per class. Its files are gzip'd pickles of two numpy arrays; we read them with an
  unpickler that only admits numpy's array-reconstruction globals, never an unrestricted one.
  The package ships no train/test split, so ``test`` is None. Labels 0–9 follow the README's
  alphabetical list (bear … zebra).
* ``textiles`` — PyPI ``conformal-clip-data``: 2,000 simulated 250×250 RGB textile JPEGs in three
  folders (``global``, ``local``, ``nominal``; labels in that sorted order). No test split.

Both MNIST-style sets are white on black. Decoded arrays are cached in memory (one copy per name).
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from resi_dual.data.names import canonical_dataset
from resi_dual.errors import ResiDualError

#: Canonical names accepted by :func:`load_raw`.
NAMES = ("fashion-mnist", "digits", "animal-mnist", "textiles")

FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
DIGIT_CLASSES = [str(d) for d in range(10)]  # as CLIP's MNIST prompts spell them
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
#: textile folder -> readable class name (folders sorted alphabetically give the label order)
TEXTILE_CLASSES = {"global": "global defect", "local": "local defect", "nominal": "nominal"}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "RESI_DUAL_FASHION_MNIST"

#: how to install each dataset's package, quoted in errors
INSTALL = {
    "fashion-mnist": f"apt-get install dataset-fashion-mnist (or set {FASHION_MNIST_ENV} to a folder with its IDX .gz files)",
    "digits": "pip install scikit-learn",
    "animal-mnist": "pip install --no-deps animal-mnist",
    "textiles": "pip install conformal-clip-data",
}


def load_raw(name: str) -> dict:
    """Decoded arrays of one bundled dataset (cached; treat the arrays as read-only).

    Returns:
        ``dict(train=(images uint8 (n,H,W) or (n,H,W,3), labels int64 (n,)), test=(…) or None,
        class_names=list[str])``.
    """
    key = canonical_dataset(name)
    if key not in NAMES:
        raise ResiDualError(f"unknown bundled dataset {name!r}; choose one of {', '.join(NAMES)}")
    return _LOADERS[key]()


# -- Fashion-MNIST ----------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format; gzip'd or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:  # 0x08: unsigned byte, the only type MNIST files use
        raise ResiDualError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ResiDualError(f"{path}: header says {shape}, file holds {arr.size} values")
    return arr.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for cand in (folder / f"{stem}.gz", folder / stem):
        if cand.exists():
            return cand
    raise ResiDualError(f"Fashion-MNIST file {stem}(.gz) not found in {folder}; install it: {INSTALL['fashion-mnist']}")


@functools.lru_cache(maxsize=None)
def _load_fashion_mnist() -> dict:
    folder = Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DIR))
    if not folder.is_dir():
        raise ResiDualError(f"Fashion-MNIST not found at {folder}; install it: {INSTALL['fashion-mnist']}")
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        out[split] = (images, labels)
    out["class_names"] = list(FASHION_MNIST_CLASSES)
    return out


# -- digits -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _load_digits() -> dict:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ResiDualError(f"the digits dataset needs scikit-learn; install it: {INSTALL['digits']}") from None
    d = load_digits()
    # values 0..16 -> 0..255, rounded; white strokes on black like MNIST
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return {"train": (images, d.target.astype(np.int64)), "test": None, "class_names": list(DIGIT_CLASSES)}


# -- Animal-MNIST -----------------------------------------------------------------------------

class _NumpyArrayUnpickler(pickle.Unpickler):
    """Admits only what a pickled plain numpy array needs; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct  # numpy.core is a deprecated alias in numpy 2

            return _reconstruct
        return getattr(np, name)


def restricted_unpickle(data: bytes, encoding: str = "ASCII"):
    """Pickle bytes of a third-party data file (Animal-MNIST, CIFAR's python batches) decoded with an
    unpickler that admits only numpy's array-reconstruction globals: containers, bytes and arrays
    load, anything that would call code raises ``pickle.UnpicklingError``."""
    return _NumpyArrayUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_numpy_pickle(data: bytes) -> np.ndarray:
    """A numpy array from pickle bytes, through :func:`restricted_unpickle`."""
    arr = restricted_unpickle(data)
    if not isinstance(arr, np.ndarray):
        raise ResiDualError(f"expected a pickled numpy array, got {type(arr).__name__}")
    return arr


def _package_dir(module: str, package: str, dataset: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ResiDualError(f"dataset {dataset!r} needs the package {package}; install it: {INSTALL[dataset]}")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _load_animal_mnist() -> dict:
    # find the package without importing it: its __init__ imports tensorflow, which we do not need
    folder = _package_dir("animal_mnist", "animal-mnist", "animal-mnist") / "data" / "Animal_MNIST"
    paths = folder / "animal_data_version_3.gz", folder / "animal_label_version_3.gz"
    for p in paths:
        if not p.exists():
            raise ResiDualError(f"Animal-MNIST file {p} missing; reinstall: {INSTALL['animal-mnist']}")
    images, labels = (load_numpy_pickle(gzip.open(p, "rb").read()) for p in paths)
    images = np.ascontiguousarray(images, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if images.shape[0] != labels.shape[0]:
        raise ResiDualError(f"Animal-MNIST: {images.shape[0]} images but {labels.shape[0]} labels")
    return {"train": (images, labels), "test": None, "class_names": list(ANIMAL_CLASSES)}


# -- textiles ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _load_textiles() -> dict:
    from resi_dual.core.images import open_image

    root = _package_dir("conformal_clip_data", "conformal-clip-data", "textiles") / "data" / "textile_images" / "simulated"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise ResiDualError(f"no textile images under {root}; reinstall: {INSTALL['textiles']}")
    images, labels, names = [], [], []
    for label, folder in enumerate(folders):
        names.append(TEXTILE_CLASSES.get(folder.name, folder.name))
        for path in sorted(folder.glob("*.jpg")):
            images.append(np.asarray(open_image(path), dtype=np.uint8))
            labels.append(label)
    sizes = {im.shape for im in images}
    if len(sizes) != 1:
        raise ResiDualError(f"textile images have mixed sizes {sorted(sizes)}")
    return {"train": (np.stack(images), np.asarray(labels, dtype=np.int64)), "test": None, "class_names": names}


_LOADERS = {
    "fashion-mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "animal-mnist": _load_animal_mnist,
    "textiles": _load_textiles,
}
