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
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from resi_dual.adapters.adapter import DEFAULT_LR, Adapter
from resi_dual.adapters.cache import CachedSplit
from resi_dual.adapters.modules import ComponentScaling
from resi_dual.errors import ResiDualError
from resi_dual.runtime import faster_products, torch_threads


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


#: number format of the λ-step's two large products (``auto``: the faster of the two, measured)
Products = Literal["auto", "float32", "bfloat16"]
PRODUCTS: tuple[str, ...] = get_args(Products)


#: the shape (batch × K × d) "auto" is measured at when no adapter is at hand (a grid's plan): ViT-B/32
#: scale, 144 heads × 16 components into 512 dimensions
AUTO_SHAPE = (64, 2304, 512)


def resolve_products(products: str, dtype: torch.dtype, shape: tuple[int, int, int] | None = None) -> str:
    """``"auto"`` -> whichever of ``"float32"`` and ``"bfloat16"`` runs the two products faster on this
    machine at ``shape`` (batch, K, d) (default :data:`AUTO_SHAPE`), measured once and cached
    (:func:`resi_dual.runtime.faster_products`); anything but float32 adapters (the float64 tests)
    keeps its own dtype."""
    if products not in PRODUCTS:
        raise ResiDualError(f"products must be one of {', '.join(PRODUCTS)}, got {products!r}")
    if dtype != torch.float32:
        return str(dtype).removeprefix("torch.")
    if products == "auto":
        return faster_products(*(shape or AUTO_SHAPE))
    return products


def resolve_lr(adapter: Adapter, train: CachedSplit, config: TrainConfig) -> tuple[float, list]:
    if config.lr == "auto":
        return lr_range_test(adapter, train, batch_size=config.batch_size, seed=config.seed)
    if config.lr is None:
        return DEFAULT_LR[adapter.config["variant"]], []
    lr = float(config.lr)
    if not lr > 0:
        raise ResiDualError(f"learning rate must be positive, got {config.lr}")
    return lr, []


