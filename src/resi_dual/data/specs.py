"""Dataset specs → :class:`~resi_dual.data.base.ImageDataset` for one split (train, val, test).

Specs:
    ``folder:<path>``        class subfolders (names sorted = labels), or ``train/ val/ test/`` each
                             holding class subfolders. Without split folders: 80/10/10.
    ``torchvision:<Name>``   a torchvision dataset already on disk under ``root`` (never downloaded).
    ``hf:<id or directory>`` a Hugging Face dataset: a ``save_to_disk`` directory, or an id in the local
                             cache (``datasets.load_dataset``).
    ``animal-mnist``, ``digits``, ``fashion-mnist``, ``textiles`` (or ``bundled:<name>``): the offline
                             real datasets of :mod:`resi_dual.data.bundled`.
    ``world`` or ``world:attr=colour,objects=unseen,n=2000,seed=0``: the generated world of
                             :mod:`resi_dual.data.world`, labelled by one attribute.

Missing val (and test) splits are carved from train by :mod:`resi_dual.data.splits` (seed 42).
Every dataset carries class names; where the source has none, pass ``class_names`` (a list or a text
file with one name per line) or get a clear error.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from resi_dual.data.base import SPLITS, ArrayDataset, CallableDataset, FileDataset, ImageDataset
from resi_dual.data.names import canonical_dataset
from resi_dual.data.splits import stratified_split, three_way_split, val_fraction
from resi_dual.errors import ResiDualError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
BUNDLED = ("animal-mnist", "digits", "fashion-mnist", "textiles")


def load_dataset(spec: str, split: str = "train", root: str | Path | None = None,
                 class_names: Sequence[str] | str | Path | None = None) -> ImageDataset:
    """Load one split of a dataset spec.

    Args:
        spec: ``folder:<path>``, ``torchvision:<Name>``, ``hf:<id or dir>`` or a bundled name.
        split: ``train``, ``val`` or ``test``.
        root: where a ``torchvision:`` dataset lives (required for those; nothing is downloaded).
        class_names: names for sources that carry none (list, or a file with one name per line).
    Returns:
        an :class:`ImageDataset` of ``(PIL RGB image, label)`` pairs with ``class_names``.
    """
    if split not in SPLITS:
        raise ResiDualError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    spec = spec.strip()
    names = _read_class_names(class_names)
    kind, _, arg = spec.partition(":")
    if kind == "world":
        return _world(spec, arg, split)
    if not _ or kind not in ("folder", "torchvision", "tv", "hf", "bundled"):
        kind, arg = "bundled", spec
    if kind == "bundled":
        return _bundled(spec, arg, split)
    if not arg:
        raise ResiDualError(f"dataset spec {spec!r} is missing its argument after ':'")
    if kind == "folder":
        return _folder(spec, Path(arg).expanduser(), split)
    if kind in ("torchvision", "tv"):
        return _torchvision(spec, arg, split, root, names)
    return _hf(spec, arg, split, names)


def check_dataset_spec(spec: str, root: str | Path | None = None) -> None:
    """Cheap checks of a dataset spec without decoding anything (a grid validates every entry up
    front): the kind is known, a bundled name exists, a folder or local hf: directory exists, a
    torchvision: dataset has a root that exists. Raises ResiDualError."""
    from resi_dual.data.bundled import NAMES

    spec = str(spec).strip()
    kind, sep, arg = spec.partition(":")
    if spec == "noise" or kind == "world":
        return
    if not sep or kind not in ("folder", "torchvision", "tv", "hf", "bundled"):
        kind, arg = "bundled", spec
    if kind == "bundled":
        if canonical_dataset(arg) not in NAMES:
            raise ResiDualError(f"unknown dataset {spec!r}: not a bundled name ({', '.join(NAMES)}) nor "
                                "folder:/torchvision:/hf:/world:")
        return
    if not arg:
        raise ResiDualError(f"dataset spec {spec!r} is missing its argument after ':'")
    if kind == "folder" and not Path(arg).expanduser().is_dir():
        raise ResiDualError(f"dataset {spec!r}: no folder {arg}")
    if kind in ("torchvision", "tv"):
        if root is None:
            raise ResiDualError(f"dataset {spec!r} needs a root (the folder where it already is)")
        if not Path(root).expanduser().is_dir():
            raise ResiDualError(f"dataset {spec!r}: its root {root} does not exist")
    if kind == "hf" and (arg.startswith(("/", "./", "../", "~")) or arg.count("/") > 1) and not Path(arg).expanduser().exists():
        raise ResiDualError(f"dataset {spec!r}: no such directory {arg}")


def _read_class_names(class_names) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, (str, Path)):
        path = Path(class_names)
        if not path.is_file():
            raise ResiDualError(f"class-names file {path} not found")
        from resi_dual.files import read_text_file

        names = [line.strip() for line in read_text_file(path, "class-names").splitlines() if line.strip()]
        if not names:
            raise ResiDualError(f"class-names file {path} is empty")
        return names
    return [str(c) for c in class_names]


def _derive(full: dict[str, ImageDataset], name: str, split: str) -> ImageDataset:
    """Pick ``split`` from native splits, carving val (and test) out of train where missing."""
    if split in full and (split != "train" or "val" in full):
        return full[split]
    if "train" not in full:
        raise ResiDualError(f"dataset has no train split to derive {split!r} from (it has {', '.join(full)})")
    train = full["train"]
    if "test" in full:  # only val is missing
        keep, held = stratified_split(train.labels, val_fraction(name))
        return train.subset(keep if split == "train" else held, split)
    parts = three_way_split(train.labels)
    return train.subset(parts[split], split)


def _needed(split: str, native) -> list[str]:
    """Which native splits :func:`_derive` needs to produce ``split``."""
    if split in native and split != "train":
        return [split]
    if "val" in native:
        return ["train", "val"] if split == "train" else ["train"]
    return ["train", "test"] if "test" in native else ["train"]


def _canonical(text: str) -> str:
    return canonical_dataset(text) or "dataset"


# -- bundled ------------------------------------------------------------------------------------

def _bundled(spec: str, name: str, split: str) -> ImageDataset:
    from resi_dual.data.bundled import load_raw

    if _canonical(name) in ("cifar10", "cifar100", "mnist", "svhn", "imagenet"):
        raise ResiDualError(f"dataset {spec!r}: use torchvision:{name.upper()} with --data-root, or folder:/hf:")
    raw = load_raw(name)
    key = _canonical(name)
    full = {}
    for native in ("train", "test"):
        if raw.get(native) is not None:
            images, labels = raw[native]
            full[native] = ArrayDataset(spec, key, native, images, labels, raw["class_names"], id_prefix=native)
    return _derive(full, key, split)


def _world(spec: str, arg: str, split: str) -> ImageDataset:
    from resi_dual.data import world

    opts = world.parse_spec(arg)
    n = opts["n"] if opts["n"] is not None else world.DEFAULT_N[split]
    w = world.cached_world(n, opts["seed"], split, opts["objects"], opts["combos"])
    labels, names = world.labels_and_names(w, opts["attr"], opts["objects"])
    return ArrayDataset(spec, f"world-{opts['attr']}", split, w.images, labels, names, id_prefix=split)


# -- folders ------------------------------------------------------------------------------------

def _class_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _folder(spec: str, path: Path, split: str) -> ImageDataset:
    if not path.is_dir():
        raise ResiDualError(f"dataset folder {path} does not exist")
    name = _canonical(path.resolve().name)
    split_dirs = {s: path / s for s in SPLITS if (path / s).is_dir()}
    if "val" not in split_dirs and (path / "validation").is_dir():
        split_dirs["val"] = path / "validation"
    # a split layout needs train/ plus val/ or test/; otherwise every subfolder is a class
    roots = split_dirs if "train" in split_dirs and len(split_dirs) > 1 else {"train": path}
    # class names: union over all split folders, sorted, so labels agree across splits
    names = sorted({d.name for r in roots.values() for d in _class_dirs(r)})
    if not names:
        raise ResiDualError(f"{path} has no class subfolders (expected <path>/<class>/*.png or "
                            f"<path>/{{train,val,test}}/<class>/*.png); class names come from folder names")
    full = {}
    for s, r in roots.items():
        paths, labels = [], []
        for label, cname in enumerate(names):
            if (r / cname).is_dir():
                files = _image_files(r / cname)
                paths += files
                labels += [label] * len(files)
        if not paths:
            raise ResiDualError(f"no image files under {r} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        full[s] = FileDataset(spec, name, s, path, paths, labels, names)
    return _derive(full, name, split)


# -- torchvision --------------------------------------------------------------------------------

#: our split -> the dataset's own split argument, where it differs from train/test
TV_NATIVE = {
    "ImageNet": {"train": "train", "test": "val"},
    "OxfordIIITPet": {"train": "trainval", "test": "test"},
    "Flowers102": {"train": "train", "val": "val", "test": "test"},
    "DTD": {"train": "train", "test": "test"},  # the paper holds out 20 % of train rather than DTD's val
}
#: names without a class list in torchvision
TV_CLASS_NAMES = {"SVHN": [str(d) for d in range(10)]}


def _tv_labels(ds) -> np.ndarray:
    for attr in ("targets", "labels", "_labels", "_targets", "y"):
        v = getattr(ds, attr, None)
        if v is not None and not callable(v):
            return np.asarray(v, dtype=np.int64).reshape(-1)
    for attr in ("_samples", "samples", "imgs"):
        v = getattr(ds, attr, None)
        if v is not None:
            return np.asarray([s[1] for s in v], dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)  # decodes images: last resort


def _tv_paths(ds) -> list[str] | None:
    for attr in ("_samples", "samples", "imgs"):
        v = getattr(ds, attr, None)
        if v is not None and len(v) and isinstance(v[0], (tuple, list)) and isinstance(v[0][0], (str, Path)):
            return [str(s[0]) for s in v]
    for attr in ("_image_files", "_images"):
        v = getattr(ds, attr, None)
        if v is not None and len(v) and isinstance(v[0], (str, Path)):
            return [str(p) for p in v]
    return None


#: CIFAR's "python version" folders: torchvision decodes them with an unrestricted unpickler; we read the
#: same files with bundled.restricted_unpickle (numpy arrays, dicts, lists, bytes — nothing executable).
CIFAR = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "label_names", "labels"),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}


def _cifar(spec: str, name: str, split: str, root: Path, names: list[str] | None) -> ImageDataset:
    from resi_dual.data.bundled import restricted_unpickle

    folder, train_files, test_files, meta_file, names_key, labels_key = CIFAR[name]
    base = root / folder

    def load(fname: str) -> dict:
        path = base / fname
        if not path.is_file():
            raise ResiDualError(f"{spec} not found under {root} ({path} missing); nothing is downloaded")
        try:
            obj = restricted_unpickle(path.read_bytes(), encoding="latin1")
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise ResiDualError(f"{path} is not a CIFAR batch file ({e})") from None
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}

    classes = names or [c.decode() if isinstance(c, bytes) else str(c) for c in load(meta_file)[names_key]]
    key = name.lower()
    full = {}
    for ours in _needed(split, {"train": 1, "test": 1}):
        batches = [load(f) for f in (train_files if ours == "train" else test_files)]
        images = np.concatenate([np.asarray(b["data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches])
        labels = np.concatenate([np.asarray(b[labels_key], np.int64) for b in batches])
        full[ours] = ArrayDataset(spec, key, ours, images.transpose(0, 2, 3, 1), labels, classes, id_prefix=ours)
    return _derive(full, key, split)


def _torchvision(spec: str, name: str, split: str, root, names: list[str] | None) -> ImageDataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if cls is None or not inspect.isclass(cls):
        raise ResiDualError(f"torchvision has no dataset {name!r}")
    if root is None:
        raise ResiDualError(f"{spec} needs --data-root: the folder where the dataset already is (nothing is downloaded)")
    root = Path(root).expanduser()
    if name in CIFAR:
        return _cifar(spec, name, split, root, names)
    key = _canonical(name)
    params = inspect.signature(cls.__init__).parameters
    if "split" in params:
        native = TV_NATIVE.get(name, {"train": "train", "test": "test"})
    elif "train" in params:
        native = {"train": True, "test": False}
    else:
        native = {"train": None}

    def build(arg):
        kwargs = {} if arg is None else ({"split": arg} if "split" in params else {"train": arg})
        if "download" in params:
            kwargs["download"] = False
        try:
            return cls(str(root), **kwargs)
        except (RuntimeError, FileNotFoundError, OSError) as e:
            raise ResiDualError(f"{spec} not found under {root} ({e}); nothing is downloaded") from None

    # only build the native splits this request needs
    need = _needed(split, native)
    full = {}
    for ours in need:
        ds = build(native[ours])
        labels = _tv_labels(ds)
        classes = names or TV_CLASS_NAMES.get(name) or _tv_classes(ds)
        if classes is None:
            raise ResiDualError(f"{spec} carries no class names; pass --class-names FILE (one name per line)")
        if labels.size and labels.max() >= len(classes):
            raise ResiDualError(f"{spec}: label {labels.max()} but only {len(classes)} class names")
        paths = _tv_paths(ds)
        tag = ours if native[ours] in (None, True, False) else str(native[ours])
        full[ours] = CallableDataset(
            spec, key, ours, (lambda i, ds=ds: ds[i][0]), labels, classes,
            ids=(lambda i, p=paths: Path(p[i]).relative_to(root).as_posix() if Path(p[i]).is_relative_to(root) else p[i])
            if paths else (lambda i, t=tag: f"{t}/{i}"),
            where=(lambda i, p=paths: p[i]) if paths else None,
        )
    return _derive(full, key, split)


def _tv_classes(ds) -> list[str] | None:
    classes = getattr(ds, "classes", None)
    if not classes:
        return None
    # MNIST-style "0 - zero" -> "0", as CLIP's MNIST prompts (and the bundled digits) spell them
    return [c.split(" - ", 1)[0] if re.match(r"^\d+ - ", str(c)) else str(c) for c in classes]


# -- Hugging Face datasets ----------------------------------------------------------------------

HF_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}


def _hf(spec: str, arg: str, split: str, names: list[str] | None) -> ImageDataset:
    try:
        import datasets
    except ImportError:
        raise ResiDualError("hf: datasets need the `datasets` package (pip install datasets)") from None
    path = Path(arg).expanduser()
    try:
        obj = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.load_dataset(arg)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the user needs one line
        raise ResiDualError(f"cannot load {spec}: {type(e).__name__}: {e}") from None
    key = _canonical(path.name if path.is_dir() else arg.rstrip("/").split("/")[-1])
    parts = {"train": obj} if isinstance(obj, datasets.Dataset) else dict(obj)
    full_raw = {}
    for ours, candidates in HF_SPLIT_NAMES.items():
        for c in candidates:
            if c in parts:
                full_raw[ours] = parts[c]
                break
    if not full_raw:
        raise ResiDualError(f"{spec} has splits {', '.join(parts)}; expected train (and optionally validation/test)")
    need = _needed(split, full_raw)
    full = {}
    for ours in need:
        ds = full_raw[ours]
        feats = ds.features
        image_col = next((k for k, f in feats.items() if isinstance(f, datasets.Image)), None)
        if image_col is None:
            raise ResiDualError(f"{spec}: no image column (a datasets.Image feature) among {', '.join(feats)}")
        label_col = next((k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
        if label_col is None:
            label_col = next((k for k in ("label", "labels", "fine_label", "target") if k in feats), None)
        if label_col is None:
            raise ResiDualError(f"{spec}: no label column (a ClassLabel, or one named label/labels/target)")
        classes = names or (feats[label_col].names if isinstance(feats[label_col], datasets.ClassLabel) else None)
        if not classes:
            raise ResiDualError(f"{spec}: the label column {label_col!r} carries no class names; pass --class-names FILE")
        labels = np.asarray(ds[label_col], dtype=np.int64)
        id_col = next((k for k in ("id", "image_id", "file_name", "filename", "path") if k in feats
                       and not isinstance(feats[k], datasets.Image)), None)
        ids = list(map(str, ds[id_col])) if id_col else None
        full[ours] = CallableDataset(
            spec, key, ours, (lambda i, ds=ds, c=image_col: ds[int(i)][c]), labels, list(classes),
            ids=(lambda i, v=ids: v[i]) if ids else (lambda i, t=ours: f"{t}/{i}"),
            where=lambda i, t=ours: f"{spec} [{t}] row {i}",
        )
    return _derive(full, key, split)
