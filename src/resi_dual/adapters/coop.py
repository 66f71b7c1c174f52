"""CoOp (Zhou, Yang, Loy, Liu, IJCV 2022): a learned prompt context fed through the frozen text tower.

The prompt of class k is ``[SOS] v_1 … v_M [CLASS_k] . [EOS]`` at the token-embedding level: M context
vectors (default 16, shared by every class — CoOp's unified context — with the class token at the end)
replace the embeddings of M placeholder words. The text tower runs its own forward on them, and
``logits = s · f · normalise(text_k)ᵀ`` against the cached, normalised image embeddings ``f``. Only
the context vectors are trained; the tower's weights are frozen and left unchanged (tested).

The vectors are injected by a forward hook on the tower's token-embedding table
(:func:`resi_dual.models.text.token_embedding`), so each family's own text forward (HF CLIP, open_clip,
the demo's MiniLM with mean pooling) runs unchanged. Their columns are found by tokenising the prompts
with two different placeholder words: the columns where the token ids differ.

Optimisation as CoOp's released configs: SGD (momentum 0.9, weight decay 5e-4), one warm-up epoch at a
constant 1e-5, then cosine annealing; initialisation N(0, 0.02²), or the embedding of a phrase
(``ctx_init``, e.g. "a photo of a", whose logits are then the zero-shot logits of that template,
tested). The project's fair protocol sets the rest: the peers' epoch budget, patience and batch, and
the learning rate chosen on validation from ``LR_SWEEP["coop"]`` (CoOp's 0.002 and a decade either
side, four candidates like every method on cached features). Trainable parameters: ``M · d_token``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace

import torch
from torch import nn

from resi_dual.adapters.adapter import LR_SWEEP
from resi_dual.adapters.peers import Features, PeerResult, PeerTraining, _best_over_lrs
from resi_dual.errors import ResiDualError

#: CoOp's defaults: 16 context tokens, their init spread, the warm-up learning rate, SGD's settings.
N_CTX = 16
CTX_STD = 0.02
WARMUP_LR = 1e-5
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


class PromptTower:
    """The frozen text tower of ``model`` as a function of the context: ``(M, d_token) -> (C, d_out)``.

    Attributes:
        prompts: the C placeholder prompts; columns: (first, end) of the context in the token sequence;
        init_ctx: (M, d_token) the embedding of ``ctx_init``, or None.
    """

    def __init__(self, model, class_names: list[str], n_ctx: int = N_CTX, ctx_init: str | None = None) -> None:
        from resi_dual.models.text import get_text_tower, has_text_tower, token_embedding

        if not has_text_tower(model):
            raise ResiDualError(f"coop needs a text tower; model {getattr(model, 'spec', '?')} is vision-only")
        self.embedding = token_embedding(model)
        self.tower = get_text_tower(model)
        self.frozen = [p for m in (getattr(model, "library_model", None), getattr(getattr(model, "text_tower", None), "model", None))
                       if isinstance(m, nn.Module) for p in m.parameters()]
        names = [str(n).replace("_", " ") for n in class_names]
        if ctx_init:
            n_ctx = len(ctx_init.split())
        self.prompts = [" ".join(["X"] * n_ctx) + f" {n}." for n in names]
        ids_x, _ = self._capture(self.prompts)
        ids_y, _ = self._capture([" ".join(["Y"] * n_ctx) + f" {n}." for n in names])
        cols = (ids_x != ids_y).any(0).nonzero().flatten().tolist()
        if len(cols) != n_ctx or cols != list(range(cols[0], cols[0] + n_ctx)) or not bool((ids_x != ids_y)[:, cols].all()):
            raise ResiDualError(f"coop: the {self.tower.name}'s tokenizer does not give one token per context word")
        self.columns = (cols[0], cols[0] + n_ctx)
        self.init_ctx = None
        if ctx_init:
            ids_p, emb_p = self._capture([f"{ctx_init} {n}." for n in names])
            if ids_p.shape != ids_x.shape:
                raise ResiDualError(f"coop: {ctx_init!r} is not {n_ctx} tokens for the {self.tower.name}'s tokenizer")
            self.init_ctx = emb_p[0, self.columns[0] : self.columns[1]].clone()
        self.n_ctx, self.d_token = n_ctx, self.embedding.embedding_dim

    def _capture(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, embeddings) the token-embedding table sees when the tower encodes ``texts`` in one batch."""
        seen = []
        handle = self.embedding.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out.detach())))
        try:
            with torch.no_grad():
                self.tower.encode_batch(texts)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise ResiDualError(f"coop: the {self.tower.name} embedded {len(seen)} batches for one batch of prompts")
        return seen[0]

    @contextlib.contextmanager
    def _inject(self, ctx: torch.Tensor):
        a, b = self.columns

        def hook(module, args, out):
            return torch.cat([out[:, :a], ctx.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1), out[:, b:]], 1)

        handle = self.embedding.register_forward_hook(hook)
        flags = [p.requires_grad for p in self.frozen]
        for p in self.frozen:
            p.requires_grad_(False)  # gradients reach the context only
        try:
            yield
        finally:
            handle.remove()
            for p, f in zip(self.frozen, flags):
                p.requires_grad_(f)

    def class_embeddings(self, ctx: torch.Tensor) -> torch.Tensor:
        """(C, d_out) normalised text embeddings of the prompts with context ``ctx`` (M, d_token)."""
        with self._inject(ctx):
            out = self.tower.encode_batch(self.prompts)
        return nn.functional.normalize(out.float(), dim=-1)


