"""Zero-shot classifiers from class-name prompts, and class-mean prototypes for vision-only models.

Classifier (CLIP; docs/DESIGN.md §7): per class, every template filled with the class name is embedded,
L2-normalised, averaged and re-normalised; ``logits = logit_scale · normalise(image) · classesᵀ
+ logit_bias``. The bias is SigLIP's (docs/DESIGN.md §11), whose per-class probability is
``sigmoid(logit)``; it is 0 for softmax-trained towers, and it never changes a ranking or a softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from resi_dual.errors import ResiDualError
from resi_dual.zeroshot.prompts import class_names_for, templates_for


@dataclass
class ZeroShotHead:
    """A frozen linear classifier on normalised image embeddings.

    Attributes:
        weights: (C, d_out) L2-normalised class rows.
        logit_scale: multiplies the cosine similarities.
        class_names: the names the rows stand for.
        kind: ``text`` (prompt classifier) or ``prototype`` (class means of a train split).
        templates: the templates used (text kind).
        logit_bias: added to every logit (SigLIP's sigmoid scoring; 0 otherwise).
    """

    weights: torch.Tensor
    logit_scale: float
    class_names: list[str]
    kind: str = "text"
    templates: list[str] = field(default_factory=list)
    logit_bias: float = 0.0

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(n, C) logits of (n, d_out) unnormalised image embeddings."""
        x = F.normalize(embeddings.to(self.weights.dtype), dim=-1)
        return self.logit_scale * x @ self.weights.T + self.logit_bias


def build_classifier(tower, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(C, d_out) L2-normalised class embeddings: mean of normalised template embeddings, re-normalised."""
    if not class_names:
        raise ResiDualError("no class names given")
    if not templates:
        raise ResiDualError("no prompt templates given")
    texts = [t.format(c) for c in class_names for t in templates]
    emb = F.normalize(tower.encode(texts).float(), dim=-1).reshape(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


#: Temperature of class-mean prototype heads: CLIP's 100, so that training against prototypes sees the
#: same logit range as training against text (at 1 the cross-entropy is almost flat).
PROTOTYPE_LOGIT_SCALE = 100.0


def prototype_classifier(train_source, class_names: Sequence[str] | None = None, block_rows: int = 4096,
                         rows: np.ndarray | None = None) -> ZeroShotHead:
    """Class-mean prototypes of the normalised outputs of a train split (vision-only models), from
    ``rows`` only when given (the few-shot protocol's K shots); logit scale :data:`PROTOTYPE_LOGIT_SCALE`.
    """
    idx = np.arange(len(train_source)) if rows is None else np.asarray(rows)
    labels = np.asarray(train_source.labels)
    n_classes = int(labels.max()) + 1 if labels.size else 0
    names = list(class_names or train_source.class_names)
    if len(names) < n_classes:
        raise ResiDualError(f"class name missing for label {len(names)}: {len(names)} names for {n_classes} labels")
    sums = None
    counts = torch.zeros(len(names), dtype=torch.float64)
    for start in range(0, len(idx), block_rows):
        block = train_source.raw(idx[start : start + block_rows])
        x = F.normalize(block.output.double(), dim=-1)
        if sums is None:
            sums = torch.zeros(len(names), x.shape[1], dtype=torch.float64)
        sums.index_add_(0, block.labels, x)
        counts += torch.bincount(block.labels, minlength=len(names)).double()
    if sums is None:
        raise ResiDualError("the train split is empty: no class-mean prototypes")
    missing = [names[i] for i in range(len(names)) if counts[i] == 0]
    if missing:
        raise ResiDualError(f"no train samples for class {missing[0]!r}: cannot build its prototype")
    return ZeroShotHead(F.normalize((sums / counts[:, None]).float(), dim=-1), PROTOTYPE_LOGIT_SCALE, names,
                        kind="prototype")


def classifier_for_source(source, model=None, train_source=None, templates: Sequence[str] | None = None,
                          cache_dir=None, train_rows: np.ndarray | None = None) -> ZeroShotHead:
    """The zero-shot head for a store: text prompts when the model has a text tower, else prototypes.

    Args:
        source: an EncodingSource; ``source.meta.model_spec`` names the model when ``model`` is None,
            ``source.meta.dataset_name`` picks class names and templates.
        model: a loaded model (TracedModel or library model), to avoid loading it again.
        train_source: train split of the same dataset; required for vision-only models.
        train_rows: the rows of ``train_source`` the prototypes may read (the few-shot shots), or all.
        templates: overrides the dataset's templates.
    """
    from resi_dual.models.text import get_text_tower, has_text_tower

    meta = source.meta
    dataset = meta.dataset_name
    labels = np.asarray(source.labels)
    n_classes = max(int(labels.max()) + 1 if labels.size else 0, len(source.class_names or []))
    names = class_names_for(dataset, source.class_names, n_classes)
    if model is None:
        spec = meta.model_spec
        if not spec:
            raise ResiDualError("the store does not record its model spec (meta.model_spec); pass the model")
        from resi_dual import load_model

        model = load_model(spec)
    if not has_text_tower(model):
        if train_source is None:
            spec = getattr(model, "spec", None) or meta.model_spec or "?"
            raise ResiDualError(f"model {spec} has no text tower; use class-mean prototypes (pass the train split store)")
        return prototype_classifier(train_source, names, rows=train_rows)
    tower = get_text_tower(model, cache_dir=cache_dir)
    tpl = list(templates or templates_for(dataset))
    return ZeroShotHead(build_classifier(tower, names, tpl), tower.logit_scale, names, "text", tpl,
                        getattr(tower, "logit_bias", 0.0))


def accuracy_report(logits: torch.Tensor, labels, class_names: Sequence[str] | None = None) -> dict:
    """Top-1, top-5 (top-C when C < 5) and per-class top-1 accuracy of (n, C) logits."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n, c = logits.shape
    if n == 0:
        raise ResiDualError("no samples to evaluate")
    k = min(5, c)
    topk = logits.topk(k, dim=1).indices
    hit1 = topk[:, 0] == labels
    hit5 = (topk == labels[:, None]).any(1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    per_class = {}
    for i in range(c):
        m = labels == i
        if m.any():
            per_class[names[i] if i < len(names) else str(i)] = {"n": int(m.sum()), "top1": float(hit1[m].float().mean())}
    return {"n": n, "top1": float(hit1.float().mean()), f"top{k}": float(hit5.float().mean()),
            "top5": float(hit5.float().mean()), "per_class": per_class}


def source_logits(head: ZeroShotHead, source, block_rows: int = 4096) -> torch.Tensor:
    """(n, C) logits of the model's own embeddings recorded in ``source``."""
    return torch.cat([head.logits(b.output) for b in source.iter_blocks(block_rows)])
