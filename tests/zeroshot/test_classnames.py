"""Shipped class-name lists (ImageNet, SUN397, Stanford Cars): counts, order, alignment to the loaders."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from resi_dual.data import load_dataset
from resi_dual.errors import ResiDualError
from resi_dual.zeroshot import class_names_for
from resi_dual.zeroshot.prompts import CLASS_NAMES, CURATED, align_curated, curated_names

PAPER = ("imagenet", "cifar10", "cifar100", "mnist", "svhn", "eurosat", "gtsrb", "dtd", "resisc45", "sun397",
         "stanford-cars", "imagenet-sketch", "pacs")
BUNDLED = ("digits", "fashion-mnist", "animal-mnist")


def test_every_paper_and_bundled_dataset_has_a_project_list():
    for key in PAPER + BUNDLED:
        assert key in CLASS_NAMES or key in CURATED, key
        names = class_names_for(key, None)
        assert names and all(isinstance(n, str) and n for n in names), key
    sizes = {k: len(class_names_for(k, None)) for k in ("imagenet", "imagenet-sketch", "sun397", "stanford-cars")}
    assert sizes == {"imagenet": 1000, "imagenet-sketch": 1000, "sun397": 397, "stanford-cars": 196}
    assert class_names_for("ImageNet-1k", None) == class_names_for("imagenet_sketch", None)
    assert class_names_for("StanfordCars", None) == class_names_for("cars", None)


def test_imagenet_list_order_and_duplicates():
    cur = curated_names("imagenet")
    names = list(cur.names)
    assert (names[0], names[1], names[207], names[999]) == ("tench", "goldfish", "Golden Retriever", "toilet paper")
    # the published list names two pairs of labels alike; nothing else repeats
    assert {n: c for n, c in Counter(names).items() if c > 1} == {"missile": 2, "sunglasses": 2}
    assert [i for i, n in enumerate(names) if n in ("missile", "sunglasses")] == [657, 744, 836, 837]
    wnids = list(cur.keys["wnid"])
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids)  # torchvision / ImageFolder label order
    assert (wnids[0], wnids[1], wnids[207], wnids[999]) == ("n01440764", "n01443537", "n02099601", "n15075141")
    syn = cur.keys["synonym"]
    assert (syn[0], syn[207], syn[134], syn[517]) == ("tench", "golden retriever", "crane", "crane")


def test_sun397_and_cars_follow_torchvision_class_order():
    sun = curated_names("sun397")
    assert len(sun.names) == len(set(sun.names)) == 397
    keys = sun.keys["torchvision"]
    assert list(keys) == sorted(keys) and len(set(keys)) == 397  # ClassName.txt is sorted
    assert (keys[0], keys[8], keys[-1]) == ("abbey", "apartment_building/outdoor", "youth_hostel")
    assert (sun.names[0], sun.names[8], sun.names[-1]) == ("abbey", "apartment building outdoor", "youth hostel")
    # '/' sorts before '_' in ClassName.txt: jail/indoor is label 206, jail_cell 207
    assert keys[206:208] == ("jail/indoor", "jail_cell") and sun.names[206:208] == ("jail indoor", "jail cell")
    cars = curated_names("stanford-cars")
    assert len(cars.names) == len(set(cars.names)) == 196
    assert cars.names[0] == "AM General Hummer SUV 2000" and cars.names[-1] == "smart fortwo Convertible 2012"
    assert cars.names[4:6] == ("Acura TSX Sedan 2012", "Acura Integra Type R 2001")  # meta order, not sorted
    assert cars.keys["cars_meta"] == cars.names


def test_alignment_to_other_spellings_orders_and_subsets():
    assert class_names_for("imagenet", ["('tench', 'Tinca tinca')", "('goldfish', 'Carassius auratus')"]) == \
        ["tench", "goldfish"]  # torchvision ImageNet classes, as a store keeps them
    assert class_names_for("imagenet-1k", ["golden retriever", "tench, Tinca tinca"]) == ["Golden Retriever", "tench"]
    assert class_names_for("imagenet-sketch", ["n02099601", "n01440764"]) == ["Golden Retriever", "tench"]
    # repeated WordNet synonyms are taken in order of occurrence
    assert class_names_for("imagenet", ["crane", "crane"]) == ["crane bird", "construction crane"]
    assert class_names_for("imagenet", ["tench", "crane"]) == ["tench", "crane"]  # which crane: unknown
    assert class_names_for("sun397", ["jail_cell", "/j/jail/indoor", "youth hostel"]) == \
        ["jail cell", "jail indoor", "youth hostel"]
    assert class_names_for("stanford_cars", ["smart fortwo Convertible 2012", "Ram C/V Cargo Van Minivan 2012"]) == \
        ["smart fortwo Convertible 2012", "Ram C/V Cargo Van Minivan 2012"]
    assert align_curated(curated_names("sun397"), ["abbey", "not a sun397 class"]) is None


def test_own_names_are_kept_when_they_are_not_the_datasets_labels():
    # a user's --class-names file (or another label set) is used as given
    assert class_names_for("imagenet", ["my fish", "my other fish"]) == ["my fish", "my other fish"]
    assert class_names_for("stanford-cars", ["red_car", "blue car"]) == ["red car", "blue car"]
    assert class_names_for("textiles", ["denim", "silk"]) == ["denim", "silk"]


def test_missing_names_are_clear_errors():
    with pytest.raises(ResiDualError, match="class name missing for label 2"):
        class_names_for("sun397", ["abbey", "alley"], n_classes=3)
    with pytest.raises(ResiDualError, match="500 labels but no label names"):
        class_names_for("imagenet", None, n_classes=500)
    with pytest.raises(ResiDualError, match="class name missing for label 196"):
        class_names_for("stanford-cars", list(curated_names("stanford-cars").names), n_classes=197)
    with pytest.raises(ResiDualError, match="WordNet ids"):
        class_names_for("imagenet", ["n00000001", "n00000002"])  # wnids not among the 1000


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format="PNG")


def _check(ds, n):
    names = class_names_for(ds.name, ds.class_names, n)
    return [names[int(y)] for y in ds.labels]


def test_torchvision_sun397_labels_get_the_right_names(tmp_path):
    keys = curated_names("sun397").keys["torchvision"]
    base = tmp_path / "SUN397"
    base.mkdir()
    (base / "ClassName.txt").write_text("".join(f"/{k[0]}/{k}\n" for k in keys))
    for i, k in enumerate(("jail/indoor", "jail_cell", "youth_hostel", "abbey")):
        _png(base / k[0] / k / f"sun_{i}.jpg", 10 * i)
    got = sorted(n for s in ("train", "val", "test") for n in _check(load_dataset("torchvision:SUN397", s, root=tmp_path), 397))
    assert got == ["abbey", "jail cell", "jail indoor", "youth hostel"]


def test_torchvision_stanford_cars_labels_get_the_right_names(tmp_path):
    import scipy.io as sio

    meta = list(curated_names("stanford-cars").keys["cars_meta"])
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(meta, dtype=object)})
    picks = {"test": (1, 6, 196), "train": (5, 6, 1)}  # 1-based class ids, as in the annotation files
    for split, ids in picks.items():
        folder = base / ("cars_train" if split == "train" else "cars_test")
        rec = np.array([(f"{j:05d}.jpg", c) for j, c in enumerate(ids)], dtype=[("fname", object), ("class", object)])
        for j, _ in enumerate(ids):
            _png(folder / f"{j:05d}.jpg", j)
        mat = base / "devkit" / "cars_train_annos.mat" if split == "train" else base / "cars_test_annos_withlabels.mat"
        sio.savemat(mat, {"annotations": rec})
    te = load_dataset("torchvision:StanfordCars", "test", root=tmp_path)
    assert _check(te, 196) == ["AM General Hummer SUV 2000", "Acura Integra Type R 2001",
                               "smart fortwo Convertible 2012"]


def test_torchvision_imagenet_subset_gets_the_right_names(tmp_path):
    import torch

    cur = curated_names("imagenet")
    picks = {0: "n01440764", 207: "n02099601", 517: "n03126707"}
    wnid_to_classes = {w: ("crane",) if w == "n03126707" else (cur.keys["synonym"][i], "other synonym")
                       for i, w in picks.items()}
    torch.save((wnid_to_classes, list(picks.values())), tmp_path / "meta.bin")
    for w in picks.values():
        _png(tmp_path / "val" / w / f"{w}_0.JPEG", 7)
    te = load_dataset("torchvision:ImageNet", "test", root=tmp_path)
    # one of the two "crane" synsets only: which one is unknown from its names, so it keeps its own
    assert _check(te, 3) == ["tench", "Golden Retriever", "crane"]
