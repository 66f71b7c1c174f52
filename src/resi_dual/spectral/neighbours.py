"""Exact distances to the first and second nearest neighbour, without the N × N distance matrix.

TwoNN (Facco et al. 2017; :mod:`resi_dual.spectral.twonn`) needs them for every point. The paper's
code forms the full N × N distance matrix (10 GB at N = 50k). Here nearest neighbours are
exact but never need that matrix, and most of the work happens in a few dimensions:

1. rotate the centred points onto their top-m principal axes. The distance of two projections is a
   *lower bound* of their true distance. When the mapped dimension D' is small (≤ ``FULL_DIMS`` = 128,
   e.g. a head's d_head+2 coordinates) every coordinate is used, so the bound is tight up to float32
   rounding and nearly every query certifies on the first pass. Otherwise m minimises a cost model
   (:func:`_choose_dims`): first-pass cost grows with m, failures (second pass, brute force) shrink
   with it; a pilot of ~100 queries measures the neighbour distances the model needs;
2. the Gram trick in float32 on the m coordinates, as one product of [y, ‖y‖², 1] by [−2y, 1, ‖y‖²],
   over the upper triangle only (the values are symmetric), in cache-sized tiles, keeps the minimum of
   every group of 32 points for every point; per query, the K+1 groups with the smallest minima are
   recomputed, which gives its K+1 smallest lower bounds exactly, and the K candidates (3) get their
   exact float64 distance in the original coordinates (the third only where it could be closer);
3. a query is certified when the (K+1)-th lower bound, minus a rounding margin, is at least its
   exact r2: no other point can then come closer. Uncertified queries get a second pass with 16×
   more candidates, of which only those whose lower bound is below the first pass's r2 are refined
   (certified when the first unrefined lower bound is at least the new r2); those still left (rare
   on data whose spectrum decays; most of them on isotropic noise) are redone by brute force in float64 over all dimensions.

So r1, r2 are exact distances in the given coordinates, whatever the data. The bound and its passes
(steps 2 and 3) are in :mod:`resi_dual.spectral.lower_bound`; this module chooses the axes and drives them.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from resi_dual.errors import ResiDualError
from resi_dual.runtime import single_thread, torch_threads
from resi_dual.spectral.lower_bound import LowerBound, certify_rows, first_pass, mapped, refine

#: mapped dimension up to which every coordinate goes into the float32 bound (no PCA needed)
FULL_DIMS = 128


def _as_tensor(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _mapped32(x: torch.Tensor, linear_map: torch.Tensor | None) -> torch.Tensor:
    """Rows of x through the optional map, in float32 (for estimates only: the spectrum and the pilot)."""
    return x.to(torch.float32) if linear_map is None else mapped(x, linear_map).to(torch.float32)


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
        return mapped(x.sum(0) / x.shape[0], linear_map)
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    for t in range(0, x.shape[0], 16 * block_rows):
        s += x[t : t + 16 * block_rows].to(torch.float32).sum(0).to(torch.float64)
    return mapped(s / x.shape[0], linear_map)


def _spectrum(x, linear_map, mean, sample_rows: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """(variances (D',) descending, axes (D', D')) of ≤ ``sample_rows`` evenly spaced mapped rows, float32.

    Any orthonormal axes give a valid bound (they are re-orthonormalised in float64 before use),
    good ones a tight bound, so a sample and float32 are enough."""
    xs = x[:: max(1, x.shape[0] // sample_rows)]
    xs = _mapped32(xs, linear_map) - mean.to(torch.float32)
    cov = xs.T @ xs
    with single_thread():
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    return evals.flip(0).clamp_min(0).double() / max(1, xs.shape[0] - 1), evecs.flip(1)


def _orthonormal(v: torch.Tensor) -> torch.Tensor:
    """(D', m) columns of v made orthonormal to float64 precision (same span and order)."""
    with single_thread():
        q, r = torch.linalg.qr(v.to(torch.float64))
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(torch.float64)[None, :]


#: relative cost of one float32 lower bound (Gram output + selection), per bound dimension, and of one
#: float64 brute-force distance per coordinate, single-threaded (how they were measured: BENCHMARKS.md)
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


def two_nearest_neighbours(
    x, block_rows: int = 256, n_candidates: int = 3, variance_kept: float | None = None, min_dims: int = 8,
    linear_map: torch.Tensor | None = None, bound_dims: int | None = None, stats: dict | None = None,
    n_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact distances to the first and second nearest neighbour of every point (self excluded by index).

    Args:
        x: (N, D) points, N ≥ 3 (tensor or array; distances are exact float64 in these coordinates).
        block_rows: query rows per block (memory ~ block_rows · N · 4 bytes, plus N² / 8 bytes of
            group minima for the first pass).
        n_candidates: K, exact candidates per query.
        variance_kept: if given, the bounding subspace holds this fraction of the variance (at least
            ``min_dims`` axes) instead of the automatic choice (all D' coordinates when D' ≤ FULL_DIMS,
            else :func:`_choose_dims`' cost model).
        bound_dims: if given, exactly this many bounding axes.
        linear_map: optional (r, D) matrix M; distances are then ``‖M(x_i − x_j)‖`` (a head's
            ``R`` from ``A_h = QR``: output-space distances computed in d_head+2 coordinates).
        stats: optional dict filled with the bounding dimension, the queries left after each pass
            and seconds per phase.
        n_threads: torch threads for the search (None, the default: torch's setting). Threaded
            products wait for the slowest core, so on a busy shared machine one thread per search
            (and several searches in parallel processes) is the steadier choice.
    Returns:
        r1, r2: (N,) float64, r1 ≤ r2.
    """
    with torch_threads(n_threads):
        return _two_nn(_as_tensor(x), block_rows, n_candidates, variance_kept, min_dims, linear_map, bound_dims, stats)


def _two_nn(x, block_rows, n_candidates, variance_kept, min_dims, linear_map, bound_dims, stats):
    """The search of :func:`two_nearest_neighbours` on a tensor x (N, D): bound, pass 1, pass 2, brute force."""
    clock = time.perf_counter
    t0 = clock()
    n = x.shape[0]
    if x.ndim != 2 or n < 3:
        raise ResiDualError(f"TwoNN needs at least 3 points as an (n, d) array, got shape {tuple(x.shape)}")
    if not _finite(x):
        raise ResiDualError("non-finite values (NaN or inf) in the points given to TwoNN")
    k = min(n_candidates, n - 2)  # K candidates plus one bounding value among n−1 others
    k_wide = min(16 * n_candidates, n - 2)
    if linear_map is not None:
        linear_map = linear_map.to(torch.float64)
    mean = _centre(x, linear_map, block_rows)
    axes = _bounding_axes(x, linear_map, mean, k, k_wide, variance_kept, bound_dims, min_dims)
    t1 = clock()
    bound = LowerBound.build(x, linear_map, mean, axes, block_rows)
    t2 = clock()
    r1, r2, todo = first_pass(x, linear_map, bound, k, block_rows)
    left1 = todo.numel()
    t3 = clock()
    if todo.numel() and k_wide > k:  # second chance with many more candidates, still in m dimensions
        s1, s2, still = certify_rows(x, linear_map, bound, todo, k_wide, r2[todo], block_rows)
        r1[todo], r2[todo], todo = s1, s2, still
    left2 = todo.numel()
    t4 = clock()
    if todo.numel():
        _brute_force(x, linear_map, mean, todo, k, block_rows, r1, r2)
    if stats is not None:
        stats.update(bound_dims=bound.m, mapped_dims=mean.shape[0], n=n, left_after_pass1=left1,
                     left_after_pass2=left2, seconds_setup=t1 - t0, seconds_project=t2 - t1,
                     seconds_pass1=t3 - t2, seconds_pass2=t4 - t3, seconds_brute=clock() - t4)
    return r1, r2


def _bounding_axes(x, linear_map, mean, k, k_wide, variance_kept, bound_dims, min_dims) -> torch.Tensor | None:
    """(D', m) float64 orthonormal bounding axes, or None for every mapped coordinate (D' ≤ FULL_DIMS)."""
    d_map = mean.shape[0]
    if bound_dims is None and variance_kept is None and d_map <= FULL_DIMS:
        return None  # every coordinate: the bound is tight up to float32 rounding
    evals, evecs = _spectrum(x, linear_map, mean)
    if bound_dims is not None:
        return _orthonormal(evecs[:, : min(d_map, max(1, bound_dims))])
    if variance_kept is not None:
        total = float(evals.sum())
        frac = torch.cumsum(evals, 0) / total if total > 0 else torch.ones_like(evals)
        m = int(torch.searchsorted(frac, torch.tensor(variance_kept, dtype=torch.float64))) + 1
    else:
        m = _choose_dims(x, linear_map, mean, evals, k, k_wide, min_dims)
    return _orthonormal(evecs[:, : min(d_map, max(min_dims, m))])


def _brute_force(x, linear_map, mean, queries, k, block_rows, r1, r2) -> None:
    """Exact 2-NN for the given queries over all dimensions in float64 (in place into r1, r2)."""
    n = x.shape[0]
    bq = max(1, block_rows // 4)
    for s in range(0, queries.numel(), bq):
        q = queries[s : s + bq]
        d2 = _squared_distances(x, q, lambda t: mapped(t, linear_map), mean, 8 * block_rows)
        _, idx = torch.topk(d2, min(k + 1, n - 1), dim=1, largest=False, sorted=True)
        srt = refine(x, linear_map, q, idx)  # refining K+1 exact candidates; Gram error is ~1e-13 relative
        r1[q], r2[q] = srt[:, 0], srt[:, 1]


