"""TwoNN intrinsic dimension (Facco, d'Errico, Rodriguez & Laio, Sci. Rep. 2017) with exact, blocked 2-NN.

The paper's code forms the full N × N distance matrix (10 GB at N = 50k). Here nearest neighbours are
exact but never need that matrix, and most of the work happens in a few dimensions:

1. rotate the centred points onto their top-m principal axes. The distance of two projections is a
   *lower bound* of their true distance. When the mapped dimension D' is small (≤ ``FULL_DIMS`` = 128,
   e.g. a head's d_head+2 coordinates) every coordinate is used, so the bound is tight up to float32
   rounding and nearly every query certifies on the first pass. Otherwise m minimises a cost model
   (:func:`_choose_dims`): first-pass cost grows with m, failures (second pass, brute force) shrink
   with it; a pilot of ~100 queries measures the neighbour distances the model needs;
2. per block of query rows, the Gram trick in float32 on the m coordinates (one fused ``addmm``
   into a reused, cache-sized buffer) gives the K+1 smallest lower bounds — found exactly by taking
   the minimum of each group of 32 columns first and ``topk`` only over the best groups — and the K
   candidates (3) get their exact float64 distance in the original coordinates;
3. a query is certified when the (K+1)-th lower bound, minus a rounding margin, is at least its
   exact r2: no other point can then come closer. Uncertified queries get a second pass with 16×
   more candidates, of which only those whose lower bound is below the first pass's r2 are refined
   (certified when the first unrefined lower bound is at least the new r2); those still left (rare on data whose spectrum decays; most of them on isotropic
   noise) are redone by brute force in float64 over all dimensions.

So r1, r2 are exact distances in the given coordinates, whatever the data. Duplicates (r1 = 0) and
ties (r1 = r2) are dropped before the fit, as DESIGN.md §5 specifies.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from resi_dual.errors import ResiDualError
from resi_dual.spectral.pca import lapack_single_thread

_EPS32 = float(torch.finfo(torch.float32).eps)
#: mapped dimension up to which every coordinate goes into the float32 bound (no PCA needed)
FULL_DIMS = 128
#: columns per group in the two-stage selection of the smallest lower bounds
_GROUP = 32


def _as_tensor(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _mapped(x: torch.Tensor, linear_map: torch.Tensor | None) -> torch.Tensor:
    """Rows of x (…, D) in float64, through the optional linear map (r, D): the coordinates distances live in."""
    x = x.to(torch.float64)
    return x if linear_map is None else x @ linear_map.T


def _mapped32(x: torch.Tensor, linear_map: torch.Tensor | None) -> torch.Tensor:
    """Rows of x through the optional map, in float32 (for estimates only: the spectrum and the pilot)."""
    return x.to(torch.float32) if linear_map is None else _mapped(x, linear_map).to(torch.float32)


def _finite(x: torch.Tensor) -> bool:
    """All entries finite: one cheap sum first (NaN and inf propagate), the full check only if that fails."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _centre(x: torch.Tensor, linear_map, block_rows: int) -> torch.Tensor:
    """(D',) float64 centre of the mapped points.

    Any fixed centre gives the same distances; a good one keeps the projections (hence the float32
    rounding margins) small. Sums in the input's own precision (float64 data keeps an accurate centre
    when its offset dwarfs its spread; float32 data gains nothing from a float64 accumulator, which
    costs 8× more here)."""
    if x.dtype == torch.float64:
        return _mapped(x.sum(0) / x.shape[0], linear_map)
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    for t in range(0, x.shape[0], 16 * block_rows):
        s += x[t : t + 16 * block_rows].to(torch.float32).sum(0).to(torch.float64)
    return _mapped(s / x.shape[0], linear_map)


