"""The evaluation protocol: checks, few-shot sampling, caching, training, metrics — one call per run.

Model selection uses only the validation split: early stopping, and the learning rate, which by
default (``lr="sweep"``) every method picks from its own grid of :data:`LR_SWEEP` candidates by
validation accuracy — the same budget for each (``--lr auto`` runs a range test on train instead).
The test split is touched once, with the best checkpoint. With ``shots`` the run follows the
few-shot protocol (:mod:`resi_dual.adapters.fewshot`): K training rows per class and min(K, 4)
validation rows per class, drawn with ``seed``; no other labelled row is read.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from resi_dual.adapters.adapter import LR_SWEEP, Adapter, AdapterConfig, Variant, build_adapter, describe
from resi_dual.adapters.cache import CachedSplit, check_same_labels, check_same_model, tensors_hash
from resi_dual.adapters.fewshot import FewShotSplit, few_shot_split
from resi_dual.adapters.metrics import RunMetrics
from resi_dual.adapters.peers import Peer
from resi_dual.adapters.modules import classify
from resi_dual.adapters.training import TrainConfig, fit
from resi_dual.errors import ResiDualError
from resi_dual.store.base import EncodingSource


#: A row of an adaptation table: an adapter variant, a peer, or WiSE-FT (which comes with ``finetune``).
Method = Literal[Variant, Peer, Literal["wise-ft"]]
METHODS: tuple[str, ...] = get_args(Method)


def check_splits(train: EncodingSource, val: EncodingSource, test: EncodingSource) -> None:
    """Same model and same label set across the three splits, at least two classes, and three
    different stores, or a `ResiDualError`."""
    paths = {name: getattr(s, "path", None) for name, s in (("train", train), ("val", val), ("test", test))}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if paths[a] is not None and paths[b] is not None and Path(paths[a]).resolve() == Path(paths[b]).resolve():
            raise ResiDualError(f"the {a} and {b} stores are the same store ({paths[a]}); a model selected or "
                                f"scored on the data it was fitted on reports a meaningless accuracy — encode separate splits")
    if len(np.unique(train.labels)) < 2:
        raise ResiDualError(f"the train store holds a single class ({train.class_names[int(train.labels[0])] if len(train.labels) else 'none'}); "
                            "a classifier needs at least two")
    check_same_model(train, val, "train and val stores")
    check_same_model(train, test, "train and test stores")
    check_same_labels(train, val, "train and val stores")
    check_same_labels(train, test, "train and test stores")


def zero_shot_accuracy(source: EncodingSource, classifier: torch.Tensor, logit_scale: float, block_rows: int = 4096,
                       rows: np.ndarray | None = None) -> float:
    """Accuracy of the frozen classifier on the model's own embeddings (of ``rows``, or all)."""
    idx = np.arange(len(source)) if rows is None else np.asarray(rows)
    hits = 0
    for start in range(0, len(idx), block_rows):
        b = source.raw(idx[start : start + block_rows])
        hits += int((classify(b.output, classifier, logit_scale).argmax(1) == b.labels).sum())
    return hits / max(len(idx), 1)


def labelled_rows(train: EncodingSource, val: EncodingSource, shots: int | None, seed: int) -> FewShotSplit | None:
    """The rows of train and val a run may read: the few-shot split, or None (everything) without ``shots``."""
    return None if shots is None else few_shot_split(train.labels, val.labels, shots, seed)