class ScalingObjective:
    """Cross-entropy of the frozen classifier on a `ComponentScaling` embedding, with its gradient in λ
    written out by hand (no autograd graph per step; every large intermediate in a preallocated buffer).

    Forward, as ``F.cross_entropy(adapter(coef, fixed), labels)`` computes it::

        w = λ (or λ[group])   a = coef ⊙ w   y = fixed + a V (+ Σ m_u | + λ M)
        r = ‖y‖   u = y / max(r, ε)   z = s u Cᵀ   loss = mean(logsumexp z − z[label])

    Backward: ``g_z = (softmax z − onehot) / b``; ``g_u = s g_z C``;
    ``g_y = (g_u − u (u·g_u)·[r > ε]) / max(r, ε)``; ``g_a = g_y Vᵀ``; ``g_w = Σ_b coef ⊙ g_a``;
    ``g_λ = g_w`` (or summed per group), ``+ M Σ_b g_y`` for the ``scale`` mean mode. The two
    (b × K) × (K × d) products are the largest cost of a step; ``coef ⊙ w`` is formed once.

    With ``products="bfloat16"`` the two products take bfloat16 inputs (``a`` and ``g_y`` rounded,
    V rounded once) and accumulate in float32; their results come back to float32 before anything
    else, so the loss, the softmax, the norm and ``g_w``'s sum over the batch stay float32.

    Args:
        adapter: an :class:`Adapter` whose module is a :class:`ComponentScaling` (any dtype: tests run
            it in float64 against autograd).
        batch_size: the largest batch it will be called with (buffer size).
        products: ``"auto"``, ``"float32"`` or ``"bfloat16"``, resolved against the adapter's dtype
            by :func:`resolve_products` (a float64 adapter stays float64).
    """

    def __init__(self, adapter: Adapter, batch_size: int, products: str = "float32") -> None:
        m = adapter.module
        if not isinstance(m, ComponentScaling):
            raise TypeError("ScalingObjective needs a ComponentScaling adapter")
        self.lam = m.lam
        self.V = m.components  # (K, d)
        self.C = adapter.classifier  # (n_classes, d)
        self.scale = float(adapter.logit_scale)
        self.sCT = (self.scale * self.C).T.contiguous()  # (d, n_classes): z = u (s C)ᵀ in one product
        self.group = None if m._per_component else m.group
        self.const = m.means.sum(0) if m.mean_mode == "add" and m.means.shape[0] else None
        self.M = m.means if m.mean_mode == "scale" else None
        #: torch threads for the two (b × K)·(K × d) products; ``None``: the caller's count. Everything
        #: else in a step is small, and with more than one thread each of those ops pays an OpenMP
        #: fork/join that costs more than the op itself.
        self.threads: int | None = None
        K, d = self.V.shape
        dt = self.V.dtype
        self.products = resolve_products(products, dt, (batch_size, K, d))
        low = torch.bfloat16 if self.products == "bfloat16" else dt
        self.a = torch.empty(batch_size, K, dtype=low)
        # the bfloat16 copy of V and the products' own outputs; empty when the products run in dt
        n_low = batch_size if low != dt else 0
        self.V_in = self.V.to(low) if low != dt else self.V
        self.y_mm = torch.empty(n_low, d, dtype=low)
        self.g_y_mm = torch.empty(n_low, d, dtype=low)
        self.g_a_mm = torch.empty(n_low, K, dtype=low)
        self.y = torch.empty(batch_size, d, dtype=dt)
        self.g_a = torch.empty(batch_size, K, dtype=dt)
        self.minus_one = torch.full((batch_size, 1), -1.0, dtype=dt)

    @staticmethod
    def supports(adapter: Adapter, split: CachedSplit) -> bool:
        m = adapter.module
        return isinstance(m, ComponentScaling) and split.coef.dtype == m.components.dtype and adapter.logit_scale > 0

    def _product(self, x: torch.Tensor, v: torch.Tensor, out: torch.Tensor, add: torch.Tensor | None = None) -> None:
        base = torch.get_num_threads()
        many = self.threads is not None and self.threads != base
        if many:
            torch.set_num_threads(self.threads)
        if add is None:
            torch.mm(x, v, out=out)
        else:
            torch.addmm(add, x, v, out=out)
        if many:
            torch.set_num_threads(base)

    @torch.no_grad()
    def __call__(self, coef: torch.Tensor, fixed: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coef (b, K), fixed (b, d), labels (b,) -> (loss (), gradient in λ (P,))."""
        b = coef.shape[0]
        lam = self.lam.detach()
        w = lam if self.group is None else lam[self.group]
        a, y_mm, g_y_mm, g_a_mm, y, g_a = (t[:b] for t in (self.a, self.y_mm, self.g_y_mm, self.g_a_mm, self.y, self.g_a))
        torch.mul(coef, w, out=a)  # rounded on the way out when the products are bfloat16
        rounded = self.products == "bfloat16"
        if rounded:
            self._product(a, self.V_in, y_mm)
            torch.add(fixed, y_mm, out=y)
        else:
            self._product(a, self.V, y, add=fixed)
        if self.const is not None:
            y += self.const
        if self.M is not None:
            y += lam @ self.M
        r = torch.linalg.vector_norm(y, dim=1, keepdim=True)
        den = r.clamp_min(1e-12)  # F.normalize's eps
        u = y / den
        lab = labels[:, None]
        z = u @ self.sCT
        z.sub_(z.amax(1, keepdim=True))
        z_label = z.gather(1, lab)
        p = z.exp_()
        total = p.sum(1, keepdim=True)
        loss = (total.log() - z_label).mean()
        p.div_(total).scatter_add_(1, lab, self.minus_one[:b])  # softmax − onehot
        g_u = p @ self.C
        g_u *= self.scale / b
        along = torch.linalg.vecdot(u, g_u, dim=1).unsqueeze(1).mul_(r > 1e-12)
        g_y = g_u.sub_(u * along).div_(den)
        if rounded:
            self._product(g_y_mm.copy_(g_y), self.V_in.T, g_a_mm)
            g_w = torch.mul(g_a_mm, coef, out=g_a).sum(0)
        else:
            self._product(g_y, self.V.T, g_a)
            g_w = g_a.mul_(coef).sum(0)
        grad = g_w if self.group is None else torch.zeros_like(lam).index_add_(0, self.group, g_w)
        if self.M is not None:
            grad += self.M @ g_y.sum(0)
        return loss, grad


class ScalingEvaluator:
    """Validation accuracy of a `ComponentScaling` adapter without forming the (n, d) embeddings.

    The arg-max of ``s · normalise(y) Cᵀ`` (s > 0) is the arg-max of ``y Cᵀ``, and
    ``y Cᵀ = (fixed + Σ m_u) Cᵀ + coef (w ⊙ V Cᵀ) (+ (λ M) Cᵀ)``: the first term is computed once per
    split, the rest is (n × K) × (K × classes) per evaluation instead of (n × K) × (K × d).
    """

    def __init__(self, adapter: Adapter, split: CachedSplit, block_rows: int = 8192) -> None:
        m = adapter.module
        self.lam, self.group, self.split, self.block = m.lam, (None if m._per_component else m.group), split, block_rows
        C = adapter.classifier
        self.VC = m.components @ C.T  # (K, n_classes)
        self.MC = m.means @ C.T if m.mean_mode == "scale" else None
        const = m.means.sum(0) if m.mean_mode == "add" and m.means.shape[0] else None
        with torch.inference_mode():
            base = split.fixed @ C.T if len(split) else torch.zeros(0, C.shape[0], dtype=C.dtype)
            self.base = base + const @ C.T if const is not None else base

    def accuracy(self) -> float:
        with torch.inference_mode():
            lam = self.lam.detach()
            W = (lam if self.group is None else lam[self.group])[:, None] * self.VC
            shift = lam @ self.MC if self.MC is not None else None
            hits = 0
            for s in range(0, len(self.split), self.block):
                sc = torch.addmm(self.base[s : s + self.block], self.split.coef[s : s + self.block], W)
                if shift is not None:
                    sc += shift
                hits += int((sc.argmax(1) == self.split.labels[s : s + self.block]).sum())
        return hits / len(self.split)


class ThreadPicker:
    """Every ``period`` steps, time ``probe`` steps with the two products at 1 thread and as many at
    ``n`` threads (alternating), and run the rest of the window at the faster count.

    For these small products (64 × K by K × d) the better count depends on the machine's load, which
    changes within a run: more threads win on idle cores and lose badly on busy ones (OpenMP threads
    waiting for each other's time slices; figures in BENCHMARKS.md). Switching is only enabled when both
    counts give bitwise the same loss and gradient on a first batch (of each batch size), so the
    choice never changes λ.

    Attributes:
        choices: the count picked in each window (for inspection).
    """

    def __init__(self, n: int, period: int = 200, probe: int = 2) -> None:
        self.n, self.period, self.probe = n, period, probe
        self.enabled = n > 1
        self.current = n
        self.times: dict[int, list[float]] = {1: [], n: []}
        self.i = 0
        self.choices: list[int] = []

    def check(self, run) -> None:
        """``run(threads)`` -> tensors; keep switching enabled only if 1 and n threads agree bitwise."""
        if self.enabled:
            one, many = run(1), run(self.n)
            self.enabled = all(torch.equal(x, y) for x, y in zip(one, many))

    def next(self) -> tuple[int, bool]:
        """(thread count for the next step, whether that step is a probe to be timed)."""
        j = self.i % self.period
        if not self.enabled or j >= 2 * self.probe:
            self.i += 1
            return self.current, False
        return (1 if j % 2 == 0 else self.n), True

    def record(self, threads: int, seconds: float) -> None:
        """The time of a probe step; after the last probe of a window, switch to the faster count."""
        self.times[threads].append(seconds)
        self.i += 1
        if self.i % self.period == 2 * self.probe:
            self.current = min(self.times, key=lambda t: min(self.times[t]))
            self.choices.append(self.current)
            self.times = {1: [], self.n: []}


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


def _progress_bar(config: TrainConfig):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]:.4f}"))
    return Progress(*columns, transient=True, disable=not config.progress)


def _train_epochs(adapter: Adapter, params: list, opt, step, n: int, config: TrainConfig) -> tuple[list, float, int, list]:
    """Epochs of shuffled batches with early stopping on validation accuracy (Schedule-Free's averaged
    weights, in its eval mode). Returns (history, best accuracy, best epoch, best parameters)."""
    gen = torch.Generator().manual_seed(config.seed)
    bs = config.batch_size
    steps = math.ceil(n / bs)
    every = max(1, steps // 20)  # progress updates per epoch: ~20, not one per step
    best_acc, best_epoch, best_state, bad = -1.0, 0, None, 0
    history: list[dict] = []
    with _progress_bar(config) as bar:
        task = bar.add_task(f"train {adapter.config['variant']}", total=config.max_epochs * steps,
                            loss=float("nan"), val=float("nan"))
        for epoch in range(1, config.max_epochs + 1):
            adapter.train()
            opt.train()
            perm = torch.randperm(n, generator=gen)
            total = torch.zeros((), dtype=torch.float64)
            for i, s in enumerate(range(0, n, bs)):
                b = perm[s : s + bs]
                total += step(b) * len(b)
                if (i + 1) % every == 0:
                    bar.advance(task, every)
            bar.update(task, completed=epoch * steps)
            adapter.eval()
            opt.eval()  # Schedule-Free: evaluate (and checkpoint) the averaged weights
            acc = step.accuracy()
            history.append({"epoch": epoch, "loss": float(total) / n, "val_accuracy": acc})
            bar.update(task, loss=float(total) / n, val=acc)
            if acc > best_acc:
                best_acc, best_epoch, bad = acc, epoch, 0
                best_state = [p.detach().clone() for p in params]
            else:
                bad += 1
                if bad >= config.patience:
                    break
    return history, best_acc, best_epoch, best_state


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