def _spectrum(x, linear_map, mean, sample_rows: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """(variances (D',) descending, axes (D', D')) of ≤ ``sample_rows`` evenly spaced mapped rows, float32.

    Any orthonormal axes give a valid bound (they are re-orthonormalised in float64 before use),
    good ones a tight bound, so a sample and float32 are enough."""
    xs = x[:: max(1, x.shape[0] // sample_rows)]
    xs = _mapped32(xs, linear_map) - mean.to(torch.float32)
    cov = xs.T @ xs
    with lapack_single_thread():
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    return evals.flip(0).clamp_min(0).double() / max(1, xs.shape[0] - 1), evecs.flip(1)


def _orthonormal(v: torch.Tensor) -> torch.Tensor:
    """(D', m) columns of v made orthonormal to float64 precision (same span and order)."""
    with lapack_single_thread():
        q, r = torch.linalg.qr(v.to(torch.float64))
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(torch.float64)[None, :]


#: relative cost of one float32 lower bound (Gram output + selection), per bound dimension, and of one
#: float64 brute-force distance per coordinate (measured on a 2-core EPYC, single-threaded)
_COST_OUT, _COST_DIM, _COST_BRUTE = 2.0, 0.02, 0.12


def _squared_distances(x, q: torch.Tensor, coords, centre: torch.Tensor, step: int) -> torch.Tensor:
    """(len(q), N) Gram-trick squared distances from the query rows ``q`` to every row, in the
    coordinates ``coords`` gives (its dtype), centred on ``centre``, rows read ``step`` at a time;
    each query's own column is +inf (self excluded by index, so duplicates stay at 0)."""
    n = x.shape[0]
    xq = coords(x[q]) - centre
    d2 = torch.empty(q.numel(), n, dtype=xq.dtype)
    for s in range(0, n, step):
        xr = coords(x[s : s + step]) - centre
        d2[:, s : s + xr.shape[0]] = (xq * xq).sum(1)[:, None] + (xr * xr).sum(1)[None, :] - 2.0 * (xq @ xr.T)
    d2[torch.arange(q.numel()), q] = float("inf")
    return d2


def _choose_dims(x, linear_map, mean, evals, k, k_wide, min_dims, n_pilot: int = 96) -> int:
    """Bounding dimension m minimising the modelled cost of the whole search (used when D' > FULL_DIMS).

    Cost model, per query: pass 1 costs N·(c_out + c_dim·m); a query fails it when its (K+1)-th lower
    bound drops below r2. For ``n_pilot`` evenly spaced queries the exact r2 and the (K+1)-th and
    (16K+1)-th neighbour distances d are found by a float32 Gram pass in all coordinates; a lower bound
    in m dimensions is modelled as √(d² − 2·R_m), R_m the variance beyond the first m axes (the
    expected squared residual of a pair). Pilot failures then cost a second pass (same price) and,
    when the wide candidate list fails too, a float64 brute force (N·D'·c_brute)."""
    n, dm = x.shape[0], evals.shape[0]
    q = torch.arange(0, n, max(1, n // n_pilot))[:n_pilot]
    d2 = _squared_distances(x, q, lambda t: _mapped32(t, linear_map), mean.to(torch.float32), 4096)
    v = torch.topk(d2, k_wide + 1, dim=1, largest=False, sorted=True).values.double().clamp_min(0)
    r2sq, dk, dw = v[:, 1], v[:, k], v[:, k_wide]
    resid = evals.flip(0).cumsum(0).flip(0)  # resid[m] = Σ_{i ≥ m} λ_i
    best, best_cost = dm, float("inf")
    for m in sorted({min(dm, max(min_dims, c)) for c in (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, dm)}):
        r = 2.0 * float(resid[m]) if m < dm else 0.0
        fail1 = float((dk - r < r2sq).double().mean())
        fail2 = float((dw - r < r2sq).double().mean())
        cost = n * (_COST_OUT + _COST_DIM * m) * (1 + fail1) + fail2 * n * dm * _COST_BRUTE
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def _select_smallest(d2: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kk smallest entries of each row of d2 (b, G·g), ascending: (values, column indices).

    Exact, and cheaper than ``topk`` over the whole row: the minimum of every group of ``_GROUP``
    columns, ``topk`` over those minima, then ``topk`` over the kk groups with the smallest minima
    (the kk smallest entries lie in at most kk groups, and those have the kk smallest minima)."""
    b, cols = d2.shape
    if kk * _GROUP * 2 >= cols:
        return torch.topk(d2, kk, dim=1, largest=False, sorted=True)
    mins = d2.view(b, cols // _GROUP, _GROUP).amin(2)
    groups = torch.topk(mins, kk, dim=1, largest=False, sorted=False).indices  # (b, kk)
    sub_cols = (groups[:, :, None] * _GROUP + torch.arange(_GROUP)).view(b, kk * _GROUP)
    vals, j = torch.topk(d2.gather(1, sub_cols), kk, dim=1, largest=False, sorted=True)
    return vals, sub_cols.gather(1, j)


def _refine(x: torch.Tensor, linear_map, q_idx: torch.Tensor, cand: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Exact float64 distances from queries (b,) to candidates (b, K), sorted per row: (b, K).

    The difference is taken before the map (and float32 differences are exact in float64), so
    duplicate points are at distance exactly 0. Chunks of ``chunk`` queries keep temporaries in cache."""
    out = torch.empty(cand.shape, dtype=torch.float64)
    for s in range(0, q_idx.numel(), chunk):
        c, q = cand[s : s + chunk], q_idx[s : s + chunk]
        diff = x[c].to(torch.float64) - x[q].to(torch.float64)[:, None, :]  # (b', K, D)
        out[s : s + chunk] = torch.linalg.vector_norm(_mapped(diff, linear_map), dim=2)
    return torch.sort(out, dim=1).values


def two_nearest_neighbours(
    x, block_rows: int = 256, n_candidates: int = 3, variance_kept: float | None = None, min_dims: int = 8,
    linear_map: torch.Tensor | None = None, bound_dims: int | None = None, stats: dict | None = None,
    n_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact distances to the first and second nearest neighbour of every point (self excluded by index).

    Args:
        x: (N, D) points, N ≥ 3 (tensor or array; distances are exact float64 in these coordinates).
        block_rows: query rows per block (memory ~ block_rows · N · 4 bytes).
        n_candidates: K, exact candidates per query.
        variance_kept: if given, the bounding subspace holds this fraction of the variance (at least
            ``min_dims`` axes) instead of the automatic choice (all D' coordinates when D' ≤ FULL_DIMS,
            else :func:`_choose_dims`' cost model).
        bound_dims: if given, exactly this many bounding axes.
        linear_map: optional (r, D) matrix M; distances are then ``‖M(x_i − x_j)‖`` (a head's
            ``R`` from ``A_h = QR``: output-space distances computed in d_head+2 coordinates).
        stats: optional dict filled with the bounding dimension, the queries left after each pass
            and seconds per phase.
        n_threads: torch threads for the search (None, the default: torch's setting). Measured at
            N = 20k, d = 768 on 2 cores: idle, 0.95–1.1 s on two threads vs 1.6–1.8 s on one; busy
            with other work, 7.9–10.8 s on two vs 1.4 s on one (each threaded op waits for the slowest
            core). On a shared machine pass 1, or parallelise across units (processes) instead.
    Returns:
        r1, r2: (N,) float64, r1 ≤ r2.
    """
    if n_threads is None:
        return _two_nn(x, block_rows, n_candidates, variance_kept, min_dims, linear_map, bound_dims, stats)
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        return _two_nn(x, block_rows, n_candidates, variance_kept, min_dims, linear_map, bound_dims, stats)
    finally:
        torch.set_num_threads(before)


def _two_nn(x, block_rows, n_candidates, variance_kept, min_dims, linear_map, bound_dims, stats):
    clock = time.perf_counter
    t0 = clock()
    x = _as_tensor(x)
    n, d = x.shape
    if n < 3:
        raise ResiDualError(f"TwoNN needs at least 3 points, got {n}")
    if not _finite(x):
        raise ResiDualError("non-finite values (NaN or inf) in the points given to TwoNN")
    k = min(n_candidates, n - 2)  # K candidates plus one bounding value among n−1 others
    k_wide = min(16 * n_candidates, n - 2)
    if linear_map is not None:
        linear_map = linear_map.to(torch.float64)
    d_map = d if linear_map is None else linear_map.shape[0]
    mean = _centre(x, linear_map, block_rows)
    if bound_dims is None and variance_kept is None and d_map <= FULL_DIMS:
        axes = None  # every coordinate: the bound is tight up to float32 rounding
    else:
        evals, evecs = _spectrum(x, linear_map, mean)
        if bound_dims is not None:
            m = bound_dims
        elif variance_kept is not None:
            total = float(evals.sum())
            frac = torch.cumsum(evals, 0) / total if total > 0 else torch.ones_like(evals)
            m = int(torch.searchsorted(frac, torch.tensor(variance_kept, dtype=torch.float64))) + 1
        else:
            m = _choose_dims(x, linear_map, mean, evals, k, k_wide, min_dims)
        m = min(d_map, max(min_dims, m)) if bound_dims is None else min(d_map, max(1, m))
        axes = _orthonormal(evecs[:, :m])  # (D', m)
    t1 = clock()
    # projections: computed in float64, stored in float32 (rounding ≤ eps32/2 per coordinate)
    g = _GROUP
    n_pad = -(-n // g) * g
    parts = []
    for s in range(0, n, block_rows):
        xb = _mapped(x[s : s + block_rows], linear_map) - mean
        parts.append((xb if axes is None else xb @ axes).to(torch.float32))
    y = torch.cat(parts)  # (N, m)
    m = y.shape[1]
    ny = (y.double() ** 2).sum(1)  # (N,) float64
    y_norm_max = float(ny.max().sqrt())
    nr_max = float(ny.max())
    # padded to whole groups of columns: zero coordinates and an infinite norm, so padding is never selected
    ny32 = torch.full((1, n_pad), float("inf"), dtype=torch.float32)
    ny32[0, :n] = ny.to(torch.float32)
    y_t = torch.zeros(m, n_pad, dtype=torch.float32)
    y_t[:, :n] = y.T
    gram_tol = (2 * m + 8) * _EPS32  # relative error of the float32 Gram-trick distance², conservative
    r1 = torch.empty(n, dtype=torch.float64)
    r2 = torch.empty(n, dtype=torch.float64)
    # one reused, cache-sized buffer: a fresh allocation per block costs more in page faults than the matmul
    buf = torch.empty(min(block_rows, n), n_pad, dtype=torch.float32)
    t2 = clock()

    def lower_bounds(v: torch.Tensor, q: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        """Lower bounds (b, c) of the true distances of every point whose float32 value² (plus the
        float64 ``offset`` (b,), if given) is ≥ v (b, c)."""
        bound2 = v.double() if offset is None else v.double() + offset[:, None]
        bound2 -= gram_tol * (ny[q] + nr_max)[:, None]
        return bound2.clamp_min(0).sqrt() - _EPS32 * (ny[q].sqrt() + y_norm_max)[:, None]

    def finish(q: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, upper: torch.Tensor | None,
               offset: torch.Tensor | None = None) -> torch.Tensor:
        """Exact r1, r2 of queries q from their smallest values² (b, kk+1), ascending; returns q left uncertified.

        Only candidates whose lower bound is below ``upper`` (a known upper bound of r2) are refined;
        the query is certified when the first candidate not refined is bounded below by r2."""
        kk = vals.shape[1] - 1
        if kk + 1 == n - 1:  # tiny inputs: every other point is a candidate, nothing to certify
            srt = _refine(x, linear_map, q, idx)
            r1[q], r2[q] = srt[:, 0], srt[:, 1]
            return q[:0]
        lb = lower_bounds(vals, q, offset)  # (b, kk+1)
        c = kk if upper is None else max(min(2, kk), int((lb[:, :kk] < upper[:, None]).sum(1).max()))
        srt = _refine(x, linear_map, q, idx[:, :c])
        r1[q], r2[q] = srt[:, 0], srt[:, 1]
        ok = (srt[:, 1] == 0) | (lb[:, c] >= srt[:, 1])  # r2 = 0 is exact whatever the bound
        return q[~ok]

    def certify(queries: torch.Tensor, kk: int) -> torch.Tensor:
        """r1, r2 for ``queries`` from kk candidates each; returns the queries left uncertified."""
        left = []
        for s in range(0, queries.numel(), block_rows):
            q = queries[s : s + block_rows]
            b = q.numel()
            # lower bounds² minus the query's own ‖y_q‖² (constant per row: same order), float32, one fused pass
            d2 = torch.addmm(ny32, y[q], y_t, beta=1.0, alpha=-2.0, out=buf[:b])  # (b, N_pad)
            d2[torch.arange(b), q] = float("inf")  # exclude self by index: duplicates must stay at 0
            vals, idx = _select_smallest(d2, kk + 1)
            left.append(finish(q, vals, idx, None if kk == k else r2[q], offset=ny[q]))
        return torch.cat(left) if left else torch.empty(0, dtype=torch.long)

    todo = certify(torch.arange(n), k)
    left1 = todo.numel()
    t3 = clock()
    if todo.numel() and k_wide > k:  # second chance with many more candidates, still in m dimensions
        todo = certify(todo, k_wide)
    left2 = todo.numel()
    t4 = clock()
    if todo.numel():
        _brute_force(x, linear_map, mean, todo, k, block_rows, r1, r2)
    if stats is not None:
        stats.update(bound_dims=m, mapped_dims=d_map, n=n, left_after_pass1=left1, left_after_pass2=left2,
                     seconds_setup=t1 - t0, seconds_project=t2 - t1, seconds_pass1=t3 - t2, seconds_pass2=t4 - t3,
                     seconds_brute=clock() - t4)
    return r1, r2


def _brute_force(x, linear_map, mean, queries, k, block_rows, r1, r2) -> None:
    """Exact 2-NN for the given queries over all dimensions in float64 (in place into r1, r2)."""
    n = x.shape[0]
    bq = max(1, block_rows // 4)
    for s in range(0, queries.numel(), bq):
        q = queries[s : s + bq]
        d2 = _squared_distances(x, q, lambda t: _mapped(t, linear_map), mean, 8 * block_rows)
        _, idx = torch.topk(d2, min(k + 1, n - 1), dim=1, largest=False, sorted=True)
        srt = _refine(x, linear_map, q, idx)  # refining K+1 exact candidates; Gram error is ~1e-13 relative
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
        block_rows, n_candidates, n_threads: see :func:`two_nearest_neighbours`.

    Attributes:
        dimension_: the estimate (float). 0.0 when all points coincide (with a warning).
        n_samples_: points used for the neighbour search (after subsampling).
        n_fit_: points in the least-squares fit.
        n_duplicates_: points with r1 = 0; n_ties_: points with r1 = r2 > 0 (both dropped).
        r1_, r2_: (n_samples_,) neighbour distances, float64.
    """

    def __init__(self, discard_fraction: float = 0.1, max_samples: int | None = 50_000, random_state: int = 0,
                 block_rows: int = 256, n_candidates: int = 3, n_threads: int | None = None) -> None:
        self.discard_fraction = discard_fraction
        self.max_samples = max_samples
        self.random_state = random_state
        self.block_rows = block_rows
        self.n_candidates = n_candidates
        self.n_threads = n_threads

    def fit(self, X, y=None, linear_map=None) -> "TwoNN":
        """Estimate from points X (n, D); ``linear_map`` (r, D) measures distances as ‖M(x_i − x_j)‖."""
        x = _as_tensor(X)
        if x.ndim != 2:
            raise ResiDualError(f"TwoNN expects (n, d) points, got shape {tuple(x.shape)}")
        rows = subsample_rows(x.shape[0], self.max_samples, self.random_state)
        if rows is not None:
            x = x[torch.from_numpy(rows)]
        r1, r2 = two_nearest_neighbours(x, self.block_rows, self.n_candidates, linear_map=linear_map,
                                        n_threads=self.n_threads)
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
