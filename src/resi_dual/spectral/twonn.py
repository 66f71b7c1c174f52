"""TwoNN intrinsic dimension (Facco, d'Errico, Rodriguez & Laio, Sci. Rep. 2017) with exact, blocked 2-NN.

The paper's code forms the full N × N distance matrix (10 GB at N = 50k). Here nearest neighbours are
exact but never need that matrix, and most of the work happens in a few dimensions:

1. rotate the centred points onto their top-m principal axes (m: enough for 99 % of the variance
   of ≤ 4096 evenly spaced points, at least 8). The distance of two projections is a *lower bound*
   of their true distance;
2. per block of query rows, the Gram trick in float32 on the m coordinates (one fused ``addmm``
   into a reused buffer) gives the K+1 smallest lower bounds; the K candidates (3) get their exact
   float64 distance in the original coordinates;
3. a query is certified when the (K+1)-th lower bound, minus a rounding margin, is at least its
   exact r2: no other point can then come closer. Uncertified queries get a second pass with 16×
   more candidates; those still left (rare on data whose spectrum decays; most of them on isotropic
   noise) are redone by brute force in float64 over all dimensions.

So r1, r2 are exact distances in the given coordinates, whatever the data. Duplicates (r1 = 0) and
ties (r1 = r2) are dropped before the fit, as DESIGN.md §5 specifies.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from resi_dual.errors import ResiDualError
from resi_dual.spectral.pca import lapack_single_thread

_EPS32 = float(torch.finfo(torch.float32).eps)


def _as_tensor(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _mapped(x: torch.Tensor, linear_map: torch.Tensor | None) -> torch.Tensor:
    """Rows of x (…, D) in float64, through the optional linear map (r, D): the coordinates distances live in."""
    x = x.to(torch.float64)
    return x if linear_map is None else x @ linear_map.T


def _principal_axes(x, linear_map, mean, variance_kept: float, min_dims: int, block_rows: int) -> torch.Tensor:
    """(D', m) orthonormal top principal axes of the mapped points: enough for ``variance_kept`` of the variance."""
    d = mean.shape[0]
    cov = torch.zeros(d, d, dtype=torch.float64)
    mean32 = mean.to(torch.float32)
    # any orthonormal axes give a valid bound, so evenly spaced rows (≤ 4096) are enough to find good ones
    x = x[:: max(1, x.shape[0] // 4096)]
    for s in range(0, x.shape[0], 8 * block_rows):
        xb = x[s : s + 8 * block_rows]
        # float32 is plenty here: any orthonormal axes give a valid bound, good ones a tight bound
        xb = (xb.to(torch.float32) if linear_map is None else _mapped(xb, linear_map).to(torch.float32)) - mean32
        cov += (xb.T @ xb).to(torch.float64)
    with lapack_single_thread():
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    total = float(evals.sum())
    if total <= 0:
        return evecs[:, : min(d, min_dims)]
    m = int(torch.searchsorted(torch.cumsum(evals, 0) / total, torch.tensor(variance_kept, dtype=torch.float64))) + 1
    return evecs[:, : min(d, max(min_dims, m))]


def _refine(x: torch.Tensor, linear_map, q_idx: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float64 distances from queries (b,) to candidates (b, K); returns sorted (b, K) distances.

    The difference is taken before the map, so duplicate points are at distance exactly 0."""
    diff = x[cand].to(torch.float64) - x[q_idx].to(torch.float64)[:, None, :]  # (b, K, D)
    dist = torch.linalg.vector_norm(_mapped(diff, linear_map), dim=2)
    return torch.sort(dist, dim=1).values, dist


def two_nearest_neighbours(
    x, block_rows: int = 1024, n_candidates: int = 3, variance_kept: float = 0.99, min_dims: int = 8,
    linear_map: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact distances to the first and second nearest neighbour of every point (self excluded by index).

    Args:
        x: (N, D) points, N ≥ 3 (tensor or array; distances are exact float64 in these coordinates).
        block_rows: query rows per block (memory ~ block_rows · N · 4 bytes).
        n_candidates: K, exact candidates per query.
        variance_kept, min_dims: choice of the bounding subspace (see module docstring).
        linear_map: optional (r, D) matrix M; distances are then ``‖M(x_i − x_j)‖`` (a head's
            ``R`` from ``A_h = QR``: output-space distances computed in d_head+2 coordinates).
    Returns:
        r1, r2: (N,) float64, r1 ≤ r2.
    """
    x = _as_tensor(x)
    n, d = x.shape
    if n < 3:
        raise ResiDualError(f"TwoNN needs at least 3 points, got {n}")
    if not torch.isfinite(x).all():
        raise ResiDualError("non-finite values (NaN or inf) in the points given to TwoNN")
    k = min(n_candidates, n - 2)  # K candidates plus one bounding value among n−1 others
    if linear_map is not None:
        linear_map = linear_map.to(torch.float64)
    mean = _mapped(x.mean(0, dtype=torch.float64), linear_map)
    axes = _principal_axes(x, linear_map, mean, variance_kept, min_dims, block_rows)  # (D', m)
    m = axes.shape[1]
    # projections: computed in float64, stored in float32 (rounding ≤ eps32/2 per coordinate)
    y = torch.cat([((_mapped(x[s : s + 8 * block_rows], linear_map) - mean) @ axes).to(torch.float32)
                   for s in range(0, n, 8 * block_rows)])  # (N, m)
    ny = (y.double() ** 2).sum(1)  # (N,) float64
    y_norm_max = float(ny.max().sqrt())
    nr_max = float(ny.max())
    ny32 = ny.to(torch.float32)[None, :]
    gram_tol = (2 * m + 8) * _EPS32  # relative error of the float32 Gram-trick distance², conservative
    r1 = torch.empty(n, dtype=torch.float64)
    r2 = torch.empty(n, dtype=torch.float64)
    # one reused buffer: a fresh 80 MB allocation per block costs more in page faults than the matmul
    buf = torch.empty(min(block_rows, n), n, dtype=torch.float32)
    y_t = y.T

    def certify(queries: torch.Tensor, kk: int) -> torch.Tensor:
        """Exact r1, r2 for ``queries`` from kk candidates each; returns the queries left uncertified."""
        left = []
        rows = max(1, block_rows * 4 // (kk + 1))  # the (rows, kk, D) float64 refinement stays small
        rows = min(rows, block_rows)
        for s in range(0, queries.numel(), rows):
            q = queries[s : s + rows]
            b = q.numel()
            # lower bounds² minus the query's own ‖y_q‖² (constant per row: same order), float32, one fused pass
            d2 = torch.addmm(ny32, y[q], y_t, beta=1.0, alpha=-2.0, out=buf[:b])  # (b, N)
            d2[torch.arange(b), q] = float("inf")  # exclude self by index: duplicates must stay at 0
            vals, idx = torch.topk(d2, kk + 1, dim=1, largest=False, sorted=True)
            if kk + 1 == n - 1:  # tiny inputs: every other point is a candidate, nothing to certify
                srt, _ = _refine(x, linear_map, q, idx)
                r1[q], r2[q] = srt[:, 0], srt[:, 1]
                continue
            srt, _ = _refine(x, linear_map, q, idx[:, :kk])
            r1[q], r2[q] = srt[:, 0], srt[:, 1]
            bound2 = vals[:, kk].double() + ny[q] - gram_tol * (ny[q] + nr_max)
            bound = bound2.clamp_min(0).sqrt() - _EPS32 * (ny[q].sqrt() + y_norm_max)
            ok = (srt[:, 1] == 0) | (bound >= srt[:, 1])  # r2 = 0 is exact whatever the bound
            left.append(q[~ok])
        return torch.cat(left) if left else torch.empty(0, dtype=torch.long)

    todo = certify(torch.arange(n), k)
    k_wide = min(16 * n_candidates, n - 2)
    if todo.numel() and k_wide > k:  # second chance with many more candidates, still in m dimensions
        todo = certify(todo, k_wide)
    if todo.numel():
        _brute_force(x, linear_map, mean, todo, k, block_rows, r1, r2)
    return r1, r2


def _brute_force(x, linear_map, mean, queries, k, block_rows, r1, r2) -> None:
    """Exact 2-NN for the given queries over all dimensions in float64 (in place into r1, r2)."""
    n = x.shape[0]
    bq = max(1, block_rows // 4)
    for s in range(0, queries.numel(), bq):
        q = queries[s : s + bq]
        xq = _mapped(x[q], linear_map) - mean
        d2 = torch.empty(q.numel(), n, dtype=torch.float64)
        for t in range(0, n, 8 * block_rows):
            xr = _mapped(x[t : t + 8 * block_rows], linear_map) - mean
            d2[:, t : t + xr.shape[0]] = (xq**2).sum(1)[:, None] + (xr**2).sum(1)[None, :] - 2.0 * (xq @ xr.T)
        d2[torch.arange(q.numel()), q] = float("inf")
        _, idx = torch.topk(d2, min(k + 1, n - 1), dim=1, largest=False, sorted=True)
        srt, _ = _refine(x, linear_map, q, idx)  # refining K+1 exact candidates; Gram error is ~1e-13 relative
        r1[q], r2[q] = srt[:, 0], srt[:, 1]


def twonn_fit(r1: torch.Tensor, r2: torch.Tensor, discard_fraction: float = 0.1) -> tuple[float, int]:
    """Fit ``−log(1−F) = d·log μ`` through the origin on the smallest (1 − discard) of μ = r2/r1.

    Points with r1 = 0 (duplicates) or r1 = r2 (ties) are dropped first.
    Returns: (dimension, number of points used in the fit).
    """
    keep = (r1 > 0) & (r2 > r1)
    mu = torch.sort(r2[keep] / r1[keep]).values
    n = mu.numel()
    n_fit = int(math.floor(n * (1.0 - discard_fraction)))
    if n_fit < 2:
        raise ResiDualError(f"TwoNN: only {n} points have two distinct, non-zero neighbour distances; need more")
    f = torch.arange(1, n + 1, dtype=torch.float64) / n
    lx = torch.log(mu[:n_fit])
    ly = -torch.log1p(-f[:n_fit])
    return float((lx * ly).sum() / (lx * lx).sum()), n_fit


class TwoNN:
    """TwoNN intrinsic-dimension estimator (scikit-learn contract).

    Parameters:
        discard_fraction: fraction of the largest μ = r2/r1 left out of the fit (0.1 as in Facco et al.).
        max_samples: seeded subsample size when more points are given (50k as in the paper).
        random_state: seed of the subsample.
        block_rows, n_candidates: see :func:`two_nearest_neighbours`.

    Attributes:
        dimension_: the estimate (float). 0.0 when all points coincide (with a warning).
        n_samples_: points used for the neighbour search (after subsampling).
        n_fit_: points in the least-squares fit.
        n_duplicates_: points with r1 = 0; n_ties_: points with r1 = r2 > 0 (both dropped).
        r1_, r2_: (n_samples_,) neighbour distances, float64.
    """

    def __init__(self, discard_fraction: float = 0.1, max_samples: int | None = 50_000, random_state: int = 0,
                 block_rows: int = 1024, n_candidates: int = 3) -> None:
        self.discard_fraction = discard_fraction
        self.max_samples = max_samples
        self.random_state = random_state
        self.block_rows = block_rows
        self.n_candidates = n_candidates

    def fit(self, X, y=None, linear_map=None) -> "TwoNN":
        """Estimate from points X (n, D); ``linear_map`` (r, D) measures distances as ‖M(x_i − x_j)‖."""
        x = _as_tensor(X)
        if x.ndim != 2:
            raise ResiDualError(f"TwoNN expects (n, d) points, got shape {tuple(x.shape)}")
        rows = subsample_rows(x.shape[0], self.max_samples, self.random_state)
        if rows is not None:
            x = x[torch.from_numpy(rows)]
        r1, r2 = two_nearest_neighbours(x, self.block_rows, self.n_candidates, linear_map=linear_map)
        self.r1_, self.r2_ = r1, r2
        self.n_samples_ = int(x.shape[0])
        self.n_duplicates_ = int((r1 == 0).sum())
        self.n_ties_ = int(((r1 == r2) & (r1 > 0)).sum())
        if bool((r2 == 0).all()):
            warnings.warn("TwoNN: every point coincides with its neighbours; dimension reported as 0")
            self.dimension_, self.n_fit_ = 0.0, 0
            return self
        self.dimension_, self.n_fit_ = twonn_fit(r1, r2, self.discard_fraction)
        return self


def subsample_rows(n: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    """Sorted seeded subsample of ``max_samples`` row indices of ``n``, or None when n ≤ max_samples."""
    if max_samples is None or n <= max_samples:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_samples, replace=False))
