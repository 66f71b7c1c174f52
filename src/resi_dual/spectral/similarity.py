"""Similarity of a unit's principal subspace across datasets: the paper's normalised spectral cosine.

For a unit's PCA on dataset X and on dataset Y (docs/DESIGN.md §5): keep on each side the first k
components reaching 90 % explained variance, weights w = eigenvalues;
``C = |V_X V_Yᵀ| ⊙ (w_X w_Yᵀ) / ‖w_X[:m] ⊙ w_Y[:m]‖`` with m = min(k_X, k_Y); greedily take the
largest entry of C, strike its row and column, m times; the score is the ℓ2 norm of the picked
entries — 1 for identical spectra, symmetric in X and Y.

A unit with zero variance on either side has no principal subspace: its score is reported as 0 with
a warning (never NaN).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from resi_dual.errors import ResiDualError
from resi_dual.spectral.bases import UnitBases


def spectral_cosine(v_x: torch.Tensor, w_x: torch.Tensor, v_y: torch.Tensor, w_y: torch.Tensor) -> float:
    """Normalised spectral cosine of two weighted orthonormal bases (already truncated).

    Args: v_x (k_x, d), w_x (k_x,), v_y (k_y, d), w_y (k_y,); rows sorted by decreasing weight.
    """
    m = min(v_x.shape[0], v_y.shape[0])
    w_x, w_y = w_x.to(torch.float64), w_y.to(torch.float64)
    norm = float(torch.linalg.vector_norm(w_x[:m] * w_y[:m]))
    if m == 0 or norm <= 0.0:
        return 0.0
    c = (v_x.to(torch.float64) @ v_y.to(torch.float64).T).abs() * torch.outer(w_x, w_y) / norm
    c = c.numpy().copy()
    picked = np.empty(m)
    for t in range(m):
        i, j = np.unravel_index(int(np.argmax(c)), c.shape)
        picked[t] = c[i, j]
        c[i, :] = -np.inf
        c[:, j] = -np.inf
    return float(np.linalg.norm(picked))


def _truncated(bases: UnitBases, label: str, variance: float) -> tuple[torch.Tensor, torch.Tensor]:
    k = bases.n_components_for(label, variance)
    return bases.components[label][:k], bases.explained_variance[label][:k]


def check_same_model(a: UnitBases, b: UnitBases) -> None:
    """Raise unless both bases come from the same model (unit layout and, when recorded, weights hash)."""
    if not a.composition.same_model(b.composition):
        raise ResiDualError(
            f"the two stores come from different models ({a.composition.model_id!r}: {a.composition.n_layers} layers × "
            f"{a.composition.n_heads} heads, d_out {a.composition.d_out}; {b.composition.model_id!r}: "
            f"{b.composition.n_layers} × {b.composition.n_heads}, d_out {b.composition.d_out})"
        )
    ha, hb = a.meta.get("weights_hash"), b.meta.get("weights_hash")
    if ha and hb and ha != hb:
        raise ResiDualError(f"the two stores come from different model weights (hash {ha[:12]} vs {hb[:12]})")


@dataclass
class UnitSimilarity:
    """One row of the similarity table."""

    unit: str
    kind: str
    layer: int
    head: int
    similarity: float
    k_a: int
    k_b: int


def unit_similarity(a: UnitBases, b: UnitBases, label: str, variance: float = 0.9) -> float:
    """Spectral cosine of one unit's bases on two datasets (0 with a warning for a constant unit)."""
    if a.total_variance[label] <= 0.0 or b.total_variance[label] <= 0.0:
        warnings.warn(f"unit {label} has zero variance on one side; its similarity is reported as 0")
        return 0.0
    return spectral_cosine(*_truncated(a, label, variance), *_truncated(b, label, variance))


def similarity_table(a: UnitBases, b: UnitBases, units: list[str] | None = None, variance: float = 0.9) -> list[UnitSimilarity]:
    """Per-unit similarity for the units fitted on both sides (or ``units``)."""
    check_same_model(a, b)
    labels = units if units is not None else [lab for lab in a.labels if lab in set(b.labels)]
    missing = [lab for lab in labels if lab not in a.components or lab not in b.components]
    if missing:
        raise ResiDualError(f"units not fitted on both sides: {', '.join(missing[:5])}")
    if not labels:
        raise ResiDualError("the two analyses share no units")
    comp = a.composition
    rows = []
    for lab in labels:
        u = comp.units[comp.index(lab)]
        rows.append(UnitSimilarity(lab, u.kind, u.layer, u.head, unit_similarity(a, b, lab, variance),
                                   a.n_components_for(lab, variance), b.n_components_for(lab, variance)))
    return rows


def similarity_matrix(a: UnitBases, b: UnitBases, labels_a: list[str] | None = None, labels_b: list[str] | None = None,
                      variance: float = 0.9) -> np.ndarray:
    """(U_a, U_b) spectral cosine between every unit of ``a`` and every unit of ``b`` (same output space)."""
    if a.composition.d_out != b.composition.d_out:
        raise ResiDualError(f"output spaces differ ({a.composition.d_out} vs {b.composition.d_out})")
    labels_a = labels_a or a.labels
    labels_b = labels_b or b.labels
    ta = {lab: _truncated(a, lab, variance) for lab in labels_a}
    tb = {lab: _truncated(b, lab, variance) for lab in labels_b}
    out = np.zeros((len(labels_a), len(labels_b)))
    for i, la in enumerate(labels_a):
        for j, lb in enumerate(labels_b):
            if a.total_variance[la] > 0 and b.total_variance[lb] > 0:
                out[i, j] = spectral_cosine(*ta[la], *tb[lb])
    return out
