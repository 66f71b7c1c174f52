"""The data pipeline's output is pinned: a change of what the bundled digits splits yield must come with
a bump of ``resi_dual.data.DATA_VERSION`` (which re-keys the experiment cache's store cells)."""

import hashlib

import numpy as np
import pytest

from resi_dual.data import DATA_VERSION, load_dataset, stratified_limit

#: DATA_VERSION -> split -> (size, sha256 of "sample_id\tlabel" lines, sha256 of image 0's RGB bytes)
_V1 = {
        "train": (1437, "9e0363a75868f3da6cc52b7282502a3280458d839a5f82f0a483e83dad43240a",
                  "904de1faa76da67144c8b18f9bb73342b9e7305a4508a2dce33324554851c1d0"),
        "val": (180, "b208de6e248d097ee8c18a9db960dbe1fdabac0c7ebdcd094f26bebe6b38d191",
                "7d492e2ae5304a88c4b89a0721795a3fedd70bd039d73e883996494d5c3b1e2d"),
        "test": (180, "c22735f3d6381722e3cd292abe3d984559b026637f8056df6ee50cc7c9d24d65",
                 "db4b8a0dadd2bfd88553ae88f406aa68d67dcb8659addbb786170d503fc9e5fa"),
}
PINNED = {1: _V1, 2: _V1}  # 2 changed the val share of Hugging Face stanford_cars / imagenet-1k only


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_digits_splits_match_the_data_version(split):
    assert DATA_VERSION in PINNED, f"DATA_VERSION {DATA_VERSION} has no pinned splits: add them to {__file__}"
    ds = load_dataset("digits", split)
    h = hashlib.sha256()
    for i in range(len(ds)):
        h.update(f"{ds.sample_id(i)}\t{int(ds.labels[i])}\n".encode())
    got = (len(ds), h.hexdigest(), hashlib.sha256(np.asarray(ds.image(0)).tobytes()).hexdigest())
    assert got == PINNED[DATA_VERSION][split], (
        "the digits split changed: bump resi_dual.data.DATA_VERSION (cached stores are then re-encoded) "
        "and pin the new values here")


def test_stratified_limit_is_pinned():
    labels = np.repeat(np.arange(3), [5, 3, 2])
    assert stratified_limit(labels, 4).tolist() == [0, 1, 5, 8]


@pytest.mark.parametrize("spelling, name", [
    ("StanfordCars", "stanford-cars"), ("stanford_cars", "stanford-cars"), ("Stanford Cars", "stanford-cars"),
    ("stanfordcars", "stanford-cars"), ("cars", "stanford-cars"), ("FashionMNIST", "fashion-mnist"),
    ("fashion_mnist", "fashion-mnist"), ("CIFAR10", "cifar10"), ("cifar-10", "cifar10"), ("imagenet-1k", "imagenet"),
    ("ImageNet", "imagenet"), ("imagenet_sketch", "imagenet-sketch"), ("world-color", "world-color"), (None, ""),
])
def test_one_canonical_dataset_name(spelling, name):
    """Val fractions, prompt templates and class-name lists all key on the same canonical name."""
    from resi_dual.data.names import canonical_dataset
    from resi_dual.data.splits import val_fraction
    from resi_dual.zeroshot.prompts import canonical, templates_for

    assert canonical_dataset(spelling) == canonical(spelling) == name
    if name == "stanford-cars":
        assert val_fraction(spelling) == 0.2 and templates_for(spelling) == templates_for("stanford-cars")
