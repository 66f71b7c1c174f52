"""Intrinsic dimension of every unit: linear ID, PC1 ratio, participation ratio and TwoNN (docs/DESIGN.md §5).

The spectral measures come from a unit's :class:`~resi_dual.spectral.bases.UnitBases` entry. TwoNN
runs on a seeded subsample (≤ 50k rows, as in the paper) of the unit's features ``f_u`` with output
distances ``‖A_u(f_i − f_j)‖ = ‖R_u(f_i − f_j)‖`` (thin QR ``A_u = Q_u R_u``), i.e. in d_head+2
coordinates for heads.

``ratio`` is the paper's L/N: linear ID over TwoNN ID (how far the unit's manifold is from flat).
Zero-variance (constant) units: linear ID, PC1 ratio, participation ratio, TwoNN and ratio are all
reported as 0 (a single point is 0-dimensional), with a warning; never NaN. When TwoNN is skipped
(``twonn_samples=0``) its column and the ratio are -1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from resi_dual.core.progress import task
from resi_dual.errors import ResiDualError
from resi_dual.runtime import single_thread
from resi_dual.spectral.bases import UnitBases
from resi_dual.spectral.twonn import TwoNN, subsample_rows
from resi_dual.store.base import EncodingSource


def linear_id(explained_variance: torch.Tensor, total_variance: float, threshold: float = 0.99) -> int:
    """Smallest k with cumulative explained-variance ratio > ``threshold``; 0 for a constant unit.

    Args: explained_variance (k,) descending; total_variance: trace of the covariance.
    """
    if total_variance <= 0.0:
        return 0
    cum = torch.cumsum(explained_variance.to(torch.float64), 0) / total_variance
    above = torch.nonzero(cum > threshold)
    # ratios can miss the threshold by rounding when every component is kept: then all are needed
    return int(above[0, 0]) + 1 if above.numel() else int(explained_variance.numel())


def pc1_ratio(explained_variance: torch.Tensor, total_variance: float) -> float:
    """Explained-variance ratio of the first component; 0 for a constant unit."""
    if total_variance <= 0.0 or explained_variance.numel() == 0:
        return 0.0
    return float(explained_variance[0]) / total_variance


def participation_ratio(explained_variance: torch.Tensor) -> float:
    """``(Σλ)² / Σλ²``; 0 for a constant unit."""
    ev = explained_variance.to(torch.float64)
    denom = float((ev * ev).sum())
    return 0.0 if denom <= 0.0 else float(ev.sum()) ** 2 / denom


@dataclass
class UnitID:
    """One row of the intrinsic-dimension table."""

    unit: str
    kind: str
    layer: int
    head: int
    linear_id: int
    twonn_id: float
    ratio: float
    pc1_ratio: float
    participation_ratio: float
    n_components: int
    total_variance: float


def distance_map(source: EncodingSource, index: int) -> torch.Tensor:
    """(r, d_in+2) ``R_u`` with ``A_u = Q_u R_u``: ``‖R_u (f_i − f_j)‖`` is the output-space distance."""
    a, _ = source.readout.to(torch.float64).affine(source.composition, index)
    with single_thread():
        return torch.linalg.qr(a, mode="reduced")[1]


def unit_features_subsample(source: EncodingSource, indices: list[int], rows: np.ndarray | None,
                            block_rows: int = 4096) -> list[torch.Tensor]:
    """Features ``f_u`` (n', d_in+2) float64 of several units for the given rows, in one pass."""
    from resi_dual.core.encodings import unit_features

    rows = np.arange(len(source)) if rows is None else rows
    parts: list[list[torch.Tensor]] = [[] for _ in indices]
    for s in range(0, len(rows), block_rows):
        r = rows[s : s + block_rows]
        b = source.raw(slice(int(r[0]), int(r[-1]) + 1) if _is_contiguous(r) else r, torch.float64)
        for j, i in enumerate(indices):
            parts[j].append(unit_features(source.composition, i, b.dense, b.heads, b.mu, b.sigma))
    return [torch.cat(p) for p in parts]


def _is_contiguous(r: np.ndarray) -> bool:
    return len(r) > 0 and int(r[-1]) - int(r[0]) + 1 == len(r)


def unit_intrinsic_dimensions(
    source: EncodingSource,
    bases: UnitBases,
    threshold: float = 0.99,
    twonn_samples: int = 50_000,
    twonn_discard: float = 0.1,
    seed: int = 0,
    memory_budget: float = 1e9,
    progress: bool = True,
) -> list[UnitID]:
    """The ID table for every unit of ``bases`` (see module docstring).

    Args:
        source: the store the bases were fitted on.
        bases: from :func:`resi_dual.spectral.pca.fit_bases`.
        threshold: cumulative-variance ratio for the linear ID.
        twonn_samples: subsample size for TwoNN (0 skips TwoNN: ``twonn_id`` is then reported as -1).
        twonn_discard: fraction of the largest μ = r2/r1 left out of the TwoNN fit (the paper: 0.1).
        seed: subsample seed.
        memory_budget: bytes of features held at once; units are processed in groups that fit.
        progress: True (the installed bars), False, or a ``core.progress.Progress`` (docs/DESIGN.md §14).
    Returns:
        one :class:`UnitID` per unit, in the order of ``bases.labels``.
    """
    if not 0.0 < threshold <= 1.0:
        raise ResiDualError(f"threshold must be in (0, 1], got {threshold}")
    comp = source.composition
    if not comp.same_model(bases.composition):
        raise ResiDualError("the bases were fitted on a different model than this store")
    n_sub = min(len(source), twonn_samples) if twonn_samples > 0 else 0
    rows = subsample_rows(len(source), n_sub, seed) if n_sub else None
    twonn: dict[str, float] = {}
    indices = [comp.index(lab) for lab in bases.labels]
    with task(progress if n_sub else False, "TwoNN per unit", len(indices)) as step:
        if n_sub:
            groups, cur, used = [], [], 0.0
            for i in indices:
                u = comp.units[i]
                width = comp.width(u.kind) + 2
                if cur and used + n_sub * width * 8 > memory_budget:
                    groups.append(cur)
                    cur, used = [], 0.0
                cur.append(i)
                used += n_sub * width * 8
            groups.append(cur)
            for group in groups:
                feats = unit_features_subsample(source, group, rows)
                for i, f in zip(group, feats):
                    lab = comp.units[i].label
                    if bases.total_variance[lab] <= 0.0:
                        twonn[lab] = 0.0
                    else:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            twonn[lab] = TwoNN(discard_fraction=twonn_discard, max_samples=None).fit(f, linear_map=distance_map(source, i)).dimension_
                    step()
    out = []
    for lab in bases.labels:
        u = comp.units[comp.index(lab)]
        ev, tv = bases.explained_variance[lab], bases.total_variance[lab]
        lid = linear_id(ev, tv, threshold)
        nid = float(twonn.get(lab, -1.0))
        out.append(UnitID(
            unit=lab, kind=u.kind, layer=u.layer, head=u.head, linear_id=lid, twonn_id=nid,
            ratio=lid / nid if nid > 0 else nid,
            pc1_ratio=pc1_ratio(ev, tv), participation_ratio=participation_ratio(ev),
            n_components=int(ev.numel()), total_variance=float(tv),
        ))
    return out