class Context(nn.Module):
    """The M learned context vectors (CoOp's ``ctx``)."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.ctx = nn.Parameter(init.detach().clone().float())


def coop_schedule(lr: float, epochs: int):
    """CoOp's per-epoch learning rate: epoch 0 at :data:`WARMUP_LR`, then cosine from ``lr`` over ``epochs``."""
    def lr_at(epoch: int) -> float:
        if epoch == 0 and epochs > 1:
            return WARMUP_LR
        return lr * 0.5 * (1.0 + math.cos(math.pi * max(epoch - 1, 0) / epochs))
    return lr_at


def coop(train: Features, val: Features, model, class_names: list[str], logit_scale: float,
         budget: PeerTraining | None = None, n_ctx: int = N_CTX, ctx_init: str | None = None) -> PeerResult:
    """Learn CoOp's context on cached embeddings; the learning rate chosen on val from ``LR_SWEEP["coop"]``."""
    t0 = time.perf_counter()
    budget = replace(budget or PeerTraining(), lr_grid=LR_SWEEP["coop"])
    tower = PromptTower(model, class_names, n_ctx, ctx_init)
    g = torch.Generator().manual_seed(budget.seed)
    init = tower.init_ctx if tower.init_ctx is not None else CTX_STD * torch.randn(tower.n_ctx, tower.d_token, generator=g)

    def make():
        m = Context(init)

        def logits(f):
            return logit_scale * f @ tower.class_embeddings(m.ctx).T
        return m, logits

    def sgd(params, lr):
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    module, _, acc, lr = _best_over_lrs(make, train, val, budget, sgd, lambda lr: coop_schedule(lr, budget.max_epochs))
    with torch.no_grad():
        text = tower.class_embeddings(module.ctx.detach())

    def predict(f: torch.Tensor) -> torch.Tensor:
        return logit_scale * f.float() @ text.T

    return PeerResult("coop", module.ctx.numel(), acc, {"lr": lr, "n_ctx": tower.n_ctx}, predict,
                      time.perf_counter() - t0, len(budget.lr_grid), state={"ctx": module.ctx.detach(), "text": text},
                      lr_choice="sweep", lr_grid=budget.lr_grid)
