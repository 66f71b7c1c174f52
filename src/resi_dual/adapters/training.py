"""Training adapters on cached coefficients: Schedule-Free AdamW, early stopping, lr range test.

The protocol of the paper (docs/DESIGN.md §8): batch 64, at most 30 epochs, early stopping on validation
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
from resi_dual.adapters.scaling import (  # noqa: F401  (re-exported: the products vocabulary and the step)
    AUTO_SHAPE,
    PRODUCTS,
    Products,
    ScalingEvaluator,
    ScalingObjective,
    ThreadPicker,
    resolve_products,
)
from resi_dual.core.progress import task
from resi_dual.errors import ResiDualError
from resi_dual.runtime import torch_threads


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
        progress: True, False or a ``core.progress.Progress`` (shows loss and validation accuracy; docs/DESIGN.md §14).
        hand_gradient: for `ComponentScaling` adapters, the hand-written λ-gradient and the
            arg-max validation shortcut (same quantities as autograd, a fraction of the time);
            ``False`` runs the plain autograd loop (the reference the tests compare against).
        products: number format of the two large products of the hand-written step (see
            :func:`resolve_products`): ``"float32"``, ``"bfloat16"`` (inputs rounded to bfloat16,
            float32 accumulation, as ``torch.autocast`` does on the CPU; everything else, validation
            and test stay float32), or ``"auto"``: whichever runs the products faster on this machine
            at the fit's shapes, timed once and cached (CPU flags alone mislead: a CPU may advertise
            bfloat16 dot products and still multiply bfloat16 more slowly than float32).
    """

    lr: float | str | None = None
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 5
    seed: int = 0
    weight_decay: float = 0.0
    progress: bool = True
    hand_gradient: bool = True
    products: str = "auto"


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
    #: number format the step's two large products ran in (``"autograd"``: the plain loop)
    products: str = "autograd"


def resolve_lr(adapter: Adapter, train: CachedSplit, config: TrainConfig) -> tuple[float, list]:
    if config.lr == "auto":
        return lr_range_test(adapter, train, batch_size=config.batch_size, seed=config.seed)
    if config.lr is None:
        return DEFAULT_LR[adapter.config["variant"]], []
    lr = float(config.lr)
    if not lr > 0:
        raise ResiDualError(f"learning rate must be positive, got {config.lr}")
    return lr, []


class _HandStep:
    """One step of a `ComponentScaling` adapter by the hand-written λ-gradient, and its validation
    accuracy by the arg-max shortcut. The batch is gathered into preallocated buffers (index_select),
    and the two products run at the :class:`ThreadPicker`'s count, everything else at one thread."""

    #: torch threads the loop runs at (the products get the picker's count)
    threads = 1

    def __init__(self, adapter: Adapter, train: CachedSplit, val: CachedSplit, opt, config: TrainConfig,
                 n_threads: int) -> None:
        self.train, self.opt, self.bs = train, opt, config.batch_size
        bs = self.bs
        self.objective = ScalingObjective(adapter, bs, config.products)
        self.evaluator = ScalingEvaluator(adapter, val)
        self.lam = next(p for p in adapter.parameters() if p.requires_grad)
        self.lam.grad = torch.zeros_like(self.lam)
        self.picker = ThreadPicker(n_threads)
        self.picker.check(self._run_at)
        self.coef = torch.empty(bs, train.coef.shape[1], dtype=train.coef.dtype)
        self.fixed = torch.empty(bs, train.fixed.shape[1], dtype=train.fixed.dtype)
        self.labels = torch.empty(bs, dtype=train.labels.dtype)

    def _run_at(self, threads: int) -> tuple[torch.Tensor, ...]:
        """Loss and gradient on the full first batch and on the last one (the products' two shapes)."""
        tr, bs = self.train, self.bs
        last = len(tr) - (math.ceil(len(tr) / bs) - 1) * bs
        self.objective.threads = threads
        return (*self.objective(tr.coef[:bs], tr.fixed[:bs], tr.labels[:bs]),
                *self.objective(tr.coef[:last], tr.fixed[:last], tr.labels[:last]))

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        nb = b.numel()
        c, f, y = self.coef[:nb], self.fixed[:nb], self.labels[:nb]
        torch.index_select(self.train.coef, 0, b, out=c)
        torch.index_select(self.train.fixed, 0, b, out=f)
        torch.index_select(self.train.labels, 0, b, out=y)
        self.objective.threads, probe = self.picker.next()
        t = time.perf_counter()
        loss, grad = self.objective(c, f, y)
        self.lam.grad.copy_(grad)  # the optimizer rescales .grad in place
        self.opt.step()
        if probe:
            self.picker.record(self.objective.threads, time.perf_counter() - t)
        return loss

    def accuracy(self) -> float:
        return self.evaluator.accuracy()

    def close(self) -> None:
        self.lam.grad = None

    @property
    def products(self) -> str:
        return self.objective.products


class _AutogradStep:
    """One step of any adapter through autograd (the reference loop), validation by its forward."""

    threads = None
    products = "autograd"

    def __init__(self, adapter: Adapter, train: CachedSplit, val: CachedSplit, opt) -> None:
        self.adapter, self.train, self.val, self.opt = adapter, train, val, opt

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        tr = self.train
        loss = F.cross_entropy(self.adapter(tr.coef[b], tr.fixed[b]), tr.labels[b])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def accuracy(self) -> float:
        return self.adapter.accuracy(self.val)

    def close(self) -> None:
        pass


