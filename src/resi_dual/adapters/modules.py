"""Trainable parts of the adapters: `nn.Module`s that map cached coefficients to an output embedding.

Every adapter reads one cached split (see :mod:`resi_dual.adapters.cache`): a coefficient matrix
``coef`` (n, K) — the projections ⟨x_u − m_u, v_{u,k}⟩ of the adapted units on their principal
components, all units stacked — and a ``fixed`` part (n, d_out) that passes through unchanged. The
adapted embedding of the ResiDual family is one matmul (docs/DESIGN.md §8)::

    y = fixed + (coef ⊙ λ[group]) @ V  (+ Σ_u m_u, or + Σ_u λ_u m_u for Coarse)

with V (K, d_out) the stacked component rows themselves — never Vᵀ (the trap in the paper's code,
which silently swaps the two whenever the stacked basis is square).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

#: How the adapted units' PCA means enter the output: dropped (the paper), added back unchanged,
#: or scaled by the unit's own λ (Coarse, which scales the whole contribution c_u).
MeanMode = Literal["drop", "add", "scale"]


class ComponentScaling(nn.Module):
    """Diagonal reweighting in each adapted unit's PCA basis (ResiDual, ResiDual-full, Coarse, spectral).

    Args:
        components: (K, d_out) orthonormal component rows of all adapted units, stacked unit by unit.
        group: (K,) int64, index of the trainable scalar each component uses (``arange(K)`` for one
            λ per component; the unit index for Coarse's one λ per unit).
        means: (G, d_out) the adapted units' PCA means (G may be 0).
        n_params: number of trainable scalars.
        mean_mode: see :data:`MeanMode`; ``scale`` needs ``n_params == G`` (λ_u scales m_u).
        init: ``ones`` or ``paper`` (1 + N(0, 1), as in the paper's code), drawn with ``seed``.

    Attributes:
        lam: (n_params,) the learned scalars.
    """

    def __init__(
        self,
        components: torch.Tensor,
        group: torch.Tensor,
        means: torch.Tensor,
        n_params: int,
        mean_mode: MeanMode = "drop",
        init: str = "ones",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mean_mode == "scale" and means.shape[0] != n_params:
            raise ValueError("mean_mode='scale' needs one mean per parameter")
        self.register_buffer("components", components.to(torch.float32).contiguous())
        self.register_buffer("group", group.to(torch.int64).contiguous())
        self.register_buffer("means", means.to(torch.float32).contiguous())
        self.mean_mode = mean_mode
        lam = torch.ones(n_params)
        if init == "paper":
            g = torch.Generator().manual_seed(seed)
            lam = lam + torch.randn(n_params, generator=g)
        elif init != "ones":
            raise ValueError(f"unknown init {init!r}")
        self.lam = nn.Parameter(lam)
        # Identity group ⇒ skip the gather on every step.
        self._per_component = bool(n_params == group.numel() and torch.equal(group, torch.arange(n_params)))

    def component_weights(self) -> torch.Tensor:
        """(K,) the scalar each component is multiplied by."""
        return self.lam if self._per_component else self.lam[self.group]

    def forward(self, coef: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """coef (b, K), fixed (b, d_out) -> adapted embedding (b, d_out)."""
        out = torch.addmm(fixed, coef * self.component_weights(), self.components)
        if self.mean_mode == "add" and self.means.shape[0]:
            out = out + self.means.sum(0)
        elif self.mean_mode == "scale":
            out = out + self.lam @ self.means
        return out


class LinearAdapter(nn.Module):
    """``y ↦ W y + b`` on the output embedding (d × d + d parameters), initialised to the identity."""

    def __init__(self, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_out, d_out)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(d_out))
            self.linear.bias.zero_()

    def forward(self, coef: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """coef (b, 0) unused, fixed (b, d_out) the model's embedding -> (b, d_out)."""
        return self.linear(fixed)


class PassThrough(nn.Module):
    """No parameters: the embedding as it is (the zero-shot reference row)."""

    def forward(self, coef: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return fixed


def classify(embedding: torch.Tensor, classifier: torch.Tensor, logit_scale: float, logit_bias: float = 0.0) -> torch.Tensor:
    """Frozen zero-shot head: ``scale · normalise(embedding) · classifierᵀ + bias``; (b, d) -> (b, C).
    The bias (SigLIP's) shifts every class alike, so it changes neither the softmax loss nor a ranking."""
    return logit_scale * torch.nn.functional.normalize(embedding, dim=-1) @ classifier.T + logit_bias


def trainable_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))
