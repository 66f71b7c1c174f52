"""LP++ (Huang, Shakeri, Dolz, Ben Ayed, CVPR 2024): a linear probe blended with the text weights.

On the normalised image embeddings ``f`` and the frozen (normalised) zero-shot class rows ``t``::

    l_k(f) = f · (w_k + α_k t_k) + b_k

``w`` (C, d) the visual class weights, ``α`` (C,) class-wise multipliers, ``b`` (C,) the bias of the
released code's ``nn.Linear``. Everything follows the authors' released code (FewShot-CLIP-Strong-Baseline,
``methods/linear_probe_p2.py``), no learning-rate search:

- init: ``w_k`` the *sum* of the class's normalised training embeddings (its ``compute_centroids``),
  ``b`` ``nn.Linear``'s default U(±1/√d), every ``α_k`` = 250 · the mean over classes of the mean
  cosine between a class's shots and its own text row;
- step sizes from Lipschitz bounds of the cross-entropy: ``4N / λ_max(FᵀF)`` for (w, b) (SGD, momentum
  0.9, every iteration) and ``N / (4 · max_k Σ_i (f_i·t_k)²)`` for α (plain gradient step every 10th);
  α's gradient is never cleared in the released code, so each α step uses the running sum of every
  gradient so far — kept, since it produced the paper's figures;
- 300 full-batch iterations; the iterate with the best validation accuracy is kept (ties: the later).

With ``w = 0``, ``b = 0`` the logits are ``α/s`` times the zero-shot logits ``s·f tᵀ`` (tested).
Trainable parameters: ``C·d + 2C`` (w, b, α).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from resi_dual.adapters.peers import Features, PeerResult, accuracy

#: The released code's iteration count and its α period.
ITERATIONS = 300
ALPHA_EVERY = 10
#: The released code's scale of the multipliers' initialisation.
ALPHA_INIT_SCALE = 250.0


def lpp_logits(f: torch.Tensor, w: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(n, C) ``f·(w_k + α_k t_k) + b_k``; f (n, d), w (C, d), b (C,), alpha (C,), text (C, d)."""
    return f @ w.T + b + alpha * (f @ text.T)


def lpp_init(train: Features, text: torch.Tensor, seed: int = 1) -> dict:
    """The released code's initialisation and step sizes for ``train`` and the class rows ``text`` (C, d).

    Returns ``{"w", "b", "alpha", "lr_w", "lr_alpha"}`` (tensors float32, step sizes floats)."""
    f, y = train.embeddings.float(), train.labels
    n, d = f.shape
    onehot = F.one_hot(y, text.shape[0]).float()
    sims = f @ text.T  # (N, C)
    counts = onehot.sum(0)
    own = (onehot * sims).sum(0)[counts > 0] / counts[counts > 0]  # each class's mean cosine to its own row
    gram = (f @ f.T) if n < d else (f.T @ f)  # same non-zero spectrum; the smaller one
    lam = float(torch.linalg.eigvalsh(gram.double())[-1])
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(d)
    return {
        "w": onehot.T @ f,
        "b": (torch.rand(text.shape[0], generator=g) * 2 - 1) * bound,
        "alpha": torch.full((text.shape[0],), ALPHA_INIT_SCALE * float(own.mean())),
        "lr_w": 4.0 * n / lam,
        "lr_alpha": n / (4.0 * float((sims ** 2).sum(0).max())),
    }


def lp_plus_plus(train: Features, val: Features, text: torch.Tensor, seed: int = 1,
                 iterations: int = ITERATIONS) -> PeerResult:
    """Fit LP++ on ``train`` (full batch), keep the best iterate on ``val``. text: (C, d) normalised rows."""
    t0 = time.perf_counter()
    text = text.float()
    f, y = train.embeddings.float(), train.labels
    fv, yv = val.embeddings.float(), val.labels
    init = lpp_init(train, text, seed)
    w = init["w"].clone().requires_grad_(True)
    b = init["b"].clone().requires_grad_(True)
    alpha = init["alpha"].clone().requires_grad_(True)
    opt = torch.optim.SGD([w, b], lr=init["lr_w"], momentum=0.9)
    best = (-1.0, 0, None)
    for it in range(iterations):
        loss = F.cross_entropy(lpp_logits(f, w, b, alpha, text), y)
        opt.zero_grad()  # clears w and b only: α's gradient accumulates, as released
        loss.backward()
        opt.step()
        with torch.no_grad():
            if (it + 1) % ALPHA_EVERY == 0:
                alpha -= init["lr_alpha"] * alpha.grad
            acc = accuracy(lpp_logits(fv, w, b, alpha, text), yv)
        if acc >= best[0]:
            best = (acc, it + 1, (w.detach().clone(), b.detach().clone(), alpha.detach().clone()))
    acc, best_it, state = best
    if state is None:  # no iteration: the initialisation itself
        state = (init["w"], init["b"], init["alpha"])
        acc = accuracy(lpp_logits(fv, *state, text), yv)
    w_, b_, a_ = state

    def predict(x: torch.Tensor) -> torch.Tensor:
        return lpp_logits(x.float(), w_, b_, a_, text)

    c, d = text.shape
    settings = {"lr": init["lr_w"], "lr_alpha": init["lr_alpha"], "alpha_init": float(init["alpha"][0]),
                "iterations": iterations, "best_iteration": best_it}
    return PeerResult("lp++", c * d + 2 * c, acc, settings, predict, time.perf_counter() - t0, 1,
                      state={"w": w_, "b": b_, "alpha": a_}, lr_choice="lipschitz")
