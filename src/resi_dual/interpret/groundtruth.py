"""Does a unit's text interpretation name what it carries? A check against the world's ground truth.

On held-out world images (:mod:`resi_dual.data.world`) every attribute of every image is known. A unit
*carries* attribute a when a's value can be read from the unit's PCA coefficients beyond chance: a
logistic-regression probe is fitted on one half of the images and scored on the other by balanced
accuracy adjusted for chance (0 = chance, 1 = perfect; sklearn's ``balanced_accuracy_score(adjusted=True)``).
So that few-valued attributes are not favoured (docs/DESIGN.md §13), a unit's *strongest* attribute is
the one where it reaches the largest share of the best score any unit of its level gets on that
attribute. The unit's interpretation *agrees* when its top TextSpan or SOMP description (heads) or
its closest description (PCs) names that attribute. The dictionary is the world's own: one caption
per attribute value (:func:`world_dictionary`), so every description names exactly one attribute.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from resi_dual.data import world
from resi_dual.errors import ResiDualError

#: probes read a head's first PCs; each PC alone is probed too for the first :data:`PC_LEVEL`
HEAD_PCS = 8
PC_LEVEL = 3
#: below this adjusted balanced accuracy a unit carries nothing worth naming
FLOOR = 0.1
#: fewest world images the check accepts (half fit the probes, half score them)
MIN_IMAGES = 20


def world_dictionary(classes: str = "all") -> tuple[list[str], list[str]]:
    """(texts, attribute of each): one single-attribute caption per value of every world attribute."""
    texts, attrs = [], []
    for attr, values in world.ATTRIBUTES.items():
        if attr == "class":
            values = [world.CLASSES[i] for i in world.object_classes(classes)]
        for v in values:
            texts.append(world.caption({attr: v}))
            attrs.append(attr)
    return texts, attrs


def named_attribute(text: str) -> str | None:
    """The world attribute a description names (the longest value found in it wins: "dark green" is a
    background, "green" a colour), or None."""
    low = f" {text.lower().strip('.')} "
    best, best_len = None, 0
    for attr, values in world.ATTRIBUTES.items():
        for v in values:
            if f" {v} " in low and len(v) > best_len:
                best, best_len = attr, len(v)
    return best


def world_attributes(source) -> np.ndarray:
    """(n, A) int64 ground truth of a store of world images, rebuilt from its dataset spec and sample ids."""
    spec, split = source.meta.dataset_spec or "", source.meta.split or ""
    kind, _, arg = str(spec).partition(":")
    if kind != "world":
        raise ResiDualError(f"the ground-truth check needs a store of world images (dataset spec 'world:…'), got {spec!r}")
    opts = world.parse_spec(arg)
    n = opts["n"] if opts["n"] is not None else world.DEFAULT_N[split]
    w = world.cached_world(n, opts["seed"], split, opts["objects"], opts["combos"])
    rows = np.asarray([int(str(s).rsplit("/", 1)[-1]) for s in source.sample_ids], np.int64)
    return np.stack([w.attrs[a][rows] for a in world.ATTRIBUTES], 1)


def probe_score(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Adjusted balanced accuracy of a logistic probe fitted on rows ``train``, scored on rows ``test``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    from resi_dual.runtime import single_thread_native

    if len(np.unique(y[train])) < 2:
        return 0.0
    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(max_iter=300, C=1.0)
    with warnings.catch_warnings(), single_thread_native():
        warnings.simplefilter("ignore")  # a probe that has not fully converged still measures
        clf.fit(scaler.transform(x[train]), y[train])
        pred = clf.predict(scaler.transform(x[test]))
        return float(balanced_accuracy_score(y[test], pred, adjusted=True))


@dataclass
class UnitScores:
    """Probe scores: ``scores[unit_key]`` (A,) adjusted balanced accuracy per attribute, in ATTRIBUTES order."""

    heads: dict[str, np.ndarray]
    pcs: dict[tuple[str, int], np.ndarray]


def carried(source, attrs: np.ndarray, bases, head_pcs: int = HEAD_PCS, pc_level: int = PC_LEVEL,
            seed: int = 0) -> UnitScores:
    """Per head (its first ``head_pcs`` PC coefficients) and per PC (the first ``pc_level`` of each head, alone):
    how well each attribute is read, on a seeded half/half split of the rows."""
    n = len(source)
    if n < MIN_IMAGES:
        raise ResiDualError(f"the ground-truth check needs at least {MIN_IMAGES} images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    train, test = np.sort(order[: n // 2]), np.sort(order[n // 2:])
    comp = source.composition
    readout = source.readout.to(torch.float64)
    heads, pcs = {}, {}
    for i in comp.select("heads"):
        lab = comp.units[i].label
        a, k = readout.affine(comp, i)
        c = source.features(i, dtype=torch.float64) @ a.T + k  # (n, d_out) contributions
        coef = ((c - bases.means[lab]) @ bases.components[lab][:head_pcs].T).numpy()  # (n, k)
        heads[lab] = np.asarray([probe_score(coef, attrs[:, j], train, test) for j in range(attrs.shape[1])])
        for p in range(min(pc_level, coef.shape[1])):
            pcs[(lab, p)] = np.asarray([probe_score(coef[:, p:p + 1], attrs[:, j], train, test)
                                        for j in range(attrs.shape[1])])
    return UnitScores(heads, pcs)


def strongest(scores: dict, floor: float = FLOOR) -> dict:
    """key -> (attribute or None, its share of the attribute's best score among ``scores``' units)."""
    names = list(world.ATTRIBUTES)
    best = np.max(np.stack(list(scores.values())), 0).clip(min=1e-9)  # (A,)
    out = {}
    for key, s in scores.items():
        share = np.where(s >= floor, s / best, 0.0)
        j = int(np.argmax(share))
        out[key] = (names[j], float(share[j])) if share[j] > 0 else (None, 0.0)
    return out


def trace_world(model, n: int = 1000, seed: int = 0, split: str = "test", objects: str = "seen", batch: int = 250):
    """A :class:`~resi_dual.store.base.MemorySource` of ``n`` world images traced through ``model``
    (labels: object class; meta records the world spec so :func:`world_attributes` rebuilds the truth)."""
    from PIL import Image

    from resi_dual.store.base import MemorySource

    spec = f"world:n={n},seed={seed},objects={objects}"
    w = world.cached_world(n, seed, split, objects, "all")
    parts = []
    with torch.no_grad():
        for s in range(0, n, batch):
            pix = model.preprocess([Image.fromarray(a) for a in w.images[s:s + batch]])
            parts.append(model.trace(pix, check=False))
    first = parts[0]
    cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in ("dense", "heads", "mu", "sigma", "output")}
    enc = type(first)(first.composition, first.readout, **cat)
    labels, names = world.labels_and_names(w, "class", objects)
    return MemorySource(enc, labels, names, [f"{split}/{i}" for i in range(n)],
                        meta={"dataset_spec": spec, "split": split, "dataset_name": "world-class"})


def _pc_texts(bases, dictionary: torch.Tensor, texts: list[str], labels: list[str], n_pcs: int) -> dict:
    """(unit, pc) -> the description closest to either pole of the PC."""
    from resi_dual.interpret.units import pc_descriptions

    best: dict = {}
    for r in pc_descriptions(bases, dictionary, texts, labels=labels, n_pcs=n_pcs, top=1):
        key, score = (r["unit"], r["pc"]), abs(r["cosine"])
        if key not in best or score > best[key][1]:
            best[key] = (r["text"], score)
    return {k: v[0] for k, v in best.items()}


def check(source, attrs: np.ndarray, bases, tower, k: int = 3, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    """The ground-truth check of one model's heads and their first PCs.

    Returns:
        head rows ``{unit, strongest, share, <attr>…, textspan, somp, textspan_names, somp_names,
        textspan_agrees, somp_agrees}``, PC rows ``{unit, pc, strongest, share, <attr>…, description,
        names, agrees}``, and a summary of agreement rates (over units that carry something).
    """
    from resi_dual.interpret.units import decompose_units, embed_dictionary

    texts, _ = world_dictionary()
    emb = embed_dictionary(tower, texts)
    scores = carried(source, attrs, bases, seed=seed)
    heads = list(scores.heads)
    desc = {m: decompose_units(source, emb, texts, method=m, k=k, units=heads, progress=False)
            for m in ("textspan", "somp")}
    pc_text = _pc_texts(bases, emb, texts, heads, PC_LEVEL)
    names = list(world.ATTRIBUTES)
    head_rows, pc_rows = [], []
    for lab, (attr, share) in strongest(scores.heads).items():
        row = {"unit": lab, "strongest": attr or "none", "share": share,
               **{a: float(v) for a, v in zip(names, scores.heads[lab])}}
        for m, res in desc.items():
            top = res[lab].texts
            said = named_attribute(top[0]) if top else None
            row[m] = " | ".join(t.rstrip(".") for t in top)
            row[f"{m}_names"] = said or "none"
            row[f"{m}_agrees"] = attr is not None and said == attr
        head_rows.append(row)
    for (lab, p), (attr, share) in strongest(scores.pcs).items():
        text = pc_text.get((lab, p), "")
        said = named_attribute(text)
        pc_rows.append({"unit": lab, "pc": p, "strongest": attr or "none", "share": share,
                        **{a: float(v) for a, v in zip(names, scores.pcs[(lab, p)])},
                        "description": text.rstrip("."), "names": said or "none",
                        "agrees": attr is not None and said == attr})
    return head_rows, pc_rows, summarise(head_rows, pc_rows)


def summarise(head_rows: list[dict], pc_rows: list[dict]) -> dict:
    """Agreement rates, units that carry something, and the best probe score per attribute."""
    carrying = [r for r in head_rows if r["strongest"] != "none"]
    pcs = [r for r in pc_rows if r["strongest"] != "none"]
    out = {"heads": len(head_rows), "heads_carrying": len(carrying),
           "textspan_agreement": float(np.mean([r["textspan_agrees"] for r in carrying])) if carrying else 0.0,
           "somp_agreement": float(np.mean([r["somp_agrees"] for r in carrying])) if carrying else 0.0,
           "pcs": len(pc_rows), "pcs_carrying": len(pcs),
           "pc_agreement": float(np.mean([r["agrees"] for r in pcs])) if pcs else 0.0}
    for a in world.ATTRIBUTES:
        out[f"best_head_{a}"] = max((r[a] for r in head_rows), default=0.0)
    return out
