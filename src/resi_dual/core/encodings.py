"""Unit encodings: the minimal exact representation of a batch, and the linear readout to output space.

For a pre-LN ViT with final LayerNorm (γ, β, ε) and projection P (+ bias b_P), the CLS residual is
``r = Σ_u r_u`` and the output ``y = P(γ ⊙ (r − μ(r)) / σ(r) + β) + b_P``. With μ, σ fixed per
sample every unit's share of ``y`` is affine in its raw encoding ``x_u`` (docs/DESIGN.md §3, §4)::

    c_u = (W_u x_u + a_u) / σ + m_u · (μ / σ) + k_u          (d_out,)

* emb / MLP units: ``x_u`` is the unit's residual-stream term at the CLS token (d_model wide, layer
  scale already applied); all of them share ``W_u = dense_weight`` (d_out × d_model).
* heads: ``x_u = z_{l,h}`` is the head's attention output before the output projection (d_head wide);
  ``W_u = head_weight[l, h]`` (d_out × d_head) folds P, γ, layer scale and the W_o columns of the head.
* ``a_u`` (``inv_sigma``) carries biases that enter the residual (a head's share of b_o),
  ``m_u`` (``mu_over_sigma``) the unit's share of the LayerNorm mean, ``k_u`` (``const``) its
  share of P β + b_P. Which shares is fixed by the composition's convention.

So a unit's point cloud lives in the affine image of ``f_u = [x_u/σ, 1/σ, μ/σ]`` — d_head+2 numbers
per head — which is what the store keeps and what the spectral engine works in.

Attention-pooled towers (``Composition.geometry == "pooled"``, docs/DESIGN.md §11) have no such per-sample
affine map (σ differs per token), so ``x_u`` *is* the unit's pooled contribution (d_out wide, also
for heads and the ``pool`` unit), μ = 0, σ = 1, and the readout is the identity: ``dense_weight = I``,
``head_weight`` of width 0 (every unit reads through ``dense_weight``), zero biases. The same code
paths then serve both geometries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

import torch

from resi_dual.errors import ResiDualError
from resi_dual.core.units import Composition, Unit


@dataclass
class Readout:
    """Per-unit linear readout into the output space (see module docstring).

    Shapes: ``dense_weight`` (d_out, d_model); ``head_weight`` (L, H, d_out, d_head);
    ``inv_sigma``, ``mu_over_sigma``, ``const``: (U, d_out), rows in composition order.
    """

    dense_weight: torch.Tensor
    head_weight: torch.Tensor
    inv_sigma: torch.Tensor
    mu_over_sigma: torch.Tensor
    const: torch.Tensor

    TENSOR_NAMES = ("dense_weight", "head_weight", "inv_sigma", "mu_over_sigma", "const")

    @classmethod
    def identity(cls, comp: Composition) -> "Readout":
        """The readout of a pooled composition (see module docstring), float32."""
        d, U = comp.d_out, len(comp.units)
        z = torch.zeros(U, d)
        return cls(torch.eye(d), torch.zeros(comp.n_layers, comp.n_heads, d, 0), z, z.clone(), z.clone())

    @property
    def pooled(self) -> bool:
        """True for the identity readout of a pooled composition (heads read through dense_weight)."""
        return self.head_weight.shape[-1] == 0

    @cached_property
    def head_weight_flat(self) -> torch.Tensor:
        """(L·H·d_head, d_out): every head's readout stacked for one GEMM against heads.flatten(1);
        ``einsum("nlhd,lhod->no")`` on ``head_weight`` re-lays out the whole weight on every call
        (figures in BENCHMARKS.md, tracing notes)."""
        L, H, o, dh = self.head_weight.shape
        return self.head_weight.permute(0, 1, 3, 2).reshape(L * H * dh, o).contiguous()

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Readout":
        return Readout(*(getattr(self, k).to(device=device, dtype=dtype) for k in self.TENSOR_NAMES))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"readout.{k}": getattr(self, k).contiguous() for k in self.TENSOR_NAMES}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor]) -> "Readout":
        try:
            return cls(*(tensors[f"readout.{k}"] for k in cls.TENSOR_NAMES))
        except KeyError as e:
            raise ResiDualError(f"readout tensor {e.args[0]!r} missing") from None

    # -- per unit -----------------------------------------------------------------------
    def affine(self, comp: Composition, unit: Unit | str | int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A_u, k_u)`` with ``c_u = A_u f_u + k_u``; A_u: (d_out, d_in+2), k_u: (d_out,)."""
        i = unit if isinstance(unit, int) else comp.index(unit)
        u = comp.units[i]
        w = self.head_weight[u.layer, u.head] if u.kind == "head" and not self.pooled else self.dense_weight
        a = torch.cat([w, self.inv_sigma[i, :, None], self.mu_over_sigma[i, :, None]], dim=1)
        return a, self.const[i]

    # -- batched application -------------------------------------------------------------
    def apply(
        self,
        comp: Composition,
        dense: torch.Tensor,
        heads: torch.Tensor,
        mu: torch.Tensor,
        sigma: torch.Tensor,
        units: Iterable[int] | None = None,
    ) -> torch.Tensor:
        """Contributions of the selected units.

        Args:
            dense: (n, 1+L, d_model) embedding then MLP terms (pooled: (n, 2+L, d_out), then pool);
            heads: (n, L, H, d_head) (pooled: d_out wide);
            mu, sigma: (n,) LayerNorm statistics of the final residual; units: indices into comp.units.
        Returns:
            (n, U', d_out) in the readout's dtype.
        """
        idx = list(range(len(comp.units))) if units is None else list(units)
        dt = self.dense_weight.dtype
        n = mu.shape[0]
        out = torch.empty(n, len(idx), self.dense_weight.shape[0], dtype=dt, device=self.dense_weight.device)
        dense_pos, dense_slot, head_pos, head_l, head_h = [], [], [], [], []
        for pos, i in enumerate(idx):
            u = comp.units[i]
            if u.kind == "head":
                head_pos.append(pos), head_l.append(u.layer), head_h.append(u.head)
            else:
                dense_pos.append(pos), dense_slot.append(comp.dense_slot(u))
        if dense_pos:
            x = dense[:, dense_slot].to(dt)  # (n, k, d_model)
            out[:, dense_pos] = x @ self.dense_weight.T
        if head_pos and self.pooled:
            out[:, head_pos] = heads[:, head_l, head_h].to(dt) @ self.dense_weight.T
        elif head_pos:
            z = heads[:, head_l, head_h].to(dt)  # (n, k, d_head)
            w = self.head_weight[head_l, head_h]  # (k, d_out, d_head)
            out[:, head_pos] = torch.einsum("nkd,kod->nko", z, w)
        inv_s = (1.0 / sigma.to(dt))[:, None, None]
        mos = (mu.to(dt) / sigma.to(dt))[:, None, None]
        out += self.inv_sigma[idx][None]
        out *= inv_s
        out += self.mu_over_sigma[idx][None] * mos + self.const[idx][None]
        return out


