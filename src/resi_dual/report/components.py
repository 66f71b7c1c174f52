"""Images along each principal component of a unit, and for heads where in each image it reads from.

For unit u and PC k (output-space direction v_k from the unit's PCA), a stored sample's coefficient
is ``⟨c_u − m_u, v_k⟩`` (``spectral.pca.UnitPCA.transform``). :func:`rank_pc_images` finds the n highest
and n lowest per (unit, PC) by streaming the store's features once per unit. :func:`trace_pc_maps`
then reopens only the images that appear in those lists and traces each distinct image exactly once:
one :func:`~resi_dual.models.spatial.spatial_maps` call per batch, with every head's own first k PCs as
its directions, gives every requested (head, PC) map of those images at once. The re-traced
coefficients are checked against the stored ones, so a store whose dataset changed under it fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from resi_dual.errors import ResiDualError


@dataclass
class PCImages:
    """The extreme samples of one unit's PC: store rows and coefficients, highest / lowest first."""

    unit: str
    pc: int
    top: list[tuple[int, float]] = field(default_factory=list)
    bottom: list[tuple[int, float]] = field(default_factory=list)

    def rows(self) -> list[int]:
        return [r for r, _ in self.top] + [r for r, _ in self.bottom]


def pc_coefficients(source, bases, label: str, n_pcs: int) -> torch.Tensor:
    """(N, k) float64 coefficients ``⟨c_u − m_u, v_j⟩`` of the unit's first ``k ≤ n_pcs`` PCs."""
    comp = source.composition
    i = comp.index(label)
    a, k = (t.double() for t in source.readout.affine(comp, i))  # this unit's rows only, not the whole readout
    v = bases.components[label][:n_pcs].double()  # (k, d_out)
    f = source.features(i, dtype=torch.float64)  # (N, d_in + 2)
    return f @ (a.T @ v.T) + (k.double() - bases.means[label].double()) @ v.T


def rank_pc_images(source, bases, units: list[str], n_pcs: int, n_images: int) -> list[PCImages]:
    """Per unit and PC (first ``n_pcs``), the ``n_images`` highest and lowest coefficients."""
    out = []
    n = len(source)
    m = min(n_images, n)
    for label in units:
        if label not in bases.labels:
            raise ResiDualError(f"unit {label} has no PCA basis (fit the bases on the same units)")
        coef = pc_coefficients(source, bases, label, n_pcs)
        for j in range(coef.shape[1]):
            col = coef[:, j]
            hi = torch.topk(col, m).indices.tolist()
            lo = torch.topk(-col, m).indices.tolist()
            out.append(PCImages(label, j, [(r, float(col[r])) for r in hi], [(r, float(col[r])) for r in lo]))
    return out


def distinct_rows(lists: list[PCImages]) -> list[int]:
    """Sorted distinct store rows over every list (each is reopened and traced once)."""
    return sorted({r for p in lists for r in p.rows()})


def head_directions(model, bases, lists: list[PCImages]) -> tuple[torch.Tensor, int]:
    """((L, H, K, d_out) every listed head's first K PCs, zero elsewhere; K)."""
    comp = model.composition
    heads = {p.unit for p in lists if comp.units[comp.index(p.unit)].kind == "head"}
    K = max([p.pc + 1 for p in lists if p.unit in heads], default=1)
    dirs = torch.zeros(comp.n_layers, comp.n_heads, K, comp.d_out, dtype=torch.float64)
    for label in heads:
        u = comp.units[comp.index(label)]
        v = bases.components[label][:K].double()
        dirs[u.layer, u.head, : v.shape[0]] = v
    return dirs, K


def trace_pc_maps(model, images: dict[int, object], bases, lists: list[PCImages], batch_size: int = 32,
                  progress=None) -> dict[tuple[int, str, int], np.ndarray]:
    """{(row, head label, pc): (rows, cols) map} for every head entry of ``lists``.

    Args:
        images: store row -> PIL image for every row of :func:`distinct_rows` of the head lists.
        progress: optional callable advanced by the number of images traced.
    """
    from resi_dual.models.spatial import spatial_maps

    comp = model.composition
    wanted: dict[int, list[tuple[str, int]]] = {}
    for p in lists:
        if comp.units[comp.index(p.unit)].kind == "head":
            for r in p.rows():
                wanted.setdefault(r, []).append((p.unit, p.pc))
    if not wanted:
        return {}
    expected = {(r, p.unit, p.pc): c for p in lists for r, c in p.top + p.bottom}
    dirs, _K = head_directions(model, bases, lists)
    rows = sorted(wanted)
    out = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        sm = spatial_maps(model, model.preprocess([images[r] for r in chunk]), dirs)
        patches = sm.patches()
        for i, r in enumerate(chunk):
            for label, pc in wanted[r]:
                u = comp.units[comp.index(label)]
                out[(r, label, pc)] = patches[i, pc, u.layer, u.head].numpy().copy()
                _check_coefficient(sm.cls[i, pc, u.layer, u.head], bases, label, pc, expected[(r, label, pc)], r)
        if progress:
            progress(len(chunk))
    return out


def _check_coefficient(cls: torch.Tensor, bases, label: str, pc: int, stored: float, row: int) -> None:
    """The re-traced coefficient must match the stored one to a small share of the PC's spread."""
    v = bases.components[label][pc].double()
    coef = float(cls) - float(bases.means[label].double() @ v)
    spread = float(bases.explained_variance[label][pc]) ** 0.5
    if abs(coef - stored) > 0.05 * max(spread, 1e-12) + 1e-4 * abs(stored):
        raise ResiDualError(f"re-traced store row {row} does not match the store ({label} PC{pc + 1}: {coef:.4g} "
                            f"vs {stored:.4g} stored): the dataset or the model changed since it was encoded")