def fit_with_lr_choice(adapter: Adapter, tr: CachedSplit, va: CachedSplit, train_config: TrainConfig):
    """Fit ``adapter``; with ``lr="sweep"`` fit it from the same initial state at every candidate of its
    variant's :data:`LR_SWEEP` and keep the best on validation (ties: the first, i.e. the smallest lr).

    Returns ``(FitResult, sweep)``, sweep a list of ``{"lr", "val_accuracy", "epochs"}`` (empty without a sweep).
    """
    if train_config.lr != "sweep":
        return fit(adapter, tr, va, train_config), []
    if adapter.config["variant"] not in LR_SWEEP:  # nothing to train (zeroshot)
        return fit(adapter, tr, va, replace(train_config, lr=None)), []
    initial = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    best, best_state, sweep = None, None, []
    for lr in LR_SWEEP[adapter.config["variant"]]:
        adapter.load_state_dict(initial)
        res = fit(adapter, tr, va, replace(train_config, lr=lr))
        sweep.append({"lr": lr, "val_accuracy": res.best_val_accuracy, "epochs": res.epochs})
        if best is None or res.best_val_accuracy > best.best_val_accuracy:
            best, best_state = res, {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    adapter.load_state_dict(best_state)
    return best, sweep


#: the note of a run whose trained epochs all scored at most its untrained start on val (EarlyStopping kept
#: the start; the chosen lr then changed nothing, so no edge note goes with it)
START_KEPT_NOTE = "no epoch beat the untrained start on val: the start is kept"


def sweep_note(chosen: float, candidates) -> str:
    """Empty, or a note that the chosen learning rate sits at an edge of its grid."""
    grid = sorted(candidates)
    if len(grid) > 1 and chosen in (grid[0], grid[-1]):
        return f"lr {chosen:g} at the {'low' if chosen == grid[0] else 'high'} edge of its grid"
    return ""


def training_note(chosen: float, candidates, epochs: int, best_epoch: int) -> str:
    """A trained run's note: that it kept its untrained start (then the lr changed nothing), else
    :func:`sweep_note` of its lr among ``candidates`` (empty when the lr was given, not swept)."""
    if epochs > 0 and best_epoch == 0:
        return START_KEPT_NOTE
    return sweep_note(chosen, candidates) if candidates else ""


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
    logit_bias: float = 0.0,
    memo: dict | None = None,
) -> tuple[Adapter, RunMetrics]:
    """Build, train (on cached coefficients) and test one adapter.

    Args:
        config: adapter variant and options; train, val, test: stores of one model and label set.
        classifier: (C, d_out) frozen class rows; logit_scale: float.
        bases: unit PCA bases (unit variants); train_config: optimiser and protocol settings.
        shots: the few-shot protocol with K examples per class (seeded by ``train_config.seed``), or all.
        reference: encodings for the spectral adapter's output PCA (default: the whole train split; give an
            unlabelled reference in the few-shot protocol).
        logit_bias: the frozen head's bias (SigLIP's; it leaves the softmax loss unchanged).
        memo: a dict kept across runs on the same test store (the few-shot protocol's K × seeds): the
            test split's coefficients and zero-shot accuracy are computed once per projection and head.
    Returns:
        (the trained adapter, its :class:`RunMetrics`).
    """
    train_config = train_config or TrainConfig()
    t0 = time.perf_counter()
    check_splits(train, val, test)
    classifier = torch.as_tensor(classifier, dtype=torch.float32)
    if classifier.shape[0] != len(train.class_names):
        raise ResiDualError(f"classifier has {classifier.shape[0]} classes, the stores {len(train.class_names)}")
    split = labelled_rows(train, val, shots, train_config.seed)
    train_rows, val_rows = (None, None) if split is None else (split.train_rows, split.val_rows)
    adapter = build_adapter(config, train, classifier, logit_scale, bases=bases, reference=reference,
                            logit_bias=logit_bias)
    t_cache = time.perf_counter()
    tr = adapter.encode(train, train_rows, progress=train_config.progress)
    va = adapter.encode(val, val_rows, progress=train_config.progress)
    te = _test_split(adapter, test, memo, train_config.progress)
    t_cache = time.perf_counter() - t_cache
    result, sweep = fit_with_lr_choice(adapter, tr, va, train_config)
    test_acc = adapter.accuracy(te)
    layout = describe(adapter)
    metrics = RunMetrics(
        variant=layout.pop("variant"), trainable_parameters=layout.pop("trainable_parameters"),
        val_accuracy=result.best_val_accuracy, test_accuracy=test_acc,
        zeroshot_val=zero_shot_accuracy(val, classifier, logit_scale, rows=val_rows),
        zeroshot_test=_remember(memo, ("zero-shot", id(test), tensors_hash(classifier), logit_scale), test,
                                lambda: zero_shot_accuracy(test, classifier, logit_scale)),
        epochs=result.epochs, best_epoch=result.best_epoch, lr=result.lr, seed=train_config.seed, shots=shots,
        n={"train": len(tr), "val": len(va), "test": len(te)},
        seconds={"cache": t_cache, "train": result.seconds, "total": time.perf_counter() - t0},
        model_spec=adapter.provenance.get("model_spec"),
        note=training_note(result.lr, [c["lr"] for c in sweep], result.epochs, result.best_epoch),
        history=tuple(result.history),
        details={**layout, **_adapter_details(adapter, train_config, sweep, result, (train, val, test))},
    )
    return adapter, metrics


def _remember(memo: dict | None, key: tuple, source, compute):
    """``compute()``, or its value from ``memo`` under ``key`` (which holds ``id(source)``: the source is
    kept in the entry, so its id stays its own while the memo lives)."""
    if memo is None:
        return compute()
    hit = memo.get(key)
    if hit is None or hit[0] is not source:
        hit = memo[key] = (source, compute())
    return hit[1]


def _test_split(adapter: Adapter, test: EncodingSource, memo: dict | None, progress: bool) -> CachedSplit:
    """The test split's coefficients: they depend on the projection only, not on the shots or the seed."""
    p = adapter.projection
    key = ("test", id(test), p.source, tuple(p.adapted), tuple(p.n_components), tuple(p.kept), p.keep_rest,
           tensors_hash(p.components, p.means))
    return _remember(memo, key, test, lambda: adapter.encode(test, progress=progress))


def _adapter_details(adapter: Adapter, train_config: TrainConfig, sweep: list, result, stores) -> dict:
    """What only an adapter run records: how its lr was chosen, its configs, its basis and stores."""
    return {
        "lr_auto": train_config.lr == "auto",
        "lr_choice": "sweep" if sweep else ("auto" if train_config.lr == "auto" else "given"),
        "lr_sweep": sweep,
        "products": result.products,
        "adapter_config": adapter.config,
        "train_config": {k: v for k, v in asdict(train_config).items() if k != "progress"},
        "basis_hash": adapter.provenance.get("basis_hash"),
        "basis_meta": adapter.provenance.get("basis_meta"),
        "stores": {k: {m: v for m, v in s.meta.identity().items() if m in ("dataset_spec", "dataset_name", "split")}
                   for k, s in zip(("train", "val", "test"), stores)},
    }


def summarise_seeds(runs: list[RunMetrics]) -> dict:
    """Mean and standard deviation of val/test accuracy over seeds."""
    out = {}
    for key in ("val", "test"):
        a = np.array([getattr(r, f"{key}_accuracy") for r in runs], dtype=np.float64)
        out[key] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}
    return out
