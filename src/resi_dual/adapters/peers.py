"""The adaptation peers a PEFT reader compares with, on cached image embeddings (docs/DESIGN.md §12).

Every peer reads the model's own output embedding ``f`` of each sample, L2-normalised, and the
frozen zero-shot class rows ``W`` (C, d). Each one picks its settings on the validation split only,
from a grid of the same size as every other trained method's:

================  ==========================================================  =====================
peer              logits                                                      trainable parameters
================  ==========================================================  =====================
linear probe      multinomial logistic regression on f, L2 strength on val   C·d + C
                  (CLIP's protocol)
Tip-Adapter       ``s·f Wᵀ + α·exp(−β(1 − f Fᵀ)) L`` (F: train embeddings,    0 (α, β on val)
                  L: their one-hot labels); training-free
Tip-Adapter-F     the same with the cache keys F trained                     n_cache·d
CLIP-Adapter      ``s·normalise(ρ·MLP(f) + (1 − ρ)·f) Wᵀ``, bottleneck d/4     2·d·d/4
LP++              ``f·(w_k + α_k W_k) + b_k``, Lipschitz step sizes, no lr     C·d + 2·C
                  search (:mod:`resi_dual.adapters.lpp`)
CoOp              ``s·f normalise(text(ctx, class))ᵀ``, M context vectors      M·d_token
                  through the frozen text tower (:mod:`resi_dual.adapters.coop`)
================  ==========================================================  =====================

``s`` is the classifier's logit scale. With α = 0 Tip-Adapter is zero-shot exactly, and with ρ = 0
CLIP-Adapter is zero-shot exactly (tested).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal, get_args

import numpy as np
import torch
from torch import nn

from resi_dual.adapters.training import EarlyStopping, TrainConfig
from resi_dual.errors import ResiDualError
from resi_dual.store.base import EncodingSource

Peer = Literal["linear-probe", "lp++", "tip-adapter", "tip-adapter-f", "clip-adapter", "coop"]
PEERS: tuple[str, ...] = get_args(Peer)
#: Peers that need the model's text tower at training time (the others read cached embeddings only).
TEXT_PEERS: tuple[str, ...] = ("coop",)
#: Peers on cached embeddings alone: what runs when no model is given.
CACHED_PEERS: tuple[str, ...] = tuple(p for p in PEERS if p not in TEXT_PEERS)

#: Learning rates every trained peer chooses from on validation (the same budget for each).
LR_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
#: L2 strengths of the linear probe: a log grid, then a finer one around the best (CLIP's search).
PROBE_C_GRID: tuple[float, ...] = tuple(10.0 ** np.arange(-6, 7, 1.0))


@dataclass
class Features:
    """L2-normalised output embeddings of some rows of a store. embeddings (n, d) float32, labels (n,) int64."""

    embeddings: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def output_features(source: EncodingSource, rows: np.ndarray | None = None, block_rows: int = 4096) -> Features:
    """The model's own embeddings of ``rows`` (all rows by default), L2-normalised."""
    idx = np.arange(len(source)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = []
    for start in range(0, len(idx), block_rows):
        blk = source.raw(idx[start : start + block_rows])
        out.append(torch.nn.functional.normalize(blk.output.float(), dim=-1))
    emb = torch.cat(out) if out else torch.empty(0, source.composition.d_out)
    return Features(emb, torch.as_tensor(source.labels[idx], dtype=torch.int64))


@dataclass
class PeerResult:
    """What a peer learned and how it was chosen. ``settings``: the values picked on validation."""

    name: str
    trainable_parameters: int
    val_accuracy: float
    settings: dict
    predict: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    seconds: float = 0.0
    candidates: int = 0
    state: dict = field(default_factory=dict, repr=False)  # the learned tensors, where a test reads them
    lr_choice: str = "none"  # how ``settings["lr"]`` was chosen: sweep (on val), lipschitz (LP++), none
    lr_grid: tuple = ()  # the candidates of a sweep

    def accuracy(self, feats: Features) -> float:
        """Top-1 accuracy on ``feats``."""
        return accuracy(self.predict(feats.embeddings), feats.labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of (n, C) logits against (n,) labels."""
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def zero_shot_logits(f: torch.Tensor, classifier: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(n, C) ``s · f Wᵀ`` for normalised f."""
    return logit_scale * f @ classifier.T


# -- linear probe ---------------------------------------------------------------------------------
def linear_probe(train: Features, val: Features, n_classes: int, c_grid=PROBE_C_GRID, max_iter: int = 1000) -> PeerResult:
    """CLIP's linear-probe protocol: multinomial logistic regression, inverse L2 strength C chosen on val
    from a log grid and then a finer grid around the best value."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from resi_dual.runtime import single_thread_native

    t0 = time.perf_counter()
    x, y = train.embeddings.double().numpy(), train.labels.numpy()
    if len(np.unique(y)) < 2:
        raise ResiDualError("the linear probe needs at least two classes in the training rows")
    xv, yv = val.embeddings.double().numpy(), val.labels.numpy()

    # one estimator walks each grid from strong to weak regularisation, every fit warm-started from the
    # previous solution: the same optimum (the loss is strictly convex) in far fewer L-BFGS iterations
    estimator = LogisticRegression(max_iter=max_iter, tol=1e-6, warm_start=True)

    def fit(c: float) -> tuple[float, tuple]:
        with warnings.catch_warnings(), single_thread_native():
            # recorded in the result instead: weak L2 on separable rows stops at max_iter
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.set_params(C=c).fit(x, y)
        converged = int(np.max(estimator.n_iter_)) < max_iter
        fitted = (estimator.coef_.copy(), estimator.intercept_.copy(), estimator.classes_.copy(), converged)
        return float((estimator.predict(xv) == yv).mean()), fitted

    tried: dict[float, tuple[float, tuple]] = {}
    for c in sorted(float(c) for c in c_grid):
        tried[c] = fit(c)
    best = max(tried, key=lambda c: (tried[c][0], -abs(np.log10(c))))
    for c in sorted(float(c) for c in best * 10.0 ** np.linspace(-0.75, 0.75, 7)):
        if c not in tried:
            tried[c] = fit(c)
    best = max(tried, key=lambda c: (tried[c][0], -abs(np.log10(c / best))))
    coef, inter, classes, converged = tried[best][1]
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64)
    b = torch.full((n_classes,), -torch.inf, dtype=torch.float64)
    cls = torch.as_tensor(classes, dtype=torch.int64)
    coef, inter = torch.as_tensor(coef), torch.as_tensor(inter)
    if len(cls) == 2:  # sklearn keeps one row for two classes: logit of the second
        coef, inter = torch.cat([-coef / 2, coef / 2]), torch.cat([-inter / 2, inter / 2])
    w[cls], b[cls] = coef, inter

    def predict(f: torch.Tensor) -> torch.Tensor:
        return (f.double() @ w.T + b).float()

    settings = {"C": best, "converged": converged}
    return PeerResult("linear-probe", n_classes * x.shape[1] + n_classes, tried[best][0], settings,
                      predict, time.perf_counter() - t0, len(tried))


# -- Tip-Adapter ----------------------------------------------------------------------------------
def tip_logits(f: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, classifier: torch.Tensor,
               logit_scale: float, alpha: float, beta: float) -> torch.Tensor:
    """(n, C) ``s·f Wᵀ + α·exp(−β(1 − f Kᵀ)) V``; f (n, d), keys (m, d), values (m, C) one-hot."""
    affinity = torch.exp(-beta * (1.0 - f @ keys.T))
    return zero_shot_logits(f, classifier, logit_scale) + alpha * affinity @ values


#: Tip-Adapter's validation search: β over [0.1, 7], α over [0.1, 3] (its released settings, at logit
#: scale 100; α is scaled with the classifier's logit scale so the cache keeps its weight against it).
TIP_BETAS: tuple[float, ...] = tuple(np.linspace(0.1, 7.0, 24))
TIP_ALPHAS: tuple[float, ...] = tuple(np.linspace(0.1, 3.0, 20))


def _search_alpha_beta(val: Features, keys, values, classifier, logit_scale) -> tuple[float, float, float]:
    """(val accuracy, α, β) best on val over :data:`TIP_BETAS` × :data:`TIP_ALPHAS` (ties: the first in
    β-major order). The affinities are computed once and every α of a β is scored in one batch."""
    zs = zero_shot_logits(val.embeddings, classifier, logit_scale)
    alphas = np.asarray(TIP_ALPHAS) * logit_scale / 100.0
    a = torch.tensor(alphas, dtype=zs.dtype)[:, None, None]
    affinity = val.embeddings @ keys.T
    n = len(val)
    rows = max(1, (1 << 22) // max(1, len(alphas) * zs.shape[1]))  # (α, rows, C) blocks of ≤ 4M logits
    counts = torch.zeros(len(TIP_BETAS), len(alphas), dtype=torch.int64)
    for i, beta in enumerate(TIP_BETAS):
        cache = torch.exp(-beta * (1.0 - affinity)) @ values
        for s in range(0, n, rows):
            pred = (zs[s : s + rows] + a * cache[s : s + rows]).argmax(2)
            counts[i] += (pred == val.labels[s : s + rows]).sum(1)
    hits = counts.float() / n if n else torch.full(counts.shape, float("nan"))
    best = int(torch.argmax(hits.flatten()))  # the first maximum, as a strict > over the loop
    i, j = divmod(best, len(alphas))
    return float(hits[i, j]), float(alphas[j]), float(TIP_BETAS[i])


def tip_adapter(train: Features, val: Features, classifier: torch.Tensor, logit_scale: float) -> PeerResult:
    """Training-free Tip-Adapter: the cache is the training rows, α and β searched on val."""
    t0 = time.perf_counter()
    keys = train.embeddings
    values = torch.nn.functional.one_hot(train.labels, classifier.shape[0]).float()
    acc, alpha, beta = _search_alpha_beta(val, keys, values, classifier, logit_scale)

    def predict(f: torch.Tensor) -> torch.Tensor:
        return tip_logits(f, keys, values, classifier, logit_scale, alpha, beta)

    return PeerResult("tip-adapter", 0, acc, {"alpha": alpha, "beta": beta}, predict,
                      time.perf_counter() - t0, len(TIP_ALPHAS) * len(TIP_BETAS))


# -- trained peers --------------------------------------------------------------------------------
@dataclass
class PeerTraining:
    """The shared budget of the trained peers: the same epochs, patience and batch as the λ-adapters."""

    max_epochs: int = TrainConfig.max_epochs
    patience: int = TrainConfig.patience
    batch_size: int = TrainConfig.batch_size
    seed: int = 1
    lr_grid: tuple[float, ...] = LR_GRID


def _train(module: nn.Module, logits_fn, train: Features, val: Features, lr: float, budget: PeerTraining,
           optimizer=None, lr_at=None) -> tuple[float, dict]:
    """Cross-entropy with early stopping on val accuracy (the start a candidate: :class:`EarlyStopping`);
    returns (best val acc, best state).

    ``optimizer(params, lr)``: default Schedule-Free AdamW; ``lr_at(epoch)``: a per-epoch learning rate
    (CoOp's warm-up and cosine), default constant."""
    import schedulefree

    gen = torch.Generator().manual_seed(budget.seed)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = optimizer(params, lr) if optimizer is not None else schedulefree.AdamWScheduleFree(params, lr=lr)
    modes = hasattr(opt, "train")  # schedule-free optimizers evaluate at their averaged point

    def val_accuracy() -> float:
        module.eval()
        if modes:
            opt.eval()
        with torch.no_grad():
            return accuracy(logits_fn(val.embeddings), val.labels)

    stop = EarlyStopping(val_accuracy(), lambda: {k: v.detach().clone() for k, v in module.state_dict().items()},
                         budget.patience)
    for epoch in range(budget.max_epochs):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch)
        module.train()
        if modes:
            opt.train()
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(order), budget.batch_size):
            b = order[start : start + budget.batch_size]
            loss = nn.functional.cross_entropy(logits_fn(train.embeddings[b]), train.labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if stop.update(epoch + 1, val_accuracy()):
            break
    return stop.best_accuracy, stop.best_state


def _best_over_lrs(make, train, val, budget: PeerTraining, optimizer=None, schedule=None):
    """Train a fresh module per learning rate of ``budget.lr_grid``; keep the best on val (ties: the first).

    ``optimizer(params, lr)`` and ``schedule(lr) -> lr_at(epoch)``: see :func:`_train`."""
    best = None
    for lr in budget.lr_grid:
        torch.manual_seed(budget.seed)
        module, logits_fn = make()
        acc, state = _train(module, logits_fn, train, val, lr, budget, optimizer, None if schedule is None else schedule(lr))
        if best is None or acc > best[0]:
            best = (acc, lr, state)
    acc, lr, state = best
    module, logits_fn = make()
    module.load_state_dict(state)
    module.eval()
    return module, logits_fn, acc, lr


class ClipAdapterModule(nn.Module):
    """``ρ·MLP(f) + (1 − ρ)·f`` with a bias-free bottleneck MLP (reduction 4), as CLIP-Adapter."""

    def __init__(self, d: int, ratio: float, reduction: int = 4) -> None:
        super().__init__()
        self.ratio = ratio
        self.mlp = nn.Sequential(nn.Linear(d, d // reduction, bias=False), nn.ReLU(),
                                 nn.Linear(d // reduction, d, bias=False), nn.ReLU())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.ratio * self.mlp(f) + (1.0 - self.ratio) * f


def clip_adapter(train: Features, val: Features, classifier: torch.Tensor, logit_scale: float,
                 budget: PeerTraining | None = None, ratio: float = 0.2) -> PeerResult:
    """CLIP-Adapter (Gao et al.) at its published residual ratio 0.2; learning rate chosen on val."""
    budget = budget or PeerTraining()
    t0 = time.perf_counter()
    d = train.embeddings.shape[1]

    def make():
        m = ClipAdapterModule(d, ratio)

        def logits(f):
            return zero_shot_logits(nn.functional.normalize(m(f), dim=-1), classifier, logit_scale)
        return m, logits

    module, logits_fn, acc, lr = _best_over_lrs(make, train, val, budget)

    def predict(f: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return logits_fn(f)

    n_params = sum(p.numel() for p in module.parameters())
    return PeerResult("clip-adapter", n_params, acc, {"lr": lr, "ratio": ratio}, predict,
                      time.perf_counter() - t0, len(budget.lr_grid), lr_choice="sweep", lr_grid=budget.lr_grid)


def tip_adapter_f(train: Features, val: Features, classifier: torch.Tensor, logit_scale: float,
                  budget: PeerTraining | None = None) -> PeerResult:
    """Tip-Adapter-F: the cache keys are trained (from the training-free search's α, β), then α and β
    are searched again on val; learning rate chosen on val."""
    budget = budget or PeerTraining()
    t0 = time.perf_counter()
    values = torch.nn.functional.one_hot(train.labels, classifier.shape[0]).float()
    _, alpha0, beta0 = _search_alpha_beta(val, train.embeddings, values, classifier, logit_scale)

    def make():
        keys = nn.Linear(train.embeddings.shape[1], len(train), bias=False)
        keys.weight.data.copy_(train.embeddings)

        def logits(f):
            return tip_logits(f, keys.weight, values, classifier, logit_scale, alpha0, beta0)
        return keys, logits

    keys, _, _, lr = _best_over_lrs(make, train, val, budget)
    trained = keys.weight.detach().clone()
    acc, alpha, beta = _search_alpha_beta(val, trained, values, classifier, logit_scale)

    def predict(f: torch.Tensor) -> torch.Tensor:
        return tip_logits(f, trained, values, classifier, logit_scale, alpha, beta)

    return PeerResult("tip-adapter-f", trained.numel(), acc, {"lr": lr, "alpha": alpha, "beta": beta}, predict,
                      time.perf_counter() - t0, len(budget.lr_grid) + 2 * len(TIP_ALPHAS) * len(TIP_BETAS),
                      lr_choice="sweep", lr_grid=budget.lr_grid)


def run_peer(name: str, train: Features, val: Features, classifier: torch.Tensor, logit_scale: float,
             budget: PeerTraining | None = None, model=None, class_names=None) -> PeerResult:
    """Fit one peer by name (one of :data:`PEERS`). ``model`` and ``class_names``: the loaded model and
    the head's class names, for the peers that run the text tower (:data:`TEXT_PEERS`)."""
    classifier = torch.nn.functional.normalize(torch.as_tensor(classifier, dtype=torch.float32), dim=-1)
    if name == "linear-probe":
        return linear_probe(train, val, classifier.shape[0])
    if name == "lp++":
        from resi_dual.adapters.lpp import lp_plus_plus

        return lp_plus_plus(train, val, classifier, seed=(budget or PeerTraining()).seed)
    if name == "coop":
        from resi_dual.adapters.coop import coop

        if model is None or class_names is None:
            raise ResiDualError("coop runs the model's text tower: pass the model and the class names")
        return coop(train, val, model, class_names, logit_scale, budget or PeerTraining())
    if name == "tip-adapter":
        return tip_adapter(train, val, classifier, logit_scale)
    if name == "tip-adapter-f":
        return tip_adapter_f(train, val, classifier, logit_scale, budget)
    if name == "clip-adapter":
        return clip_adapter(train, val, classifier, logit_scale, budget)
    raise ResiDualError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
