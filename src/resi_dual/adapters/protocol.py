"""The evaluation protocol: checks, few-shot sampling, caching, training, metrics — one call per run.

Model selection uses only the validation split (early stopping, ``--lr auto`` uses train only); the
test split is touched once, with the best checkpoint. With ``shots`` the training split is a
stratified sample of K examples per class drawn with ``seed``; the validation split stays whole.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from resi_dual.adapters.adapter import Adapter, AdapterConfig, build_adapter, describe, few_shot_rows
from resi_dual.adapters.cache import check_same_labels, check_same_model
from resi_dual.adapters.modules import classify
from resi_dual.adapters.training import TrainConfig, fit
from resi_dual.errors import ResiDualError
from resi_dual.store.base import EncodingSource


def check_splits(train: EncodingSource, val: EncodingSource, test: EncodingSource) -> None:
    """Same model and same label set across the three splits, or a `ResiDualError`."""
    check_same_model(train, val, "train and val stores")
    check_same_model(train, test, "train and test stores")
    check_same_labels(train, val, "train and val stores")
    check_same_labels(train, test, "train and test stores")


def zero_shot_accuracy(source: EncodingSource, classifier: torch.Tensor, logit_scale: float, block_rows: int = 4096) -> float:
    """Accuracy of the frozen classifier on the model's own embeddings."""
    hits = 0
    for b in source.iter_blocks(block_rows):
        hits += int((classify(b.output, classifier, logit_scale).argmax(1) == b.labels).sum())
    return hits / max(len(source), 1)


def train_and_evaluate(
    config: AdapterConfig,
    train: EncodingSource,
    val: EncodingSource,
    test: EncodingSource,
    classifier: torch.Tensor,
    logit_scale: float,
    bases=None,
    train_config: TrainConfig | None = None,
    shots: int | None = None,
    reference: EncodingSource | None = None,
) -> tuple[Adapter, dict]:
    """Build, train (on cached coefficients) and test one adapter.

    Args:
        config: adapter variant and options; train, val, test: stores of one model and label set.
        classifier: (C, d_out) frozen class rows; logit_scale: float.
        bases: unit PCA bases (unit variants); train_config: optimiser and protocol settings.
        shots: K examples per class from ``train`` (seeded by ``train_config.seed``), or all.
        reference: encodings for the spectral adapter's output PCA (default: the whole train split).
    Returns:
        (the trained adapter, a JSON-ready metrics dict).
    """
    train_config = train_config or TrainConfig()
    t0 = time.perf_counter()
    check_splits(train, val, test)
    classifier = torch.as_tensor(classifier, dtype=torch.float32)
    if classifier.shape[0] != len(train.class_names):
        raise ResiDualError(f"classifier has {classifier.shape[0]} classes, the stores {len(train.class_names)}")
    rows = None
    if shots is not None:
        if shots < 1:
            raise ResiDualError("--shots must be at least 1")
        rows = few_shot_rows(train.labels, shots, train_config.seed)
    adapter = build_adapter(config, train, classifier, logit_scale, bases=bases, reference=reference)
    t_cache = time.perf_counter()
    tr = adapter.encode(train, rows, progress=train_config.progress)
    va = adapter.encode(val, progress=train_config.progress)
    te = adapter.encode(test, progress=train_config.progress)
    t_cache = time.perf_counter() - t_cache
    result = fit(adapter, tr, va, train_config)
    test_acc = adapter.accuracy(te)
    metrics = {
        **describe(adapter),
        "accuracy": {
            "val": result.best_val_accuracy,
            "test": test_acc,
            "zeroshot_val": zero_shot_accuracy(val, classifier, logit_scale),
            "zeroshot_test": zero_shot_accuracy(test, classifier, logit_scale),
        },
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "lr": result.lr,
        "lr_auto": train_config.lr == "auto",
        "products": result.products,
        "seconds": {"cache": t_cache, "train": result.seconds, "total": time.perf_counter() - t0},
        "n": {"train": len(tr), "val": len(va), "test": len(te)},
        "shots": shots,
        "seed": train_config.seed,
        "adapter_config": adapter.config,
        "train_config": {k: v for k, v in asdict(train_config).items() if k != "progress"},
        "basis_hash": adapter.provenance.get("basis_hash"),
        "basis_meta": adapter.provenance.get("basis_meta"),
        "model_spec": adapter.provenance.get("model_spec"),
        "stores": {k: {m: s.meta.get(m) for m in ("dataset_spec", "dataset_name", "split") if m in s.meta}
                   for k, s in (("train", train), ("val", val), ("test", test))},
        "history": result.history,
    }
    return adapter, metrics


def summarise_seeds(runs: list[dict]) -> dict:
    """Mean and standard deviation of val/test accuracy over seeds."""
    out = {}
    for key in ("val", "test"):
        a = np.array([r["accuracy"][key] for r in runs], dtype=np.float64)
        out[key] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}
    return out
