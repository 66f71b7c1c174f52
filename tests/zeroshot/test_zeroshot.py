"""Zero-shot heads on encoding sources: text prompts, prototypes, accuracy reports, bad input."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resi_dual.errors import ResiDualError
from resi_dual.zeroshot import (accuracy_report, build_classifier, class_names_for, classifier_for_source,
                                source_logits, templates_for)
from resi_dual.zeroshot.prompts import CLASS_NAMES, TEMPLATES, clean_class_name


class HashTower:
    """A deterministic fake text tower: bag of character codes hashed into d dims."""

    def __init__(self, d):
        self.d, self.logit_scale = d, 50.0

    def encode(self, texts):
        out = torch.zeros(len(texts), self.d)
        for i, t in enumerate(texts):
            for j, ch in enumerate(t):
                out[i, (ord(ch) * 7 + j) % self.d] += 1.0
        return out


class FakeModel:
    def __init__(self, d):
        self.text_tower = HashTower(d)
        self.spec = "fake"

    def weights_hash(self):
        return f"fake-{self.text_tower.d}"


def test_text_head_for_source_uses_dataset_templates(make_toy_source):
    make_source = make_toy_source
    src = make_source(n=60)
    src.meta = dataclasses.replace(src.meta, dataset_name="cifar10")
    src.class_names = list(CLASS_NAMES["cifar10"][:3])
    model = FakeModel(src.composition.d_out)
    head = classifier_for_source(src, model)
    assert head.kind == "text" and head.weights.shape == (3, src.composition.d_out)
    assert head.templates == list(TEMPLATES["cifar10"])
    from resi_dual.models.text import get_text_tower

    ref = build_classifier(get_text_tower(model), src.class_names, TEMPLATES["cifar10"])
    torch.testing.assert_close(head.weights, ref)
    torch.testing.assert_close(head.weights.norm(dim=1), torch.ones(3))
    logits = source_logits(head, src)
    torch.testing.assert_close(logits, 50.0 * F.normalize(src.output(), dim=-1) @ ref.T)


def test_prototypes_for_vision_only_models(make_toy_source):
    make_source = make_toy_source
    train, test = make_source(n=300, seed=0), make_source(n=120, seed=1)
    with pytest.raises(ResiDualError, match="no text tower"):
        classifier_for_source(test, model=object())
    head = classifier_for_source(test, model=object(), train_source=train)
    assert head.kind == "prototype"
    x = F.normalize(train.output().double(), dim=-1)
    ref = torch.stack([x[torch.as_tensor(train.labels) == c].mean(0) for c in range(3)])
    torch.testing.assert_close(head.weights, F.normalize(ref, dim=-1).float())
    rep = accuracy_report(source_logits(head, test), test.labels, head.class_names)
    assert rep["top1"] > 0.6  # head L1H0 carries the label


def test_accuracy_report_values():
    logits = torch.tensor([[3.0, 2, 1], [1, 3, 2], [1, 2, 3], [3, 2, 1]])
    rep = accuracy_report(logits, [0, 2, 0, 1], ["a", "b", "c"])
    assert rep["top1"] == 0.25
    assert rep["top5"] == 1.0 and rep["top3"] == 1.0
    assert rep["per_class"]["a"] == {"n": 2, "top1": 0.5}
    assert rep["per_class"]["c"]["top1"] == 0.0


def test_class_names_and_templates(make_toy_source):
    make_source = make_toy_source
    assert class_names_for("CIFAR-10", None) == list(CLASS_NAMES["cifar10"])
    assert len(CLASS_NAMES["cifar100"]) == 100 and len(CLASS_NAMES["gtsrb"]) == 43
    assert len(CLASS_NAMES["dtd"]) == 47 and len(CLASS_NAMES["resisc45"]) == 45
    assert class_names_for("sun397", ["/a/abbey", "/a/apartment_building/outdoor"]) == ["abbey", "apartment building outdoor"]
    assert clean_class_name("tench, Tinca tinca") == "tench"
    assert clean_class_name(("great white shark", "white shark")) == "great white shark"
    assert clean_class_name(str(("great white shark", "white shark"))) == "great white shark"
    assert templates_for("no-such-dataset") == templates_for(None)
    for key in ("imagenet", "cifar10", "cifar100", "mnist", "svhn", "eurosat", "gtsrb", "dtd", "resisc45", "sun397",
                "stanford-cars", "imagenet-sketch", "pacs", "fashion-mnist", "digits", "animal-mnist", "textiles"):
        assert all("{}" in t for t in templates_for(key)), key
    with pytest.raises(ResiDualError, match="WordNet ids"):
        class_names_for("imagenet-21k", ["n01440764", "n01443537"])
    with pytest.raises(ResiDualError, match="class name missing for label 3"):
        class_names_for("toy", ["a", "b", "c"], n_classes=4)
    with pytest.raises(ResiDualError, match="class name missing"):
        classifier_for_source(make_source(n=30, n_classes=3).__class__(
            make_source(n=30)._enc, np.arange(30) % 3, ["a", "", "c"]), model=FakeModel(24))
