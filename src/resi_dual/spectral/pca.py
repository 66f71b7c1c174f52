"""Per-unit PCA in the output space, in one streaming pass over a store (docs/DESIGN.md §4, §5).

Every unit's contribution is affine in its features, ``c_u = A_u f_u + k_u`` with
``f_u = [x_u/σ, 1/σ, μ/σ]`` (d_in+2 numbers; see :mod:`resi_dual.core.encodings`). So instead of
materialising ``c_u`` (n × d_out) and taking its SVD, we accumulate the first and second moments of
``f_u`` — all heads at once with one batched matmul per block, in float64, mergeable across shards
(Chan, Golub & LeVeque's pairwise update) — and finish each unit with a thin QR ``A_u = QR`` and an
eigendecomposition of ``R Σ_f Rᵀ``: components ``(Q V)ᵀ``, the same as a direct PCA of ``c_u``.
Memory is independent of the number of samples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from resi_dual.core.progress import task
from resi_dual.errors import ResiDualError
from resi_dual.runtime import release_free_memory, single_thread
from resi_dual.core.units import Composition
from resi_dual.spectral.bases import UnitBases
from resi_dual.store.base import EncodingSource, RawBlock


def svd_flip_rows(components: torch.Tensor) -> torch.Tensor:
    """Fix signs so that each row's largest-|x| entry is positive (scikit-learn's ``svd_flip``).

    Args: components (..., k, d). Returns: (..., k, d), same rows up to sign.
    """
    if components.numel() == 0:
        return components
    idx = components.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(components.gather(-1, idx))
    signs[signs == 0] = 1
    return components * signs


@dataclass
class _GroupMoments:
    """Count, mean (k, p) and centred co-moment (k, p, p) of k same-width feature vectors, float64."""

    n: int
    mean: torch.Tensor
    m2: torch.Tensor

    def update_slice(self, j0: int, f: torch.Tensor) -> None:
        """Merge a block ``f`` (b, k', p) of units ``j0 … j0+k'`` only (all slices of a block share b and
        the caller adds b to ``n`` after the last one). Written into the moments in place, and f is
        centred in place: a streaming pass then allocates nothing that grows the heap block by block."""
        b, k = f.shape[0], f.shape[1]
        if b == 0:
            return
        mean, m2 = self.mean[j0 : j0 + k], self.m2[j0 : j0 + k]
        mean_b = f.mean(0)  # (k, p)
        fc = f.sub_(mean_b).transpose(0, 1)  # (k, b, p), a strided view: no copy for the batched matmul
        if self.n == 0:
            torch.bmm(fc.transpose(1, 2), fc, out=m2)
            mean.copy_(mean_b)
            return
        m2.baddbmm_(fc.transpose(1, 2), fc)  # + the block's own co-moment, one batched matmul
        n = self.n + b
        delta = mean_b.sub_(mean)  # (k, p)
        m2.add_(delta[:, :, None] * delta[:, None, :], alpha=self.n * b / n)
        mean.add_(delta, alpha=b / n)

    def merge(self, other: "_GroupMoments") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return
        n = self.n + other.n
        delta = other.mean - self.mean  # (k, p)
        self.m2 += other.m2 + delta[:, :, None] * delta[:, None, :] * (self.n * other.n / n)
        self.mean += delta * (other.n / n)
        self.n = n


def _check_finite(f: torch.Tensor, what: str) -> None:
    if not (torch.isfinite(f.sum()) or torch.isfinite(f).all()):  # NaN and inf reach the sum: one cheap pass
        raise ResiDualError(f"non-finite values (NaN or inf) in the encodings of {what}; re-encode the store")


class UnitMoments:
    """Streaming, exactly mergeable first and second moments of the features of selected units.

    ``update(block)`` with :class:`~resi_dual.store.base.RawBlock` s in any order, ``merge`` moments
    computed elsewhere on other rows (shards, workers), then :meth:`to_bases` for the PCA.

    Args:
        composition: the model's units.
        unit_indices: indices into ``composition.units``; heads and emb/MLP units may be mixed.
    """

    #: float64 elements of one chunk of features (b · k' · p): temporaries stay about two chunks of
    #: 16 MB, whatever the number of rows (smaller chunks lower the peak and, staying in cache, run faster)
    CHUNK_ELEMENTS = 2_000_000

    def __init__(self, composition: Composition, unit_indices: list[int]) -> None:
        self.composition = composition
        self.unit_indices = list(unit_indices)
        comp = composition
        self._heads = [i for i in self.unit_indices if comp.units[i].kind == "head"]
        self._dense = [i for i in self.unit_indices if comp.units[i].kind != "head"]
        self._head_l = [comp.units[i].layer for i in self._heads]
        self._head_h = [comp.units[i].head for i in self._heads]
        self._dense_slot = [comp.dense_slot(comp.units[i]) for i in self._dense]
        ph, pd = comp.width("head") + 2, comp.width("mlp") + 2
        z = torch.zeros
        self.heads = _GroupMoments(0, z(len(self._heads), ph, dtype=torch.float64), z(len(self._heads), ph, ph, dtype=torch.float64))
        self.dense = _GroupMoments(0, z(len(self._dense), pd, dtype=torch.float64), z(len(self._dense), pd, pd, dtype=torch.float64))
        self._buf: torch.Tensor | None = None

    def _scratch(self, numel: int) -> torch.Tensor:
        """A float64 buffer of ``numel`` elements, reused across chunks and blocks: allocating a fresh one
        each time lets the allocator keep freed pages, so the resident peak grew with the row count."""
        if self._buf is None or self._buf.numel() < numel:
            self._buf = torch.empty(max(numel, self.CHUNK_ELEMENTS), dtype=torch.float64)
        return self._buf[:numel]

    def release_scratch(self) -> None:
        """Drop the reused buffer (moments stay mergeable; a later update allocates it again)."""
        self._buf = None

    @property
    def n(self) -> int:
        return self.heads.n if self._heads else self.dense.n

    def update(self, block: RawBlock) -> "UnitMoments":
        """Add a block of rows (any dtype; accumulated in float64)."""
        dt = torch.float64
        sigma = block.sigma.to(dt)
        inv_s = (1.0 / sigma)[:, None, None]  # (b, 1, 1)
        mos = (block.mu.to(dt) / sigma)[:, None, None]
        b = sigma.shape[0]
        for group, src, first, second in (
            (self.heads, block.heads, self._head_l, self._head_h),  # (b, L, H, d_head)
            (self.dense, block.dense, self._dense_slot, None),  # (b, 1+L, d_model)
        ):
            k_all = len(first)
            if k_all == 0:
                continue
            p = group.mean.shape[1]
            step = max(1, self.CHUNK_ELEMENTS // (b * p))  # bound the float64 temporaries per chunk of units
            for j0 in range(0, k_all, step):
                units = range(j0, min(k_all, j0 + step))
                f = self._scratch(b * len(units) * p).view(b, len(units), p)
                for j, u in enumerate(units):  # each unit's columns converted straight into the buffer
                    f[:, j, : p - 2] = src[:, first[u], second[u]] if second is not None else src[:, first[u]]
                f[:, :, : p - 2] *= inv_s
                f[:, :, p - 2] = inv_s[:, :, 0]
                f[:, :, p - 1] = mos[:, :, 0]
                _check_finite(f, "a block of rows")
                group.update_slice(j0, f)
            group.n += b
        return self

    def merge(self, other: "UnitMoments") -> "UnitMoments":
        """Merge moments of other rows of the same units (exact)."""
        if other.unit_indices != self.unit_indices or not other.composition.same_model(self.composition):
            raise ResiDualError("cannot merge moments of different units or models")
        self.heads.merge(other.heads)
        self.dense.merge(other.dense)
        return self

    def feature_stats(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean_f (p,), covariance Σ_f (p, p)) of unit index ``i``, float64, divisor n−1."""
        if i in self._heads:
            g, j = self.heads, self._heads.index(i)
        else:
            g, j = self.dense, self._dense.index(i)
        return g.mean[j], g.m2[j] / max(g.n - 1, 1)

    def to_bases(self, readout, meta: dict | None = None, progress=None) -> UnitBases:
        """PCA of every unit from its moments and its affine readout (see module docstring).

        Units of one width are finished together (batched QR and eigendecomposition), in chunks of
        about ``FINISH_ELEMENTS`` readout entries so the float64 temporaries stay small."""
        n = self.n
        if n < 2:
            raise ResiDualError(f"PCA needs at least 2 samples, the store has {n}")
        comp = self.composition
        means, comps, evs, tvs = {}, {}, {}, {}
        for group, idx in ((self.heads, self._heads), (self.dense, self._dense)):
            if not idx:
                continue
            mean, components, ev, total = self._finish_group(group, idx, readout, progress)
            for j, i in enumerate(idx):
                lab = comp.units[i].label
                if total[j] <= 0.0:
                    warnings.warn(f"unit {lab} has zero variance (constant contributions); its ratios are reported as 0")
                means[lab], comps[lab], evs[lab], tvs[lab] = mean[j], components[j], ev[j], float(total[j])
        labels = [comp.units[i].label for i in sorted(self.unit_indices)]
        return UnitBases(comp, labels, means, comps, evs, tvs, n, dict(meta or {}))

    #: readout entries (k' · d_out · p) of one chunk of units in :meth:`to_bases`: each float64
    #: temporary of the factorisations (QR, components, sign fix) is then ~2 MB, small next to the
    #: results; with the moments' chunk and the whole readout in float64 this phase set the PCA's peak
    FINISH_ELEMENTS = 262_144

    def _finish_group(self, group: _GroupMoments, idx: list[int], readout, progress):
        """(means (k, d_out), components (k, r, d_out), explained variance (k, r), total (k,)) of
        the units ``idx`` of one width. The results are allocated once, before any temporary, and
        each chunk's readout is converted to float64 alone (not the whole readout)."""
        comp, n, f64 = self.composition, group.n, torch.float64
        k_all, p, d_out = len(idx), group.mean.shape[1], comp.d_out
        r = min(n - 1, p, d_out)  # as pca_from_moments keeps
        mean, components = torch.empty(k_all, d_out, dtype=f64), torch.empty(k_all, r, d_out, dtype=f64)
        ev, total = torch.empty(k_all, r, dtype=f64), torch.empty(k_all, dtype=f64)
        step = min(k_all, max(1, self.FINISH_ELEMENTS // (d_out * p)))
        a, k_u = torch.empty(step, d_out, p, dtype=f64), torch.empty(step, d_out, dtype=f64)
        for j0 in range(0, k_all, step):
            chunk = idx[j0 : j0 + step]
            for j, i in enumerate(chunk):
                a_i, k_i = readout.affine(comp, i)  # (d_out, p), (d_out,) in the readout's dtype
                a[j].copy_(a_i)
                k_u[j].copy_(k_i)
            sl, k = slice(j0, j0 + len(chunk)), len(chunk)
            out = pca_from_moments(a[:k], k_u[:k], group.mean[sl], group.m2[sl] / (n - 1), n)
            for dst, src in zip((mean, components, ev, total), out):
                dst[sl] = src
            del out
            release_free_memory()  # the chunk's freed temporaries: else where the heap puts the next sets the peak
            if progress is not None:
                for _ in chunk:
                    progress()
        return mean, components, ev, total


def pca_from_moments(
    a: torch.Tensor, k: torch.Tensor, mean_f: torch.Tensor, cov_f: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of ``c = A f + k`` from the moments of ``f`` (optionally batched over leading dims).

    Args:
        a: (..., d_out, p) readout ``A_u``; k: (..., d_out); mean_f: (..., p); cov_f: (..., p, p)
            (divisor n−1); n: number of samples.
    Returns:
        mean (..., d_out), components (..., r, d_out) sign-fixed orthonormal rows with
        r = min(n−1, p, d_out), explained variance (..., r) descending, total variance (...). float64.
    """
    a, cov_f = a.to(torch.float64), cov_f.to(torch.float64)
    with single_thread():
        q, r = torch.linalg.qr(a, mode="reduced")  # q (d_out, m), r (m, p), m = min(d_out, p)
        s = r @ cov_f @ r.transpose(-1, -2)  # covariance of the contributions in the basis q
        s = 0.5 * (s + s.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(s)  # ascending
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    total = torch.diagonal(s, dim1=-2, dim2=-1).sum(-1).clamp_min(0.0)
    keep = min(n - 1, evals.shape[-1])  # n samples span at most n−1 directions
    components = svd_flip_rows((q @ evecs[..., :keep]).transpose(-1, -2).contiguous())
    mean = (a @ mean_f.to(torch.float64)[..., None])[..., 0] + k.to(torch.float64)
    return mean, components, evals[..., :keep].clamp_min(0.0), total


def fit_bases(
    source: EncodingSource,
    units=None,
    block_rows: int = 4096,
    progress: bool = True,
) -> UnitBases:
    """Per-unit PCA of a store's contributions in one pass (see module docstring).

    Args:
        source: any :class:`~resi_dual.store.base.EncodingSource`.
        units: labels, a shorthand (``heads``, ``mlps``, ``all`` …) or indices; all units by default.
        block_rows: rows per block; memory is O(block_rows · U · d_in) + O(U · (d_in+2)²).
        progress: True (the installed bars), False, or a ``core.progress.Progress`` (docs/DESIGN.md §14).
    Returns:
        :class:`UnitBases` (float64 tensors) with all ``min(n−1, d_in+2, d_out)`` components per unit.
    """
    return UnitPCA(units=units, block_rows=block_rows, progress=progress).fit(source).bases_


class UnitPCA:
    """Per-unit PCA estimator over an :class:`EncodingSource` (scikit-learn contract).

    Parameters:
        units: which units (labels, shorthand or indices; all by default).
        block_rows: rows per streamed block.
        progress: show progress bars.

    Attributes:
        bases_: :class:`UnitBases` — per unit ``means``, ``components`` (k_u, d_out),
            ``explained_variance`` (k_u,), ``total_variance``.
        moments_: :class:`UnitMoments`, mergeable with moments of other shards.
        n_samples_: number of samples seen.
    """

    def __init__(self, units=None, block_rows: int = 4096, progress: bool = True) -> None:
        self.units = units
        self.block_rows = block_rows
        self.progress = progress

    def fit(self, source: EncodingSource) -> "UnitPCA":
        comp = source.composition
        idx = comp.select(self.units, require=True)
        moments = UnitMoments(comp, idx)
        with task(self.progress, "PCA: moments", len(source)) as step:
            # stored dtype: each unit's columns are converted to float64 per chunk inside update, so no
            # float32 copy of the whole block (nor of fields the selected units never read) is made
            for block in source.iter_blocks(self.block_rows, dtype=None):
                moments.update(block)
                rows = len(block)
                del block  # before the next block is read: one block alive at a time
                step(rows)
            moments.release_scratch()
            release_free_memory()  # pages the pass freed go back before the factorisations allocate theirs
        with task(self.progress, "PCA: per-unit eigendecomposition", len(idx)) as step:
            meta = source.meta.identity()
            self.bases_ = moments.to_bases(source.readout, meta=meta, progress=step)
        self.moments_ = moments
        self.n_samples_ = moments.n
        return self

    def transform(self, source: EncodingSource, unit: str, rows=None) -> torch.Tensor:
        """(n', k_u) PCA coordinates ``⟨c_u − m_u, v_k⟩`` of one unit (float64)."""
        b = self.bases_
        i = source.composition.index(unit)
        a, k = source.readout.to(torch.float64).affine(source.composition, i)
        f = source.features(i, rows, dtype=torch.float64)
        return (f @ a.T + k - b.means[unit]) @ b.components[unit].T

