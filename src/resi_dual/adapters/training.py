"""Training adapters on cached coefficients: Schedule-Free AdamW, early stopping, lr range test.

The protocol of the paper (DESIGN.md §8): batch 64, at most 30 epochs, early stopping on validation
accuracy with patience 5, the best checkpoint (Schedule-Free's averaged weights, taken in the
optimizer's eval mode) evaluated on test. Everything is seeded: the λ init, and a
``torch.Generator`` for the shuffling, so the same seed gives the same λ on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from resi_dual.adapters.adapter import DEFAULT_LR, Adapter
from resi_dual.adapters.cache import CachedSplit
from resi_dual.errors import ResiDualError


@dataclass
class TrainConfig:
    """Training hyperparameters (the paper's by default).

    Attributes:
        lr: learning rate; ``None`` takes the variant's default (0.8 ResiDual-type, 1e-3 linear and
            spectral), ``"auto"`` runs :func:`lr_range_test` on the training split first.
        batch_size: examples per step.
        max_epochs: upper bound on epochs.
        patience: epochs without a better validation accuracy before stopping.
        seed: seeds the shuffling (and nothing else: the λ init has its own seed).
        weight_decay: AdamW decoupled weight decay.
        progress: show a rich progress bar with loss and validation accuracy.
    """

    lr: float | str | None = None
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 5
    seed: int = 0
    weight_decay: float = 0.0
    progress: bool = True


@dataclass
class FitResult:
    """What :func:`fit` did. ``history``: one dict per epoch (epoch, loss, val_accuracy)."""

    lr: float
    epochs: int
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    lr_curve: list[tuple[float, float]] = field(default_factory=list)


def resolve_lr(adapter: Adapter, train: CachedSplit, config: TrainConfig) -> tuple[float, list]:
    if config.lr == "auto":
        return lr_range_test(adapter, train, batch_size=config.batch_size, seed=config.seed)
    if config.lr is None:
        return DEFAULT_LR[adapter.config["variant"]], []
    lr = float(config.lr)
    if not lr > 0:
        raise ResiDualError(f"learning rate must be positive, got {config.lr}")
    return lr, []


def fit(adapter: Adapter, train: CachedSplit, val: CachedSplit, config: TrainConfig = TrainConfig()) -> FitResult:
    """Train ``adapter`` in place on cached coefficients; leave it holding its best-validation weights."""
    import schedulefree
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t0 = time.perf_counter()
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not params:
        return FitResult(float("nan"), 0, 0, adapter.accuracy(val), time.perf_counter() - t0)
    if len(train) == 0 or len(val) == 0:
        raise ResiDualError("training needs non-empty train and validation splits")
    if int(train.labels.max()) >= len(adapter.class_names):
        raise ResiDualError("training labels exceed the classifier's classes")
    lr, curve = resolve_lr(adapter, train, config)
    opt = schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    n, bs = len(train), config.batch_size
    steps = math.ceil(n / bs)
    best_acc, best_epoch, best_state, bad = -1.0, 0, None, 0
    history: list[dict] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]:.4f}"))
    with Progress(*columns, transient=True, disable=not config.progress) as bar:
        task = bar.add_task(f"train {adapter.config['variant']}", total=config.max_epochs * steps, loss=float("nan"), val=float("nan"))
        for epoch in range(1, config.max_epochs + 1):
            adapter.train()
            opt.train()
            perm = torch.randperm(n, generator=gen)
            total = torch.zeros((), dtype=torch.float64)
            for s in range(0, n, bs):
                b = perm[s : s + bs]
                loss = F.cross_entropy(adapter(train.coef[b], train.fixed[b]), train.labels[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(b)
                bar.advance(task)
            adapter.eval()
            opt.eval()  # Schedule-Free: evaluate (and checkpoint) the averaged weights
            acc = adapter.accuracy(val)
            history.append({"epoch": epoch, "loss": float(total) / n, "val_accuracy": acc})
            bar.update(task, loss=float(total) / n, val=acc)
            if acc > best_acc:
                best_acc, best_epoch, bad = acc, epoch, 0
                best_state = [p.detach().clone() for p in params]
            else:
                bad += 1
                if bad >= config.patience:
                    break
    with torch.no_grad():
        for p, q in zip(params, best_state):
            p.copy_(q)
    adapter.eval()
    return FitResult(lr, len(history), best_epoch, best_acc, time.perf_counter() - t0, history, curve)


def lr_range_test(
    adapter: Adapter,
    train: CachedSplit,
    lo: float = 1e-5,
    hi: float = 10.0,
    steps: int = 100,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[float, list[tuple[float, float]]]:
    """Learning-rate range test (Smith 2017): raise lr geometrically from ``lo`` to ``hi`` over
    ``steps`` batches with plain AdamW, track the smoothed loss, stop on divergence.

    Schedule-Free's averaging would blur the per-step response, so the sweep uses AdamW; the
    suggestion is the lr at the smoothed-loss minimum divided by 10. The adapter is restored.

    Returns:
        (suggested lr, [(lr, smoothed loss), …]).
    """
    params = [p for p in adapter.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lo, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    n = len(train)
    factor = (hi / lo) ** (1.0 / max(steps - 1, 1))
    curve: list[tuple[float, float]] = []
    smooth, best, lr = 0.0, float("inf"), lo
    perm, pos = torch.randperm(n, generator=gen), 0
    adapter.train()
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        b = perm[pos : pos + batch_size]
        pos += batch_size
        for g in opt.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(adapter(train.coef[b], train.fixed[b]), train.labels[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        smooth = 0.9 * smooth + 0.1 * float(loss.detach())
        value = smooth / (1 - 0.9 ** (step + 1))  # bias-corrected running mean
        curve.append((lr, value))
        if not math.isfinite(value) or value > 4 * best:
            break
        best = min(best, value)
        lr *= factor
    with torch.no_grad():
        for p, q in zip(params, saved):
            p.copy_(q)
    adapter.eval()
    finite = [(lr_, v) for lr_, v in curve if math.isfinite(v)]
    lr_min = min(finite, key=lambda t: t[1])[0] if finite else lo
    return max(lr_min / 10.0, lo), curve