def _check_fit_inputs(adapter: Adapter, train: CachedSplit, val: CachedSplit, config: TrainConfig) -> None:
    resolve_products(config.products, torch.float64)  # a bad value fails before any work
    if len(train) == 0 or len(val) == 0:
        raise ResiDualError("training needs non-empty train and validation splits")
    if int(train.labels.max()) >= len(adapter.class_names):
        raise ResiDualError("training labels exceed the classifier's classes")


class EarlyStopping:
    """Early stopping on validation accuracy, shared by every training loop of the package: the starting
    weights are epoch 0 and a candidate like any other, so a run that training cannot improve on val ends
    where it began (zero-shot, for an identity-initialised adapter, LoRA or a fine-tuned tower).

    ``snapshot()`` returns a copy of the weights to keep; ``update`` is called after each epoch and says
    whether to stop (``patience`` epochs without a strictly better val accuracy).
    """

    def __init__(self, start_accuracy: float, snapshot, patience: int) -> None:
        self.snapshot, self.patience = snapshot, patience
        self.best_accuracy, self.best_epoch, self.best_state, self.bad = start_accuracy, 0, snapshot(), 0

    def update(self, epoch: int, accuracy: float) -> bool:
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch, self.best_state, self.bad = accuracy, epoch, self.snapshot(), 0
            return False
        self.bad += 1
        return self.bad >= self.patience


def _train_epochs(adapter: Adapter, params: list, opt, step, n: int, config: TrainConfig) -> tuple[list, float, int, list]:
    """Epochs of shuffled batches with early stopping on validation accuracy (Schedule-Free's averaged
    weights, in its eval mode), the start a candidate (:class:`EarlyStopping`).
    Returns (history, best accuracy, best epoch, best parameters)."""
    gen = torch.Generator().manual_seed(config.seed)
    bs = config.batch_size
    steps = math.ceil(n / bs)
    every = max(1, steps // 20)  # progress updates per epoch: ~20, not one per step
    adapter.eval()
    opt.eval()
    stop = EarlyStopping(step.accuracy(), lambda: [p.detach().clone() for p in params], config.patience)
    history: list[dict] = []
    with task(config.progress, f"train {adapter.config['variant']}", config.max_epochs * steps,
              loss=float("nan"), val=float("nan")) as advance:
        for epoch in range(1, config.max_epochs + 1):
            adapter.train()
            opt.train()
            perm = torch.randperm(n, generator=gen)
            total = torch.zeros((), dtype=torch.float64)
            for i, s in enumerate(range(0, n, bs)):
                b = perm[s : s + bs]
                total += step(b) * len(b)
                if (i + 1) % every == 0:
                    advance(every)
            advance(steps % every)  # the epoch's last steps
            adapter.eval()
            opt.eval()  # Schedule-Free: evaluate (and checkpoint) the averaged weights
            acc = step.accuracy()
            history.append({"epoch": epoch, "loss": float(total) / n, "val_accuracy": acc})
            advance(0, loss=float(total) / n, val=acc)
            if stop.update(epoch, acc):
                break
    return history, stop.best_accuracy, stop.best_epoch, stop.best_state


def fit(adapter: Adapter, train: CachedSplit, val: CachedSplit, config: TrainConfig | None = None) -> FitResult:
    """Train ``adapter`` in place on cached coefficients; leave it holding its best-validation weights.

    `ComponentScaling` adapters (residual, residual-full, coarse, spectral) take the hand-written
    gradient of :class:`ScalingObjective` and the validation shortcut of :class:`ScalingEvaluator`
    (``config.hand_gradient``); the others, or ``hand_gradient=False``, the plain autograd loop.
    The hand-written loop runs torch at 1 thread except for its two products (see
    :class:`ThreadPicker`) and restores the process's thread count on return, also on error.
    """
    import schedulefree

    config = config or TrainConfig()
    t0 = time.perf_counter()
    params = [p for p in adapter.parameters() if p.requires_grad]
    if not params:
        return FitResult(float("nan"), 0, 0, adapter.accuracy(val), time.perf_counter() - t0)
    _check_fit_inputs(adapter, train, val, config)
    lr, curve = resolve_lr(adapter, train, config)
    opt = schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=config.weight_decay)
    hand = (config.hand_gradient and len(params) == 1 and ScalingObjective.supports(adapter, train)
            and ScalingObjective.supports(adapter, val))
    step = (_HandStep(adapter, train, val, opt, config, torch.get_num_threads()) if hand
            else _AutogradStep(adapter, train, val, opt))
    try:
        with torch_threads(step.threads):
            history, best_acc, best_epoch, best_state = _train_epochs(adapter, params, opt, step, len(train), config)
    finally:
        step.close()
    with torch.no_grad():
        for p, q in zip(params, best_state):
            p.copy_(q)
    adapter.eval()
    return FitResult(lr, len(history), best_epoch, best_acc, time.perf_counter() - t0, history, curve, step.products)


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