@dataclass
class UnitEncodings:
    """Raw unit encodings of a batch plus everything needed to read them out.

    Attributes:
        composition: the units and convention.
        readout: the per-unit linear readout.
        dense: (n, 1+L, d_model) embedding and MLP terms at the CLS token.
        heads: (n, L, H, d_head) per-head attention outputs at the CLS token, before W_o.
        mu, sigma: (n,) mean and std (with ε) of the final pre-LN CLS residual.
        output: (n, d_out) the model's own image embedding for the same pixels (unnormalised).
    """

    composition: Composition
    readout: Readout
    dense: torch.Tensor
    heads: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    output: torch.Tensor

    def __len__(self) -> int:
        return int(self.mu.shape[0])

    @property
    def units(self) -> tuple[Unit, ...]:
        return self.composition.units

    def contributions(self, units=None) -> torch.Tensor:
        """(n, U', d_out) contributions of the selected units (labels, Units, indices or a shorthand)."""
        idx = None if units is None else self.composition.select(units)
        return self.readout.apply(self.composition, self.dense, self.heads, self.mu, self.sigma, idx)

    def features(self, unit: Unit | str | int) -> torch.Tensor:
        """``f_u = [x_u/σ, 1/σ, μ/σ]``: (n, d_in+2); the unit's contribution is ``A_u f_u + k_u``."""
        i = unit if isinstance(unit, int) else self.composition.index(unit)
        return unit_features(self.composition, i, self.dense, self.heads, self.mu, self.sigma)

    def relative_error(self) -> torch.Tensor:
        """(n,) ``‖Σ_u c_u − output‖ / ‖output‖`` per sample, in float64."""
        total = self.readout.to(torch.float64).apply(
            self.composition, self.dense.double(), self.heads.double(), self.mu.double(), self.sigma.double()
        ).sum(1)
        return relative_error(total, self.output)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """(n,) ``‖approx − exact‖ / ‖exact‖`` over the last axis, in float64 (a zero ``exact`` row divides by 1e-30)."""
    exact = exact.double()
    return (approx.double() - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-30)


def unit_features(
    comp: Composition, i: int, dense: torch.Tensor, heads: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """(n, d_in+2) affine coordinates ``[x/σ, 1/σ, μ/σ]`` of unit ``comp.units[i]``."""
    u = comp.units[i]
    x = heads[:, u.layer, u.head] if u.kind == "head" else dense[:, comp.dense_slot(u)]
    s = sigma.to(x.dtype if x.is_floating_point() else torch.float32)
    x = x.to(s.dtype)
    return torch.cat([x / s[:, None], (1.0 / s)[:, None], (mu.to(s.dtype) / s)[:, None]], dim=1)
