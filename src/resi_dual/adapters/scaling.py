"""The hand-written λ step of `ComponentScaling` adapters: loss and gradient without autograd, the
validation shortcut, the number format of the two large products and their thread count.

Everything here computes the same quantities as the autograd loop of :func:`resi_dual.adapters.training.fit`
(the tests compare them in float64), at a fraction of the time.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from resi_dual.adapters.adapter import Adapter
from resi_dual.adapters.cache import CachedSplit
from resi_dual.adapters.modules import ComponentScaling
from resi_dual.errors import ResiDualError
from resi_dual.runtime import faster_products

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
